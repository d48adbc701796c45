"""The statements the engine runs itself, not SQLite: SET, DECLARE, RAISERROR, THROW,
WAITFOR, USE, EXECUTE (and EXECUTE AS), procedure calls and the ``@@`` values.

Each takes the session's :class:`~._engine.Executor` as ``ex``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import TYPE_CHECKING, Any

from . import _plans, _procs, _types
from . import _protocol as P
from ._columns import infer_columns, literal
from ._faults import error_text
from ._options import (
    ISOLATION_NAMES,
    OPTION_BITS,
    VERSION,
    VERSION_STRING,
)
from ._results import (
    Env,
    Info,
    Out,
    ReturnStatus,
    Rows,
    SqlError,
    Waiter,
)
from ._tsql import SqlSyntaxError, Tok, tokenize, unquote

if TYPE_CHECKING:
    from ._engine import Executor

log = logging.getLogger("mssql_pool.testing.engine")


def execute_as(ex: Executor, toks: list[Tok]) -> None:
    """EXECUTE AS LOGIN|USER = 'name' (any name is accepted: no principals here)."""
    w = [t.up for t in toks]
    if len(toks) < 5 or w[2] not in ("LOGIN", "USER") or toks[3].text != "=":
        raise SqlError(102, near=toks[2].text if len(toks) > 2 else "AS")
    ex.state.impersonation.append((w[2], str(ex._scalar(toks[4:5]))))


def login_name(ex: Executor) -> str:
    for kind, name in reversed(ex.state.impersonation):
        if kind == "LOGIN":
            return name
    return ex.state.user


def user_name(ex: Executor) -> str:
    if ex.state.impersonation:
        return ex.state.impersonation[-1][1]
    return "dbo"


def set_statement(ex: Executor, toks: list[Tok], out: list[Out]) -> None:
    st = ex.state
    w = [t.up for t in toks]
    if len(toks) >= 3 and toks[1].kind == "var":
        _set_variable(ex, toks)
        return
    if w[1:4] == ["TRANSACTION", "ISOLATION", "LEVEL"]:
        level = " ".join(w[4:])
        for num, lname in ISOLATION_NAMES.items():
            if lname == level:
                st.isolation = num
                return
        raise SqlError(102, near=level)
    if w[1] == "LOCK_TIMEOUT":
        st.lock_timeout = int(ex._scalar(toks[2:]))
        ex._apply_lock_timeout()
        return
    if w[1] == "TEXTSIZE":
        st.textsize = int(ex._scalar(toks[2:]))
        return
    if w[1] == "CONTEXT_INFO":
        v = ex._scalar(toks[2:])
        if isinstance(v, str):
            v = v.encode()
        st.context_info = None if v is None else bytes(v)[:128]
        return
    if w[1] == "LANGUAGE":
        st.language = unquote(toks[2])
        return
    if w[-1] in ("ON", "OFF") and len(w) >= 3:
        _set_switches(ex, w[1:-1], w[-1] == "ON")
        return
    # other SET options (DATEFORMAT, DATEFIRST, DEADLOCK_PRIORITY, ROWCOUNT...) are kept
    st.options[w[1]] = True


def _set_variable(ex: Executor, toks: list[Tok]) -> None:
    """SET @v = expr (or +=, -=, *=, /=)."""
    st = ex.state
    name = toks[1].text.lower()
    if name not in st.variables:
        raise SqlError(137, f'Must declare the scalar variable "{toks[1].text}".', 15)
    op = toks[2].text
    value = ex._scalar(toks[3:])
    if op in ("+=", "-=", "*=", "/="):
        value = ex._scalar(tokenize(f"{literal(st.variables[name])} {op[0]} "
                                      f"{literal(value)}"))
    st.variables[name] = value


def _set_switches(ex: Executor, names: list[str], value: bool) -> None:
    """SET opt[, opt...] ON|OFF; ANSI_DEFAULTS switches its group with it."""
    for opt in names:
        if opt != ",":
            ex.state.options[opt] = value
            if opt == "ANSI_DEFAULTS":
                for o in ("ANSI_NULLS", "ANSI_NULL_DFLT_ON", "ANSI_PADDING",
                          "ANSI_WARNINGS", "QUOTED_IDENTIFIER", "CURSOR_CLOSE_ON_COMMIT",
                          "IMPLICIT_TRANSACTIONS"):
                    ex.state.options[o] = value


def declare(ex: Executor, toks: list[Tok]) -> None:
    # DECLARE @a INT = 1, @b NVARCHAR(10)
    i = 1
    n = len(toks)
    while i < n:
        if toks[i].kind != "var":
            raise SqlError(102, near=toks[i].text)
        name = toks[i].text.lower()
        j = i + 1
        depth = 0
        eq = None
        while j < n and not (depth == 0 and toks[j].text == ","):
            if toks[j].text == "(":
                depth += 1
            elif toks[j].text == ")":
                depth -= 1
            elif depth == 0 and toks[j].text == "=" and eq is None:
                eq = j
            j += 1
        ex.state.variables[name] = None if eq is None else ex._scalar(toks[eq + 1 : j])
        i = j + 1


def args(ex: Executor, toks: list[Tok]) -> list[Any]:
    """Comma-separated expressions (outside parentheses) evaluated to values."""
    return [ex._scalar(p) for p in _types.split_top(toks) if p]


def raiserror(ex: Executor, toks: list[Tok], out: list[Out]) -> None:
    inner = toks[1:]
    with_at = next((i for i, t in enumerate(inner) if t.up == "WITH"), len(inner))
    inner = inner[:with_at]
    if inner and inner[0].text == "(" and inner[-1].text == ")":
        inner = inner[1:-1]
    args = ex._args(inner)
    if len(args) < 3:
        raise SqlError(102, near="RAISERROR")
    msg, severity, state = args[0], int(args[1]), int(args[2])
    number = 50000
    if isinstance(msg, int):
        number = msg
        text = error_text(msg)
    else:
        text = printf(str(msg), args[3:])
    if severity <= 10:
        out.append(Info(number if number != 50000 else 0, text, severity, state))
        return
    err = SqlError(number, text, severity, state)
    ex._on_error(err)
    out.append(err)


def throw(ex: Executor, toks: list[Tok]) -> None:
    if len(toks) == 1:
        if ex._catch is None:
            raise SqlError(10704, "To rethrow an error, a THROW statement must be used "
                           "inside a CATCH block.", 15)
        raise ex._catch
    args = ex._args(toks[1:])
    if len(args) != 3:
        raise SqlError(102, near="THROW")
    raise SqlError(int(args[0]), str(args[1]), 16, int(args[2]))


def waitfor(ex: Executor, toks: list[Tok], wait: Waiter) -> None:
    if len(toks) < 3 or toks[1].up not in ("DELAY", "TIME"):
        raise SqlError(102, near="WAITFOR")
    value = str(ex._scalar(toks[2:]))
    m = re.match(r"^(\d+):(\d+)(?::(\d+(?:\.\d*)?))?$", value.strip())
    if not m:
        raise SqlError(148, f"Incorrect time syntax in time string '{value}' used with "
                       "WAITFOR.", 15)
    secs = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3) or 0)
    if toks[1].up == "TIME":
        now = _dt.datetime.now()
        target = now.replace(hour=0, minute=0, second=0, microsecond=0) + _dt.timedelta(
            seconds=secs)
        secs = (target - now).total_seconds() % 86400
    wait(secs)


def use(ex: Executor, name: str, out: list[Out]) -> None:
    real = ex.engine.database_name(name)
    if real is None:
        raise SqlError(911, database=name)
    old = ex.state.database
    if ex._in_sqlite_tran:
        # a transaction stays on the database where it began
        pass
    ex.state.database = real
    ex.conn = ex._connect(real)
    out.append(Env(P.ENV_DATABASE, real, old))
    out.append(Info(5701, f"Changed database context to '{real}'.", 0, 1))


def exec_statement(ex: Executor, toks: list[Tok], out: list[Out], wait: Waiter) -> None:
    i = 1
    if i + 1 < len(toks) and toks[i].kind == "var" and toks[i + 1].text == "=":
        i += 2  # EXEC @rc = proc
    if i >= len(toks):
        raise SqlError(102, near="EXEC")
    if toks[i].text == "(":
        # EXEC ('sql')
        sql = str(ex._scalar(toks[i:]))
        out.extend(ex.run_nested(sql, wait))
        return
    name = "".join(unquote(t) if t.kind in ("br", "dq") else t.text for t in toks[i:i + 1])
    j = i + 1
    while j + 1 < len(toks) and toks[j].text == ".":
        name += "." + unquote(toks[j + 1])
        j += 2
    params: list[tuple[str | None, Any]] = []
    for p in _types.split_top(toks[j:]):
        if not p:
            continue
        if p[-1].up in ("OUTPUT", "OUT"):
            p = p[:-1]
        if len(p) >= 2 and p[0].kind == "var" and p[1].text == "=":
            params.append((p[0].text, ex._scalar(p[2:])))
        else:
            params.append((None, ex._scalar(p)))
    ex.call(name, params, out, wait)


def call(ex: Executor, name: str, params: list[tuple[str | None, Any]], out: list[Out],
         wait: Waiter) -> None:
    short = name.split(".")[-1].lower()
    if short == "sp_reset_connection":
        ex.reset()
        out.append(ReturnStatus(0))
    elif short == "sp_set_session_context":
        named = {(k or "").lower(): v for k, v in params}
        pos = [v for k, v in params if k is None]
        key = named.get("@key", pos[0] if pos else None)
        value = named.get("@value", pos[1] if len(pos) > 1 else None)
        read_only = named.get("@read_only", pos[2] if len(pos) > 2 else 0)
        if key is not None and str(key) in ex.state.read_only_keys:
            raise SqlError(15664, f"Cannot set key '{key}' in the session context. The "
                           "key has been set as read_only for this session.", 16)
        if key is not None and read_only:
            ex.state.read_only_keys.add(str(key))
        if key is None:
            raise SqlError(201, "Procedure or function 'sp_set_session_context' expects "
                           "parameter '@key', which was not supplied.", 16)
        if value is None:
            ex.state.session_context.pop(str(key), None)
        else:
            ex.state.session_context[str(key)] = value
        out.append(ReturnStatus(0))
    elif short == "sp_executesql":
        if not params:
            raise SqlError(201, "Procedure or function 'sp_executesql' expects parameter "
                           "'@statement', which was not supplied.", 16)
        sql = str(params[0][1])
        saved = ex.state.variables
        local = dict(saved)
        for k, v in params[2:]:
            if k:
                local[k.lower()] = v
        ex.state.variables = local
        _types.declare_params(ex, params[1][1] if len(params) > 1 else None)
        try:
            out.extend(ex.run_nested(sql, wait))
        finally:
            ex.state.variables = saved
        out.append(ReturnStatus(0))
    elif short == "sp_who" or short == "sp_who2":
        rows = [(s["spid"], s.get("status", "sleeping"), s["user"], s.get("host", ""),
                 s["database"]) for s in ex.engine.sessions_provider()]
        out.append(Rows(infer_columns(["spid", "status", "loginame", "hostname", "dbname"],
                                      rows), rows))
        out.append(ReturnStatus(0))
    elif not _procs.call(ex, name, params, out, wait):
        raise SqlError(2812, name=name)


def run_nested(ex: Executor, sql: str, wait: Waiter) -> list[Out]:
    out: list[Out] = []
    try:
        stmts = _plans.parse_cached(sql)
    except SqlSyntaxError as exc:
        raise SqlError(102, near=exc.near[:30]) from None
    ex._run_list(stmts, out, wait)
    return out


def sysvar(ex: Executor, name: str) -> Any:
    st = ex.state
    opts = 0
    for opt, bit in OPTION_BITS.items():
        if st.options.get(opt):
            opts |= bit
    return {
        "@@SPID": st.spid,
        "@@VERSION": VERSION_STRING,
        "@@TRANCOUNT": st.trancount,
        "@@ROWCOUNT": st.rowcount,
        "@@ERROR": st.error,
        "@@IDENTITY": st.identity,
        "@@OPTIONS": opts,
        "@@SERVERNAME": ex.engine.server_name,
        "@@SERVICENAME": "MSSQLSERVER",
        "@@LANGUAGE": st.language,
        "@@LANGID": 0,
        "@@LOCK_TIMEOUT": st.lock_timeout,
        "@@TEXTSIZE": st.textsize,
        "@@MAX_PRECISION": 38,
        "@@DATEFIRST": 7,
        "@@MICROSOFTVERSION": (VERSION[0] << 24) | VERSION[2],
        "@@NESTLEVEL": 0,
        "@@PROCID": 0,
        "@@DBTS": b"\x00" * 8,
        "@@CONNECTIONS": 0,
        "@@MAX_CONNECTIONS": 32767,
        "@@FETCH_STATUS": -1,
    }.get(name)


def printf(fmt: str, args: list[Any]) -> str:
    it = iter(args)

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        try:
            return str(next(it))
        except StopIteration:
            return "(null)"

    return re.sub(r"%%|%[-+ #0]*\d*(?:\.\d+)?(?:I64)?[dsiuxXo]", sub, fmt)
