"""T-SQL to SQLite at the token level: temp table names, ``VALUES`` aliases, ``SELECT
INTO``, ``OUTPUT`` clauses, sqlglot's dialect translation (cached, optional), and which
statements open a transaction under ``IMPLICIT_TRANSACTIONS``."""

from __future__ import annotations

import functools
import logging
import sqlite3

from ._tsql import Tok

log = logging.getLogger("mssql_pool.testing.engine")

TEMP_PREFIX = "tmp__"


NO_TRANSLATION = (
    "T-SQL translation is off: sqlglot is not installed (pip install 'mssql_pool[testing]'); "
    "statements run on SQLite as written, so TOP, ISNULL, GETDATE and the like fail"
)
"""The WARNING a server logs when it is created without sqlglot (and the hint in errors)."""


def translation_available() -> bool:
    """True when sqlglot can be imported: T-SQL is then translated to SQLite's dialect.

    Without it the server still runs (logins, faults, the pool's own statements, plain SQL
    that SQLite understands); statements that need translation fail with an error whose
    text says why.
    """
    try:
        import sqlglot  # noqa: F401
    except ImportError:
        return False
    return True


# Statements that open a transaction in implicit transaction mode when none is open
# (SET IMPLICIT_TRANSACTIONS): SELECT only when it reads a table, ALTER only ALTER TABLE.
_IMPLICIT_HEADS = frozenset({
    "CREATE", "DELETE", "DENY", "DROP", "FETCH", "GRANT", "INSERT", "MERGE", "OPEN", "REVOKE",
    "TRUNCATE", "UPDATE",
})


def _reads_table(toks: list[Tok]) -> bool:
    """A FROM (or SELECT ... INTO) anywhere in the statement: it touches a table.

    ``SELECT 1``, ``SELECT @@TRANCOUNT`` and ``SELECT GETDATE()`` do not. Neither do an IF
    condition or a DECLARE's initial value that read a table (Babelfish, seen).
    """
    return any(t.kind == "word" and t.up in ("FROM", "INTO") for t in toks)


def opens_implicit(toks: list[Tok]) -> bool:
    """Whether this statement opens a transaction under SET IMPLICIT_TRANSACTIONS ON."""
    head = toks[0].up if toks else ""
    if head in _IMPLICIT_HEADS:
        # CREATE DATABASE cannot run inside a transaction at all
        return not (head == "CREATE" and len(toks) > 1 and toks[1].up == "DATABASE")
    if head == "ALTER":
        return len(toks) > 1 and toks[1].up == "TABLE"
    if head == "BEGIN":
        return len(toks) > 1 and toks[1].up in ("TRAN", "TRANSACTION", "DISTRIBUTED")
    if head in ("SELECT", "WITH"):
        return _reads_table(toks) or (head == "WITH" and any(
            t.kind == "word" and t.up in ("INSERT", "UPDATE", "DELETE", "MERGE") for t in toks))
    return False


@functools.lru_cache(maxsize=4096)
def to_sqlite(text: str) -> str | None:
    """sqlglot's T-SQL -> SQLite translation of rewritten text (cached); None if it fails.

    Every ``/`` becomes ``tsql_div(a, b)`` (installed per connection): SQLite's division by
    zero gives NULL where SQL Server raises 8134."""
    try:
        import sqlglot
    except ImportError:
        return None     # the server said so at start (NO_TRANSLATION); run the text as is
    try:
        from sqlglot import exp

        out: list[str] = []
        for tree in sqlglot.parse(text, read="tsql"):
            if tree is None:
                out.append("")
                continue
            for node in reversed(list(tree.find_all(exp.Div))):   # innermost first
                node.replace(exp.Anonymous(this="tsql_div",
                                           expressions=[node.left, node.right]))
            out.append(tree.sql(dialect="sqlite"))
        return ";".join(out)
    except Exception as exc:  # noqa: BLE001 - sqlglot raises many types; run the text as is
        log.debug("sqlglot could not translate %r: %s", text, exc)
        return None


def temp_name(text: str) -> str:
    return TEMP_PREFIX + text.lstrip("#")


def values_alias(toks: list[Tok]) -> list[Tok]:
    """``(VALUES ...) AS a(c1, c2)`` -> ``(SELECT column1 AS c1, ... FROM (VALUES ...)) AS a``."""
    out = list(toks)
    i = 0
    while i < len(out):
        if out[i].text == "(" and i + 1 < len(out) and out[i + 1].up == "VALUES":
            depth = 0
            j = i
            while j < len(out):
                if out[j].text == "(":
                    depth += 1
                elif out[j].text == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            # j: closing paren of (VALUES ...)
            k = j + 1
            if k < len(out) and out[k].up == "AS":
                k += 1
            if k + 1 < len(out) and out[k + 1].text == "(":
                e = k + 2
                cols: list[str] = []
                while e < len(out) and out[e].text != ")":
                    if out[e].text != ",":
                        cols.append(out[e].text)
                    e += 1
                sel = ", ".join(f"column{n + 1} AS {c}" for n, c in enumerate(cols))
                mk = [Tok("word", x, 0, 0) for x in ("(", "SELECT", sel, "FROM")]
                new = mk + out[i : j + 1] + [Tok("op", ")", 0, 0), Tok("word", "AS", 0, 0),
                                              out[k]]
                out[i : e + 1] = new
                i += len(new)
                continue
        i += 1
    return out


def selects_into(toks: list[Tok]) -> bool:
    return toks[0].up == "SELECT" and any(t.up == "INTO" for t in toks)


def strip_words(toks: list[Tok], drop: set[str]) -> list[Tok]:
    return [t for t in toks if t.up not in drop]


def pk_column(con: sqlite3.Connection, table: str, col: str) -> bool:
    try:
        for row in con.execute(f'PRAGMA table_info("{table}")'):
            if row[1] == col:
                return bool(row[5])
    except sqlite3.Error:
        pass
    return False


def extract_output(toks: list[Tok]) -> tuple[list[Tok], str | None]:
    """Remove a T-SQL OUTPUT clause; return its column list for a RETURNING clause."""
    depth = 0
    start = None
    for i, t in enumerate(toks):
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif depth == 0 and t.up == "OUTPUT":
            start = i
            break
    if start is None:
        return toks, None
    end = start + 1
    depth = 0
    stop = {"VALUES", "SELECT", "DEFAULT", "FROM", "WHERE", "INTO", "EXEC", "EXECUTE"}
    while end < len(toks):
        t = toks[end]
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif depth == 0 and t.up in stop:
            break
        end += 1
    clause = toks[start + 1 : end]
    cols: list[str] = []
    i = 0
    while i < len(clause):
        t = clause[i]
        if t.up in ("INSERTED", "DELETED") and i + 1 < len(clause) and clause[i + 1].text == ".":
            i += 2
            continue
        cols.append(t.text)
        i += 1
    return toks[:start] + toks[end:], " ".join(cols)
