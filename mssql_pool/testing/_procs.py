"""User stored procedures for the TDS test server (enough for ``cursor.callproc``).

``CREATE [OR ALTER] PROC[EDURE] name @a INT, @b NVARCHAR(20) = N'x' AS <body>`` must be the
whole batch, as in SQL Server; ``ALTER PROCEDURE`` replaces one and ``DROP PROCEDURE [IF
EXISTS] name`` (also a whole batch) removes it. A call (RPC, as pymssql's ``callproc`` and
python-tds' ``callproc`` send, or ``EXEC name ...`` in a batch) binds positional and named
arguments, applies defaults, runs the body with the parameters as variables and answers with
the body's results and a return status (``RETURN n`` sets it). OUTPUT parameters are accepted
but their values are not sent back.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _types
from ._results import Done, Out, ReturnFromProcedure, ReturnStatus, SqlError, Waiter
from ._tsql import SqlSyntaxError, Tok, parse, tokenize, unquote

if TYPE_CHECKING:
    from ._engine import Engine, Executor

_DEFINE = re.compile(r"^\s*(?:CREATE\s+(?:OR\s+ALTER\s+)?|ALTER\s+)PROC(?:EDURE)?\b", re.I)
_DROP = re.compile(r"^\s*DROP\s+PROC(?:EDURE)?\b", re.I)
_NO_DEFAULT = object()


@dataclass(frozen=True)
class Param:
    name: str  # lower case, with the @
    type_text: str
    default: Any
    output: bool


@dataclass(frozen=True)
class Procedure:
    name: str
    params: tuple[Param, ...]
    body: str


_catalog: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], Procedure]] = (
    weakref.WeakKeyDictionary())
_lock = threading.RLock()


def _procs(engine: Engine) -> dict[tuple[str, str], Procedure]:
    with _lock:
        procs = _catalog.get(engine)
        if procs is None:
            procs = _catalog[engine] = {}
        return procs


def handles(sql: str) -> bool:
    """Whether this batch defines or drops a procedure."""
    return bool(_DEFINE.match(sql) or _DROP.match(sql))


def _name(toks: list[Tok], i: int) -> tuple[str, int]:
    parts = [unquote(toks[i])]
    i += 1
    while i + 1 < len(toks) and toks[i].text == ".":
        parts.append(unquote(toks[i + 1]))
        i += 2
    return parts[-1], i


def run_definition(ex: Executor, sql: str) -> list[Out]:
    """CREATE / ALTER / DROP PROCEDURE as a whole batch."""
    try:
        toks = tokenize(sql)
    except SqlSyntaxError as exc:
        return [SqlError(102, near=exc.near[:30])]
    procs = _procs(ex.engine)
    db = ex.state.database.lower()
    i = next(k for k, t in enumerate(toks) if t.up in ("PROC", "PROCEDURE")) + 1
    if toks[0].up == "DROP":
        return _drop(toks, i, procs, db)
    if i >= len(toks):
        return [SqlError(102, near="PROCEDURE")]
    name, i = _name(toks, i)
    as_at = next((k for k in range(i, len(toks)) if toks[k].up == "AS"), None)
    if as_at is None:
        return [SqlError(102, near=toks[-1].text)]
    head = toks[i:as_at]
    if head and head[0].text == "(" and head[-1].text == ")":
        head = head[1:-1]
    params = _params(ex, head)
    if isinstance(params, SqlError):
        return [params]
    text = sql[toks[as_at].end :]
    try:
        parse(text)
    except SqlSyntaxError as exc:
        return [SqlError(102, near=exc.near[:30])]
    key = (db, name.lower())
    with _lock:
        if toks[0].up == "CREATE" and toks[1].up != "OR" and key in procs:
            return [SqlError(2714, name=name)]
        if toks[0].up == "ALTER" and key not in procs:
            return [SqlError(208, name=name)]
        procs[key] = Procedure(name, tuple(params), text)
    return [Done(None)]


def _drop(toks: list[Tok], i: int, procs: dict[tuple[str, str], Procedure],
          db: str) -> list[Out]:
    """DROP PROCEDURE [IF EXISTS] name; ``i`` is just after PROCEDURE."""
    if_exists = i + 1 < len(toks) and toks[i].up == "IF" and toks[i + 1].up == "EXISTS"
    if if_exists:
        i += 2
    if i >= len(toks):
        return [SqlError(102, near="PROCEDURE")]
    name, _ = _name(toks, i)
    with _lock:
        gone = procs.pop((db, name.lower()), None)
    if gone is None and not if_exists:
        return [SqlError(3701, f"Cannot drop the procedure '{name}', because it does not "
                         "exist or you do not have permission.", 11)]
    return [Done(None)]


def _params(ex: Executor, head: list[Tok]) -> list[Param] | SqlError:
    """The parameter list of CREATE PROCEDURE, or the syntax error in it."""
    params: list[Param] = []
    for part in _types.split_top(head):
        if not part:
            continue
        if part[0].kind != "var":
            return SqlError(102, near=part[0].text)
        words = [t.up for t in part]
        output = "OUTPUT" in words or "OUT" in words
        body = [t for t in part[1:] if t.up not in ("OUTPUT", "OUT", "READONLY", "AS")]
        default: Any = _NO_DEFAULT
        eq = next((k for k, t in enumerate(body) if t.text == "="), None)
        if eq is not None:
            default = ex._scalar(body[eq + 1 :])
            body = body[:eq]
        params.append(Param(part[0].text.lower(), " ".join(t.text for t in body), default,
                            output))
    return params


def call(ex: Executor, name: str, args: list[tuple[str | None, Any]], out: list[Out],
         wait: Waiter) -> bool:
    """Run a user procedure; False when there is none of that name."""
    short = name.split(".")[-1].strip("[]").lower()
    with _lock:
        proc = _procs(ex.engine).get((ex.state.database.lower(), short))
    if proc is None:
        return False
    values: dict[str, Any] = {}
    positional = [v for k, v in args if not k]
    named = {k.lower() if k.startswith("@") else "@" + k.lower(): v for k, v in args if k}
    for n, p in enumerate(proc.params):
        if p.name in named:
            values[p.name] = named.pop(p.name)
        elif n < len(positional):
            values[p.name] = positional[n]
        elif p.default is not _NO_DEFAULT:
            values[p.name] = p.default
        else:
            raise SqlError(201, f"Procedure or function '{proc.name}' expects parameter "
                           f"'{p.name}', which was not supplied.", 16)
    if named or len(positional) > len(proc.params):
        extra = next(iter(named), "")
        raise SqlError(8144 if not extra else 8145,
                       f"Procedure or function {proc.name} has too many arguments specified."
                       if not extra else f"{extra} is not a parameter for procedure "
                       f"{proc.name}.", 16)
    saved_vars, saved_types = ex.state.variables, dict(ex.var_types)
    ex.state.variables = {**saved_vars, **values}
    for p in proc.params:
        t = _types.parse_type(p.type_text)
        if t is not None:
            ex.var_types[p.name] = t
    status = 0
    try:
        ex._run_list(parse(proc.body), out, wait)
    except ReturnFromProcedure as ret:
        status = int(ret.args[0] or 0) if ret.args else 0
    finally:
        ex.state.variables = saved_vars
        ex.var_types = saved_types
    out.append(ReturnStatus(status))
    return True


def names(engine: Engine, database: str) -> list[str]:
    """The procedures defined in ``database``."""
    with _lock:
        return sorted(p.name for (db, _), p in _procs(engine).items() if db == database.lower())
