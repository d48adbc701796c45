"""Statements run on SQLite: translation (the token rewrite, then sqlglot), CREATE and
DROP TABLE with SQL Server's column semantics, execution, SQLite's errors mapped to SQL
Server's, and the catalog views refreshed from the database's tables.

Each takes the session's :class:`~._engine.Executor` as ``ex``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from typing import TYPE_CHECKING, Any

from . import _plans, _types
from ._catalog import CATALOG
from ._columns import infer_columns, literal
from ._results import (
    Done,
    Out,
    Rows,
    SqlError,
    Waiter,
)
from ._translate import (
    NO_TRANSLATION,
    TEMP_PREFIX,
    extract_output,
    pk_column,
    selects_into,
    strip_words,
    temp_name,
    to_sqlite,
    translation_available,
    values_alias,
)
from ._tsql import Tok, unquote

if TYPE_CHECKING:
    from ._engine import Executor

log = logging.getLogger("mssql_pool.testing.engine")


def sql(ex: Executor, toks: list[Tok], out: list[Out], wait: Waiter | None = None) -> None:
    w0 = toks[0].up
    plan = _plans.plan(ex, toks)  # translation cached by statement text
    sql, returning, kind = plan.sql, plan.returning, plan.kind
    writes = w0 not in ("SELECT", "WITH") or returning is not None or selects_into(toks)
    names, rows, count = ex.locks.run(lambda: ex._execute(sql, writes), sql, writes,
                                        plan.nolock, wait)
    if kind == "ddl" or (writes and w0 == "SELECT"):
        ex.locks.after_ddl(ex.conn, plan.created, plan.temp)
    st = ex.state
    if kind == "select" or returning:
        cols, rows = _types.describe(ex, plan.shape, names, rows, infer_columns)
        out.append(Rows(cols, rows))
        st.rowcount = len(rows)
        out.append(Done(len(rows)))
    elif kind == "dml":
        st.rowcount = count
        out.append(Done(None if st.options.get("NOCOUNT") else count))
    else:
        st.rowcount = 0
        out.append(Done(None))
    if w0 == "INSERT":
        rid = ex.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        st.identity = rid
    st.error = 0


def execute(ex: Executor, sql: str, writes: bool) -> tuple[list[str], list[tuple[Any, ...]], int]:
    ex._refresh_catalog(sql)
    try:
        cur = ex.conn.execute(sql)
        rows = cur.fetchall()
        names = [d[0] for d in cur.description] if cur.description else []
        count = cur.rowcount
    except sqlite3.OperationalError as exc:
        raise ex._map_error(exc, sql) from None
    except sqlite3.IntegrityError as exc:
        raise ex._map_error(exc, sql) from None
    except sqlite3.Error as exc:
        raise SqlError(50000, f"{exc}", 16) from None
    return names, rows, count


def query(ex: Executor, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    names, rows, _ = ex._execute(sql, False)
    return names, rows


def run_raw(ex: Executor, sql: str) -> None:
    try:
        ex.conn.execute(sql)
    except sqlite3.OperationalError as exc:
        raise ex._map_error(exc, sql) from None


def map_error(ex: Executor, exc: sqlite3.Error, sql: str) -> SqlError:
    msg = str(exc)
    if ex._divided_by_zero:
        ex._divided_by_zero = False
        return SqlError(8134)
    error = _unknown_name(msg) or _constraint(ex, msg)
    if error is not None:
        return error
    if "database is locked" in msg or "database table is locked" in msg:
        return SqlError(1222)
    m = re.search(r"table (\S+) already exists", msg)
    if m:
        return SqlError(2714, name=m.group(1).strip('"'))
    m = re.search(r'near "([^"]*)": syntax error', msg)
    if m:
        err = SqlError(102, near=m.group(1))
        if not translation_available():
            err = SqlError(102, f"{err.text} ({NO_TRANSLATION}.)", err.severity)
        return err
    if "incomplete input" in msg:      # the statement ends too early: "SELECT 1 +"
        return SqlError(102, near=sql.split()[-1][:30] if sql.split() else "")
    log.debug("sqlite error %s for %r", msg, sql)
    return SqlError(50000, f"The TDS test server could not run this statement: {msg}", 16)


def _unknown_name(msg: str) -> SqlError | None:
    """208, 207, 195: a table, column or function SQLite does not know."""
    m = re.search(r"no such table: (?:\w+\.)?(\S+)", msg)
    if m:
        name = m.group(1)
        if name.startswith(TEMP_PREFIX):
            name = "#" + name[len(TEMP_PREFIX):]
        return SqlError(208, name=name)
    m = re.search(r"no such column: (\S+)", msg)
    if m:
        return SqlError(207, name=m.group(1).split(".")[-1])
    m = re.search(r"no such function: (\S+)", msg)
    if m:
        text = f"'{m.group(1)}' is not a recognized built-in function name."
        if not translation_available():
            text += f" ({NO_TRANSLATION}.)"
        return SqlError(195, text, 15)
    return None


def _constraint(ex: Executor, msg: str) -> SqlError | None:
    """2627, 2601, 515, 547: a key, NOT NULL or foreign key constraint SQLite enforced."""
    m = re.search(r"UNIQUE constraint failed: (\w+)\.(\w+)", msg)
    if m:
        table, col = m.group(1), m.group(2)
        if pk_column(ex.conn, table, col):
            return SqlError(2627, name=f"PK__{table}", table=f"dbo.{table}", value="(?)")
        return SqlError(2601, name=f"UQ__{table}__{col}", table=f"dbo.{table}", value="(?)")
    m = re.search(r"NOT NULL constraint failed: (\w+)\.(\w+)", msg)
    if m:
        return SqlError(515, name=m.group(2), table=f"{ex.state.database}.dbo.{m.group(1)}")
    if "FOREIGN KEY constraint failed" in msg:
        return SqlError(547, name="FK", database=ex.state.database, table="?")
    return None


def translate_expr(ex: Executor, toks: list[Tok]) -> str:
    text = ex._rewrite(toks)
    sql = to_sqlite("SELECT " + text)
    return sql[7:] if sql is not None else text


def translate(ex: Executor, toks: list[Tok]) -> tuple[str, str | None, str]:
    """(sqlite sql, RETURNING clause or None, kind: select/dml/ddl)."""
    w0 = toks[0].up
    kind = "select" if w0 in ("SELECT", "WITH") else "dml"
    if w0 in ("CREATE", "DROP", "ALTER", "TRUNCATE"):
        kind = "ddl" if w0 != "TRUNCATE" else "dml"
    if selects_into(toks):
        kind = "dml"
    returning = None
    if w0 in ("INSERT", "UPDATE", "DELETE", "MERGE"):
        toks, returning = extract_output(toks)
    if w0 == "CREATE" and len(toks) > 2 and toks[1].up == "TABLE":
        return ex._create_table(toks), None, "ddl"
    if w0 == "CREATE" and any(t.up == "INDEX" for t in toks[1:4]):
        return ex._rewrite(strip_words(toks, {"CLUSTERED", "NONCLUSTERED"})), None, "ddl"
    if w0 == "TRUNCATE":
        return "DELETE FROM " + ex._rewrite(toks[2:]), None, "dml"
    if w0 == "DROP" and len(toks) > 2 and toks[1].up == "TABLE":
        return ex._drop_table(toks), None, "ddl"
    text = ex._rewrite(values_alias(toks))
    sql = to_sqlite(text) or text
    if kind == "dml" and w0 == "SELECT" and selects_into(toks):
        target = next((toks[i + 1] for i, t in enumerate(toks[:-1]) if t.up == "INTO"), None)
        if target is not None and target.kind == "temp":
            sql = re.sub(r"^CREATE TABLE", "CREATE TEMP TABLE", sql)
    if returning:
        sql += " RETURNING " + returning
    return sql, returning, kind


def drop_table(ex: Executor, toks: list[Tok]) -> str:
    w = [t.up for t in toks]
    if_exists = w[2:4] == ["IF", "EXISTS"]
    names = toks[4:] if if_exists else toks[2:]
    parts: list[list[Tok]] = [[]]
    for t in names:
        if t.text == ",":
            parts.append([])
        else:
            parts[-1].append(t)
    stmts = []
    for p in parts:
        name = ex._rewrite(p).strip()
        stmts.append(f"DROP TABLE {'IF EXISTS ' if if_exists else ''}{name}")
    if len(stmts) > 1:
        for s in stmts[:-1]:
            ex._run_raw(s)
    if not if_exists:
        for p in parts:
            name = ex._rewrite(p).strip()
            probe = ex.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE lower(name)=lower(?) UNION ALL "
                "SELECT 1 FROM sqlite_temp_master WHERE lower(name)=lower(?)",
                (name.strip('"'), name.strip('"')),
            ).fetchone()
            if probe is None:
                orig = unquote(p[-1]) if p else name
                raise SqlError(3701, name=orig)
    return stmts[-1]


def create_table(ex: Executor, toks: list[Tok]) -> str:
    temp = toks[2].kind == "temp"
    out: list[Tok] = []
    i = 0
    n = len(toks)
    depth = 0
    while i < n:
        t = toks[i]
        u = t.up
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        if u == "IDENTITY":
            _identity_as_rowid(out)
            if i + 1 < n and toks[i + 1].text == "(":
                while i < n and toks[i].text != ")":
                    i += 1
            i += 1
            continue
        if u in ("CLUSTERED", "NONCLUSTERED"):
            i += 1
            continue
        if u == "MAX" and out and out[-1].text == "(":
            out.pop()
            i += 2
            depth -= 1
            continue
        if u == "WITH" and depth == 0:
            break
        if u == "ON" and depth == 0:
            break  # ON [PRIMARY]
        out.append(t)
        i += 1
    sql = ex._rewrite(out, keep_types=True)
    if temp:
        sql = re.sub(r"^\s*CREATE\s+TABLE", "CREATE TEMP TABLE", sql, flags=re.IGNORECASE)
    sql = re.sub(r"\bgetdate\s*\(\s*\)|\bsysdatetime\s*\(\s*\)|\bgetutcdate\s*\(\s*\)",
                 "CURRENT_TIMESTAMP", sql, flags=re.IGNORECASE)
    sql = re.sub(r"\bnewid\s*\(\s*\)", "(lower(hex(randomblob(16))))", sql,
                 flags=re.IGNORECASE)
    return sql


def _identity_as_rowid(out: list[Tok]) -> None:
    """The column just written (``out``) is an IDENTITY: its type becomes INTEGER, without
    ``(p, s)``, so that SQLite makes it the rowid."""
    k = len(out) - 1
    while k >= 0 and out[k].kind == "word" and out[k].up in ("NOT", "NULL"):
        k -= 1
    # walk back over "(p, s)" of the type
    if k >= 0 and out[k].text == ")":
        while k >= 0 and out[k].text != "(":
            k -= 1
        k -= 1
    if k >= 0 and out[k].kind == "word":
        out[k] = Tok("word", "INTEGER", out[k].start, out[k].end)
        # remove (p, s) after the type name
        if k + 1 < len(out) and out[k + 1].text == "(":
            e = k + 1
            while e < len(out) and out[e].text != ")":
                e += 1
            del out[k + 1 : e + 1]


def rewrite(ex: Executor, toks: list[Tok], keep_types: bool = False) -> str:
    """Token rewrites that make T-SQL text palatable to sqlglot and SQLite."""
    st = ex.state
    parts: list[str] = []
    i = 0
    n = len(toks)
    dbs = {d.lower() for d in ex.engine.databases()}
    while i < n:
        t = toks[i]
        u = t.up
        nxt = toks[i + 1] if i + 1 < n else None
        # qualifiers: [db].[dbo].x, db..x, dbo.x
        if t.kind in ("word", "br") and nxt is not None and nxt.text == ".":
            name = unquote(t).lower()
            after = toks[i + 2] if i + 2 < n else None
            if name == "dbo" and after is not None and after.text != "*":
                i += 2
                continue
            if name in dbs and after is not None and (
                after.text == "." or unquote(after).lower() == "dbo"
            ):
                i += 2
                continue
        if t.kind == "str":
            parts.append(t.text[1:] if t.text[0] in "Nn" else t.text)
        elif t.kind == "sysvar":
            parts.append(literal(ex._sysvar(u.upper())))
        elif t.kind == "var":
            key = t.text.lower()
            if key not in st.variables:
                raise SqlError(137, f'Must declare the scalar variable "{t.text}".', 15)
            parts.append(literal(st.variables[key]))
        elif t.kind == "temp":
            parts.append(temp_name(t.text))
        elif (
            t.kind == "word" and nxt is not None and nxt.text == "("
            and i + 2 < n and toks[i + 2].text == ")" and u in ex._niladic
        ):
            parts.append(literal(ex._niladic[u](ex)))
            i += 3
            continue
        elif t.kind == "word" and u in ("CURRENT_USER", "SYSTEM_USER", "SESSION_USER") and (
            nxt is None or nxt.text != "("
        ):
            parts.append(literal("dbo" if u != "SYSTEM_USER" else st.user))
        elif u == "MAX" and parts and parts[-1] == "(" and nxt is not None and nxt.text == ")":
            parts.pop()
            i += 2
            continue
        elif t.kind == "hex" and keep_types:
            parts.append("X'" + t.text[2:] + "'")
        else:
            parts.append(t.text)
        i += 1
    return " ".join(parts)


def refresh_catalog(ex: Executor, sql: str) -> None:
    low = sql.lower()
    if "sys." not in low and "information_schema." not in low:
        return
    con = ex.conn
    for view in set(re.findall(r"\b(sys|information_schema)\.\"?(\w+)", low)):
        builder = CATALOG.get(view)
        if builder is None:
            continue
        columns, rows = builder(ex)
        qname = f'{view[0]}."{view[1]}"'
        con.execute(f"DROP TABLE IF EXISTS {qname}")
        con.execute(f"CREATE TABLE {qname} ({', '.join(columns)})")
        if rows:
            marks = ",".join("?" * len(columns))
            con.executemany(f"INSERT INTO {qname} VALUES ({marks})", rows)


def tables(ex: Executor) -> list[tuple[int, str, str, bool]]:
    """(object_id, name, sql, temp) for each table."""
    out: list[tuple[int, str, str, bool]] = []
    for rowid, name, sql in ex.conn.execute(
        "SELECT rowid, name, sql FROM main.sqlite_master WHERE type='table' AND name NOT "
        "LIKE 'sqlite_%'"
    ):
        out.append((int(rowid) + 1000, name, sql or "", False))
    return out
