"""A small T-SQL front end: tokens, statement splitting, control flow, rewrites for SQLite."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<str>[Nn]?'(?:[^']|'')*')
  | (?P<br>\[(?:[^\]]|\]\])*\])
  | (?P<dq>"(?:[^"]|"")*")
  | (?P<hex>0[xX][0-9a-fA-F]*)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<sysvar>@@\w+)
  | (?P<var>@\w+)
  | (?P<temp>\#\#?\w+)
  | (?P<word>[^\W\d]\w*|[$_]\w*)
  | (?P<op><=|>=|<>|!=|!<|!>|\+=|-=|\*=|/=|::|.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class Tok:
    kind: str
    text: str
    start: int
    end: int

    @functools.cached_property
    def up(self) -> str:  # computed once: the executor asks for it many times per token
        return self.text.upper() if self.kind == "word" else self.text


class SqlSyntaxError(Exception):
    def __init__(self, near: str) -> None:
        super().__init__(near)
        self.near = near


def tokenize(sql: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    n = len(sql)
    while pos < n:
        m = _TOKEN.match(sql, pos)
        if m is None or m.end() == pos:
            raise SqlSyntaxError(sql[pos : pos + 10])
        kind = m.lastgroup or "op"
        if kind != "ws":
            if kind == "op" and m.group() in ("'", '"', "["):
                raise SqlSyntaxError(sql[pos : pos + 10])
            out.append(Tok(kind, m.group(), pos, m.end()))
        pos = m.end()
    return out


START = {
    "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "SET", "DECLARE", "IF",
    "ELSE", "BEGIN", "END", "COMMIT", "ROLLBACK", "SAVE", "PRINT", "RAISERROR", "THROW",
    "WAITFOR", "USE", "EXEC", "EXECUTE", "TRUNCATE", "MERGE", "RETURN", "KILL", "WHILE",
}
_NO_IF_BEFORE = {"TABLE", "VIEW", "INDEX", "PROCEDURE", "PROC", "SCHEMA", "FUNCTION", "TRIGGER",
                 "DATABASE", "SEQUENCE", "TYPE", "USER", "LOGIN"}


@dataclass
class Simple:
    toks: list[Tok]
    text: str


@dataclass
class IfStmt:
    cond: Simple
    then: list[object]
    orelse: list[object] = field(default_factory=list)


@dataclass
class Block:
    body: list[object]


@dataclass
class TryCatch:
    body: list[object]
    catch: list[object]


class Parser:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.toks = tokenize(sql)
        self.i = 0

    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def parse(self) -> list[object]:
        out = self._statements(until=None)
        if self.i < len(self.toks):
            raise SqlSyntaxError(self.toks[self.i].text)
        return out

    def _statements(self, until: str | None) -> list[object]:
        out: list[object] = []
        while True:
            t = self.peek()
            if t is None:
                if until is not None:
                    raise SqlSyntaxError("end of batch")
                return out
            if t.text == ";":
                self.i += 1
                continue
            if until is not None and t.up == "END":
                return out
            out.append(self._statement())

    def _is_block_begin(self) -> bool:
        t, n = self.peek(), self.peek(1)
        return (
            t is not None and t.up == "BEGIN"
            and (n is None or n.up not in ("TRAN", "TRANSACTION", "DISTRIBUTED", "DIALOG",
                                           "CONVERSATION"))
        )

    def _statement(self) -> object:
        t = self.peek()
        assert t is not None
        if t.up == "IF":
            self.i += 1
            cond = self._simple(condition=True)
            then = self._body()
            orelse: list[object] = []
            while self.peek() is not None and self.peek().text == ";":  # type: ignore[union-attr]
                self.i += 1
            e = self.peek()
            if e is not None and e.up == "ELSE":
                self.i += 1
                orelse = self._body()
            return IfStmt(cond, then, orelse)
        if self._is_block_begin():
            n = self.peek(1)
            if n is not None and n.up == "TRY":
                self.i += 2
                body = self._statements(until="END")
                self._expect_end("TRY")
                b, c = self.peek(), self.peek(1)
                if b is None or c is None or b.up != "BEGIN" or c.up != "CATCH":
                    raise SqlSyntaxError(b.text if b else "end of batch")
                self.i += 2
                catch = self._statements(until="END")
                self._expect_end("CATCH")
                return TryCatch(body, catch)
            self.i += 1
            body = self._statements(until="END")
            self._expect_end(None)
            return Block(body)
        if t.up in ("END", "ELSE"):
            raise SqlSyntaxError(t.text)
        return self._simple()

    def _expect_end(self, word: str | None) -> None:
        self.i += 1  # END
        if word is not None:
            t = self.peek()
            if t is None or t.up != word:
                raise SqlSyntaxError(t.text if t else "end of batch")
            self.i += 1

    def _body(self) -> list[object]:
        if self.peek() is None:
            raise SqlSyntaxError("end of batch")
        return [self._statement()]

    def _simple(self, condition: bool = False) -> Simple:
        toks: list[Tok] = []
        depth = 0
        case = 0
        while True:
            t = self.peek()
            if t is None:
                break
            if depth == 0 and t.text == ";":
                break
            if depth == 0 and toks and t.kind == "word" and self._splits(toks, t, case, condition):
                break
            if t.text == "(":
                depth += 1
            elif t.text == ")":
                depth -= 1
            elif t.up == "CASE":
                case += 1
            elif t.up == "END" and case and depth == 0:
                case -= 1
            toks.append(t)
            self.i += 1
        if not toks:
            t = self.peek()
            raise SqlSyntaxError(t.text if t else "end of batch")
        return Simple(toks, self.sql[toks[0].start : toks[-1].end])

    def _splits(self, toks: list[Tok], t: Tok, case: int, condition: bool) -> bool:
        kw = t.up
        if kw not in START:
            return False
        if condition:
            return True
        first = toks[0].up
        prev = toks[-1].up
        seen = {x.up for x in toks if x.kind == "word"}
        if kw in ("END", "ELSE") and case:
            return False
        if kw == "SELECT" and _select_continues(first, prev, seen):
            return False
        if kw == "SET" and first in ("UPDATE", "MERGE") and "SET" not in seen:
            return False
        if kw == "SET" and prev in ("NULL", "DEFAULT") and first in ("CREATE", "ALTER"):
            return False
        if kw in ("INSERT", "UPDATE", "DELETE") and _dml_continues(first, prev, seen):
            return False
        if kw == "IF" and prev in _NO_IF_BEFORE:
            return False
        if kw in ("EXEC", "EXECUTE") and first == "INSERT":
            return False
        return True


def _select_continues(first: str, prev: str, seen: set[str]) -> bool:
    """Is a SELECT keyword part of the statement so far (a union, a subquery, an
    INSERT ... SELECT, a CTE's body, a view or cursor definition)?"""
    if prev in ("UNION", "ALL", "EXCEPT", "INTERSECT", "AS", "("):
        return True
    if first == "INSERT" and not seen & {"VALUES", "SELECT", "EXEC", "EXECUTE"}:
        return True
    if first == "WITH" and not seen & {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"}:
        return True
    if first in ("CREATE", "ALTER") and prev == "AS":
        return True
    return (first == "DECLARE" and prev == "CURSOR") or prev == "FOR"


def _dml_continues(first: str, prev: str, seen: set[str]) -> bool:
    """Is an INSERT/UPDATE/DELETE keyword part of the statement so far (a MERGE action,
    a trigger's event list, a CTE's body, a GRANT's permission list)?"""
    if prev == "ON" or first == "MERGE" or prev in ("INSTEAD", "FOR", "AFTER", ","):
        return True
    if first == "WITH" and not seen & {"SELECT", "INSERT", "UPDATE", "DELETE"}:
        return True
    return first in ("GRANT", "DENY")


def parse(sql: str) -> list[object]:
    return Parser(sql).parse()


def words(toks: list[Tok]) -> list[str]:
    return [t.up for t in toks]


def unquote(t: Tok) -> str:
    s = t.text
    if t.kind == "br":
        return s[1:-1].replace("]]", "]")
    if t.kind == "dq":
        return s[1:-1].replace('""', '"')
    if t.kind == "str":
        if s[0] in "Nn":
            s = s[1:]
        return s[1:-1].replace("''", "'")
    return s
