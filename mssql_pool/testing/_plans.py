"""Statement plans cached by text: the SQLite translation and the result-type shape.

Translating T-SQL with sqlglot costs milliseconds; pools send the same few statements over
and over. A statement whose translation does not depend on session state (no ``@var``, no
``@@value``, no niladic function such as ``DB_NAME()``) is translated once per server process
and database list, then looked up by its text.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _types
from ._tsql import Tok, parse, unquote

if TYPE_CHECKING:
    from ._engine import Executor

MAX_PLANS = 4096
_STATEFUL_WORDS = {"CURRENT_USER", "SYSTEM_USER", "SESSION_USER"}


@dataclass(frozen=True)
class Plan:
    sql: str
    returning: str | None
    kind: str  # select / dml / ddl
    shape: _types.Shape | None
    nolock: bool
    created: str | None  # the table a CREATE TABLE makes
    temp: bool


_plans: dict[tuple[str, tuple[str, ...]], Plan] = {}
_lock = threading.Lock()
stats = {"hits": 0, "misses": 0, "uncacheable": 0}


def _stateful(ex: Executor, toks: list[Tok]) -> bool:
    niladic = ex._niladic
    for t in toks:
        if t.kind in ("var", "sysvar"):
            return True
        if t.kind == "word" and (t.up in niladic or t.up in _STATEFUL_WORDS):
            return True
    return False


@dataclass(frozen=True)
class _Skeleton:
    """What does not depend on session state: kept even when the translation is not."""

    toks: list[Tok]  # CAST/CONVERT rewritten
    shape: _types.Shape | None
    nolock: bool
    created: str | None
    temp: bool
    stateful: bool


_skeletons: dict[str, _Skeleton] = {}


def _skeleton(ex: Executor, key: str, toks: list[Tok]) -> _Skeleton:
    sk = _skeletons.get(key)
    if sk is not None:
        return sk
    created = None
    temp = False
    if len(toks) > 2 and toks[0].up == "CREATE" and toks[1].up == "TABLE":
        j = 2
        while j + 2 < len(toks) and toks[j + 1].text == ".":
            j += 2
        name = toks[j]
        temp = name.kind == "temp"
        created = "tmp__" + name.text.lstrip("#") if temp else unquote(name)
    sk = _Skeleton(_types.rewrite_casts(toks), _types.shape_of(toks),
                   any(t.up == "NOLOCK" for t in toks), created, temp,
                   toks[0].up == "DROP" or _stateful(ex, toks))  # DROP checks as it goes
    with _lock:
        if len(_skeletons) >= MAX_PLANS:
            _skeletons.clear()
        _skeletons[key] = sk
    return sk


def plan(ex: Executor, toks: list[Tok]) -> Plan:
    """The plan of one statement (from the cache when its text was seen before)."""
    text = " ".join([t.text for t in toks])
    key = (text, tuple(ex.engine.databases()))  # db..t qualifiers depend on the names
    p = _plans.get(key)
    if p is not None:
        stats["hits"] += 1
        return p
    sk = _skeleton(ex, text, toks)
    sql, returning, kind = ex._translate(sk.toks)
    p = Plan(sql, returning, kind, sk.shape, sk.nolock, sk.created, sk.temp)
    if sk.stateful:
        stats["uncacheable"] += 1
        return p
    stats["misses"] += 1
    with _lock:
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        _plans[key] = p
    return p


def clear() -> None:
    with _lock:
        _plans.clear()
        _skeletons.clear()
        _parsed.clear()


_parsed: dict[str, list[object]] = {}


def parse_cached(sql: str) -> list[object]:
    """``_tsql.parse`` with the statement trees of short batches kept by text.

    The trees are read-only for the executor, so sessions share them. Syntax errors are not
    cached (they raise, as ``parse`` does).
    """
    stmts = _parsed.get(sql)
    if stmts is None:
        stmts = parse(sql)
        if len(sql) <= 4000:
            with _lock:
                if len(_parsed) >= MAX_PLANS:
                    _parsed.clear()
                _parsed[sql] = stmts
    return stmts
