"""The statement scanner (mssql_pool._scan): generated variants of every state-changing
statement are never taken for plain work, and plain work is not taken for a state change."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssql_pool._scan import (
    DISCARD,
    HELD,
    SESSION,
    TXN,
    WORK,
    _tokens_slow,
    describe,
    pure_read,
    scan,
    statement_flags,
    tokens,
)
from mssql_pool._scan import OP as OP_KIND
from mssql_pool._scan import WORD as WORD_KIND

# A statement is a list of pieces: ("kw", word) keywords (any case), ("id", name)
# identifiers (bare, [bracketed] or "quoted"), ("lit", text) literals and punctuation
# rendered as they are.
Piece = tuple[str, str]


def kw(text: str) -> list[Piece]:
    return [("kw", w) for w in text.split()]


def ident(name: str) -> list[Piece]:
    return [("id", name)]


def proc(name: str) -> list[Piece]:
    """A procedure name: also schema-qualified (``dbo.p``, ``[sys].[p]``)."""
    return [("proc", name)]


def lit(*texts: str) -> list[Piece]:
    return [("lit", t) for t in texts]


SET_OPTIONS = [
    "NOCOUNT ON", "XACT_ABORT ON", "ANSI_NULLS OFF", "ANSI_WARNINGS OFF", "ARITHABORT OFF",
    "QUOTED_IDENTIFIER OFF", "CONCAT_NULL_YIELDS_NULL OFF", "IMPLICIT_TRANSACTIONS ON",
    "DEADLOCK_PRIORITY LOW", "LOCK_TIMEOUT 100", "DATEFIRST 1", "DATEFORMAT dmy",
    "LANGUAGE us_english", "ROWCOUNT 10", "TEXTSIZE 100", "NUMERIC_ROUNDABORT ON",
    "TRANSACTION ISOLATION LEVEL SERIALIZABLE", "TRANSACTION ISOLATION LEVEL SNAPSHOT",
    "STATISTICS IO ON", "SHOWPLAN_XML ON", "FMTONLY ON", "NOEXEC ON", "CURSOR_CLOSE_ON_COMMIT OFF",
]

# (pieces, the bit the scan must report, whether it may be wrapped in dynamic SQL)
STATE_CHANGES: list[tuple[list[Piece], int, bool]] = [
    *[(kw("SET " + opt), SESSION, True) for opt in SET_OPTIONS],
    (kw("SET CONTEXT_INFO") + lit("0x01"), SESSION, True),
    (kw("USE") + ident("otherdb"), SESSION, True),
    (kw("CREATE TABLE") + lit("#t", "(", "a") + kw("INT") + lit(")"), SESSION, True),
    (kw("SELECT") + lit("1") + kw("AS") + ident("a") + kw("INTO") + lit("##g"), SESSION, True),
    (kw("DECLARE") + ident("c") + kw("CURSOR GLOBAL FOR SELECT") + lit("1"), SESSION, True),
    (kw("EXEC") + proc("sp_set_session_context") + lit("N'k'", ",", "1"), SESSION, True),
    (kw("DBCC TRACEON") + lit("(", "1204", ")"), SESSION, True),
    (kw("EXECUTE AS USER =") + lit("'bob'"), DISCARD, True),
    (kw("EXECUTE AS LOGIN =") + lit("N'bob'"), DISCARD, True),
    (kw("EXEC AS USER =") + lit("'bob'"), DISCARD, True),
    (kw("SETUSER") + lit("'bob'"), DISCARD, True),
    (kw("EXEC") + proc("sp_set_session_context") + lit("'k'", ",", "1", ",", "1"),
     DISCARD, True),
    (kw("EXEC") + proc("sp_set_session_context") + lit("@key", "=", "'k'", ",", "@value", "=",
                                                      "1", ",", "@read_only", "=", "1"),
     DISCARD, True),
    (kw("EXEC") + proc("sp_setapprole") + lit("'r'", ",", "'p'"), DISCARD, True),
    (kw("EXEC") + proc("sp_getapplock") + lit("'r'", ",", "'Exclusive'", ",", "'Session'"),
     DISCARD, True),
    (kw("BEGIN TRAN"), TXN, True),
    (kw("BEGIN TRANSACTION") + ident("t1"), TXN, True),
    (kw("COMMIT"), TXN, True),
    (kw("COMMIT TRANSACTION"), TXN, True),
    (kw("ROLLBACK"), TXN, True),
    (kw("ROLLBACK TRAN"), TXN, True),
    (kw("SAVE TRAN") + ident("sp1"), TXN, True),
    (kw("ROLLBACK") + lit(";") + kw("INSERT INTO") + ident("t") + kw("VALUES") + lit("(", "1", ")"),
     TXN, True),
    (kw("EXEC") + proc("p_transfer") + lit("1", ",", "2"), TXN, True),
    (kw("EXEC") + lit("(", "@sql", ")"), SESSION | TXN, False),
    (kw("EXEC") + proc("sp_executesql") + lit("@stmt"), SESSION | TXN, False),
]

# A bare procedure call: only as the first statement of a batch.
FIRST_ONLY: list[tuple[list[Piece], int]] = [
    (proc("p_transfer") + lit("1", ",", "2"), TXN),
    (proc("sp_set_session_context") + lit("'k'", ",", "1", ",", "1"), DISCARD),
    (proc("sp_setapprole") + lit("'r'", ",", "'p'"), DISCARD),
]

PLAIN: list[list[Piece]] = [
    kw("SELECT") + lit("1"),
    kw("SELECT") + ident("a") + kw("FROM") + ident("t") + kw("WHERE") + ident("b") + lit("=",
                                                                                        "'USE x'"),
    kw("UPDATE") + ident("t") + kw("SET") + ident("a") + lit("=", "1") + kw("WHERE") + ident("b")
    + lit("=", "2"),
    kw("UPDATE") + ident("t") + kw("SET") + ident("a") + lit("+=", "1", ",") + ident("b")
    + lit("=", "'SET NOCOUNT ON'"),
    kw("INSERT INTO") + ident("t") + kw("VALUES") + lit("(", "1", ",", "N'#x'", ")"),
    kw("DELETE FROM") + ident("t") + kw("WHERE") + ident("a") + lit("<", "3"),
    kw("DECLARE") + lit("@x") + kw("INT") + lit(";") + kw("SET") + lit("@x", "=", "1"),
    kw("SELECT") + lit("@x", "=", "COUNT(*)") + kw("FROM") + ident("t"),
]

_SEPARATORS = [" ", "  ", "\n", "\t", " /* c */ ", "/*c*/", " -- note\n", "\r\n",
               " /* a /* nested */ b */ "]


def _word_like(piece: Piece, text: str) -> bool:
    return piece[0] == "kw" or (text[:1].isalnum() or text[:1] in "_@#")


@st.composite
def render(draw: Any, pieces: list[Piece]) -> str:
    out: list[str] = []
    prev: tuple[Piece, str] | None = None
    for piece in pieces:
        kind, text = piece
        if kind == "kw":
            text = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in text)
        elif kind == "id":
            text = draw(st.sampled_from([text, f"[{text}]", f'"{text}"']))
        elif kind == "proc":
            schema = "sys" if text.startswith("sp_") else "dbo"
            text = draw(st.sampled_from([text, f"[{text}]", f'"{text}"', f"{schema}.{text}",
                                         f"[{schema}].[{text}]", f'"{schema}"."{text}"']))
        if prev is not None:
            needs_space = _word_like(*prev) and _word_like(piece, text)
            seps = _SEPARATORS if needs_space else ["", *_SEPARATORS]
            out.append(draw(st.sampled_from(seps)))
        out.append(text)
        prev = (piece, text)
    return "".join(out)


def _quote(sql: str, nchar: bool) -> str:
    return ("N'" if nchar else "'") + sql.replace("'", "''") + "'"


@st.composite
def batch(draw: Any, sql: str, wrappable: bool, first_only: bool = False) -> str:
    if wrappable and not first_only:
        for _ in range(draw(st.integers(0, 2))):
            quoted = _quote(sql, draw(st.booleans()))
            form = draw(st.sampled_from(["EXEC({})", "EXECUTE ({})", "exec ( {} )",
                                         "EXEC sp_executesql {}"]))
            sql = form.format(quoted)
    before = [] if first_only else draw(st.lists(st.sampled_from(
        ["SELECT 1", "UPDATE t SET a = 1", "INSERT INTO t VALUES (2)", "DECLARE @n INT"]),
        max_size=2))
    after = draw(st.lists(st.sampled_from(["SELECT 2", "DELETE FROM t", "SELECT @@TRANCOUNT"]),
                          max_size=2))
    joiner = draw(st.sampled_from([";", "; ", "\n", ";\n", " "]))
    return joiner.join([*before, sql, *after])


def _expect(flags: int, needed: int, sql: str) -> None:
    assert flags & WORK, sql
    if needed & DISCARD:
        assert flags & DISCARD, f"{sql!r} scanned as {describe(flags)}"
    if needed & SESSION:
        assert flags & (SESSION | DISCARD), f"{sql!r} scanned as {describe(flags)}"
    if needed & TXN:
        assert flags & TXN, f"{sql!r} scanned as {describe(flags)}"


@st.composite
def state_changing(draw: Any) -> tuple[str, int]:
    pieces, needed, wrappable = draw(st.sampled_from(STATE_CHANGES))
    sql = draw(render(pieces))
    return draw(batch(sql, wrappable)), needed


@st.composite
def first_only(draw: Any) -> tuple[str, int]:
    pieces, needed = draw(st.sampled_from(FIRST_ONLY))
    sql = draw(render(pieces))
    return draw(batch(sql, False, first_only=True)), needed


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(state_changing())
def test_state_changes_are_never_plain_work(case: tuple[str, int]) -> None:
    sql, needed = case
    _expect(scan(sql), needed, sql)


@settings(max_examples=80, derandomize=True, deadline=None)
@given(first_only())
def test_procedure_call_without_exec_is_never_plain_work(case: tuple[str, int]) -> None:
    sql, needed = case
    _expect(scan(sql), needed, sql)


@st.composite
def plain(draw: Any) -> str:
    parts = [draw(render(p)) for p in draw(st.lists(st.sampled_from(PLAIN), min_size=1,
                                                     max_size=3))]
    return draw(st.sampled_from([";", ";\n", "\n"])).join(parts)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(plain())
def test_plain_work_is_only_work(sql: str) -> None:
    # The other direction: the scan is not "everything is a session change".
    assert scan(sql) == WORK, f"{sql!r} scanned as {describe(scan(sql))}"


@pytest.mark.parametrize("sql, expected", [
    ("USE[db]", WORK | SESSION),
    ('USE"db"', WORK | SESSION),
    ("EXECUTE AS USER = 'x'", WORK | DISCARD),
    ("EXECUTE AS LOGIN = 'x'", WORK | DISCARD),
    ("SETUSER 'x'", WORK | DISCARD),
    ("EXEC sp_set_session_context 'k', 1, 1", WORK | TXN | DISCARD),
    ("EXEC sp_set_session_context 'k', 1, 0", WORK | TXN | SESSION),
    ("EXEC sp_set_session_context 'k', 1, @ro", WORK | TXN | DISCARD),
    ("ROLLBACK; INSERT INTO t VALUES (1)", WORK | TXN),
    ("p_transfer 1, 2", WORK | TXN),
    ("EXEC('SELECT 1')", WORK | TXN),
    ("SELECT '#x; SET NOCOUNT ON; USE db; EXECUTE AS USER = ''x'''", WORK),
    ("SELECT 1 -- USE db\n", WORK),
    ("/* EXECUTE AS USER = 'x' */ SELECT 1", WORK),
    ("SELECT [use] FROM t", WORK),
    ("SELECT * FROM t OPTION (USE HINT ('x'))", WORK),
    ("CREATE PROCEDURE p WITH EXECUTE AS OWNER AS SELECT 1", WORK),
    ("BEGIN TRY SELECT 1 END TRY BEGIN CATCH SELECT 2 END CATCH", WORK),
])
def test_examples(sql: str, expected: int) -> None:
    assert describe(scan(sql)) == describe(expected)


def test_tokens_unquote_and_drop_comments() -> None:
    assert tokens("SELECT [a]]b], \"c\"\"d\", N'e''f' -- x\n/* y /* z */ */ @v #t") == [
        (0, "select"), (1, "a]b"), (6, ","), (1, 'c"d'), (6, ","), (2, "e'f"), (3, "@v"),
        (4, "#t"),
    ]


def test_unterminated_text_does_not_hide_a_change() -> None:
    # An unterminated comment or string ends the batch: what came before still counts.
    assert scan("SET NOCOUNT ON /* never closed") & SESSION
    assert scan("USE db; SELECT 'never closed") & SESSION


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.one_of(state_changing().map(lambda c: c[0]), plain(),
                 st.text(alphabet="ab_ @#'\"[]N-/*;=.,()\n0", max_size=40)))
def test_both_tokenizers_agree(sql: str) -> None:
    # tokens() takes a findall shortcut when there is no block comment; the loop that
    # handles nested block comments must cut every other text the same way.
    low = sql.lower()
    if "/*" not in low:
        assert tokens(sql) == _tokens_slow(low)


# --------------------------------------------------------------------------- pure reads

PURE_READS = [
    "SELECT 1",
    "SELECT id, v FROM t WHERE id = 4",
    "select id from t where id = 4;",
    "SELECT a.x, b.y FROM dbo.a AS a JOIN db.dbo.b AS b ON a.id = b.id",
    "SELECT * FROM t WITH (NOLOCK) WHERE x IN (SELECT y FROM u)",
    "SELECT * FROM t WITH (READPAST, ROWLOCK)",
    "WITH c AS (SELECT 1 AS a) SELECT a FROM c",
    "SELECT a FROM t UNION ALL SELECT b FROM u EXCEPT SELECT c FROM w",
    "SELECT CASE WHEN x > 1 THEN 'a' ELSE 'b' END FROM t",
    "SELECT TOP 10 * FROM t ORDER BY id OFFSET 0 ROWS",
    "/* comment; UPDATE t */ SELECT 1 -- DELETE FROM t\n",
    "SELECT 'UPDATE t SET x = 1; EXEC p' AS text",
    "SELECT rt_item.id, rt_item.v FROM rt_item WHERE rt_item.id = 4",
    "SELECT @@VERSION",
    "SELECT * FROM t FOR XML PATH",
]


@pytest.mark.parametrize("sql", PURE_READS)
def test_pure_reads(sql: str) -> None:
    assert pure_read(sql), sql
    assert statement_flags(sql) == WORK


#: What may keep something in an open transaction after a read: each is put into a pure
#: read by the generated test below, which must then never be taken for one.
HOLDERS = [
    ("hint", "WITH (UPDLOCK)"), ("hint", "WITH (HOLDLOCK)"), ("hint", "WITH (XLOCK)"),
    ("hint", "WITH (TABLOCK)"), ("hint", "WITH (TABLOCKX)"), ("hint", "WITH (PAGLOCK)"),
    ("hint", "WITH (SERIALIZABLE)"), ("hint", "WITH (REPEATABLEREAD)"),
    ("hint", "(NOLOCK, UPDLOCK)"),
    ("tail", "FOR UPDATE"), ("tail", "FOR UPDATE OF v"),
    ("tail", "; SELECT 2"), ("tail", " SELECT 2"), ("tail", "; UPDATE t SET v = 1"),
    ("tail", " OPTION (TABLE HINT(t, UPDLOCK))"),
    ("tail", " EXEC p"), ("tail", "; COMMIT"), ("tail", " BEGIN TRAN"),
    ("list", "NEXT VALUE FOR s"), ("list", "dbo.sp_x()"), ("list", "(SELECT 1 FROM #t)"),
    ("into", "INTO t2"), ("into", "INTO #t2"),
    ("from", "srv.db.dbo.t"), ("from", "[srv].[db].[dbo].[t]"), ("from", "srv...t"),
    ("from", "OPENQUERY(srv, 'SELECT 1')"), ("from", "OPENROWSET('a', 'b', 'c')"),
    ("from", "OPENDATASOURCE('a', 'b').db.dbo.t"),
]


@st.composite
def held_read(draw: Any) -> str:
    where, text = draw(st.sampled_from(HOLDERS))
    columns = draw(st.sampled_from(["*", "id, v", "t.id", "COUNT(*)"]))
    select = draw(st.sampled_from(["SELECT", "select", "SeLeCt"]))
    table = "t" if where != "from" else text
    sep = draw(st.sampled_from([" ", "\n", " /* c */ ", "  "]))
    parts = [select, columns]
    if where == "list":
        parts.append(", " + text)
    if where == "into":
        parts.append(text)
    parts += ["FROM", table]
    if where == "hint":
        parts.append(text)
    parts.append(draw(st.sampled_from(["", "WHERE id = 1", "WHERE id IN (SELECT 1)"])))
    if where == "tail":
        parts.append(text)
    sql = sep.join(p for p in parts if p)
    if draw(st.booleans()):
        sql = "WITH c AS (SELECT 1 AS a) " + sql
    return sql


@settings(max_examples=300, derandomize=True, deadline=None)
@given(held_read())
def test_a_read_that_may_hold_something_is_never_pure(sql: str) -> None:
    assert not pure_read(sql), sql
    assert statement_flags(sql) & HELD, sql


@settings(max_examples=200, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(state_changing().map(lambda c: c[0]), first_only().map(lambda c: c[0])))
def test_a_state_change_is_never_a_pure_read(sql: str) -> None:
    assert not pure_read(sql), sql


@settings(max_examples=100, derandomize=True, deadline=None)
@given(plain())
def test_only_single_selects_of_plain_work_are_pure(sql: str) -> None:
    toks = tokens(sql)
    while toks and toks[-1][1] == ";":
        toks.pop()
    words = {value for kind, value in toks if kind == WORD_KIND}
    if pure_read(sql):
        assert toks[0][1] in ("select", "with"), sql
        assert (OP_KIND, ";") not in toks, sql
        assert not words & {"insert", "update", "delete", "merge", "declare", "set"}, sql
