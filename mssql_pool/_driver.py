"""The one module that knows pymssql and FreeTDS: the shapes of their exceptions and the
driver calls the pool makes beyond DB-API.

pymssql reports the same kind of failure in several shapes (listed below, and in
docs/retries.md, "pymssql's shapes and quirks"); python-tds and raw sockets add their
own. :func:`extract` turns any of them into a :class:`RawError`: the SQL Server /
DB-Library numbers involved, the highest severity, a short text, and hints about the
state of the connection.
Everything else in mssql_pool works with :mod:`mssql_pool.classify`'s view instead.

Shapes handled:

* ``cursor.execute``: ``pymssql.OperationalError`` (or ProgrammingError,
  IntegrityError...) with ``args[0]`` the number and ``args[1]`` the text as bytes;
  ``__context__`` is a ``_mssql.MSSQLDatabaseException``.
* ``pymssql.connect``: ``args[0]`` is a tuple ``(number, bytes)``. The number is
  stale after an earlier failed login (``clr_err()`` never resets the module
  globals), so numbers are read from the text (``DB-Lib error message NNNNN``,
  ``SQL Server message NNNNN``, ``Msg NNNNN``) and ``args[0][0]`` is used only when
  the text names none.
* ``conn.commit()``: a plain string; the number only on ``__context__.number``.
* ``_mssql.MSSQLDatabaseException`` (``.number .severity .state .text``) and
  ``_mssql.MSSQLDriverException`` (not a ``pymssql.Error``; raised by ``rollback()``
  on a dead connection).
* ``InterfaceError('Not connected to any MS SQL server')`` after a 20017.
* python-tds (``pytds.tds_base.Error`` subclasses with ``msg_no``/``number``), imported
  lazily and only if installed.
* ``OSError`` / ``ConnectionError`` / ``TimeoutError`` from sockets.

Beyond exceptions, the rest of the package asks this module (and only this module) about
pymssql's private surface: whether a connection is pymssql's (:func:`is_pymssql`), its
autocommit state, its one-batch ``_conn.execute_non_query`` (:func:`non_query`), the
``sp_reset_connection`` RPC through ``_conn.init_procedure`` (:func:`reset_rpc`), which
failed statement certainly never left the client or failed on a dead connection
(:func:`dead_on_arrival`), where FreeTDS was routed when a login failed
(:func:`routed_address`), and how pymssql wraps ``_mssql`` errors as DB-API errors
(:func:`as_dbapi_error`, :func:`commit_error`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RawError", "extract", "numbers_in_text", "rollback", "is_no_transaction", "reset_unsupported",
    "is_pymssql", "autocommit_state", "pymssql_autocommit", "non_query", "default_mode_non_query",
    "reset_rpc", "dead_on_arrival", "NOT_SENT", "DEAD", "routed_address", "as_dbapi_error",
    "commit_error",
]

# "DB-Lib error message 20009", "SQL Server message 40613", "Msg 1205", "Error 10054".
_NUMBER_RE = re.compile(r"(?:\b[Mm]essage|\bMsg|\bError)\s+(\d{1,6})\b")
_SERVER_NUMBER_RE = re.compile(r"(?:SQL Server message|\bMsg)\s+(\d{1,6})\b")
_SEVERITY_RE = re.compile(r"\b[Ss]everity:?\s+(\d{1,3})\b")
_SECRET_RE = re.compile(r"(?i)\b(password|pwd|secret|token)\s*([=:])\s*[^\s;,&'\"]+")
_DEAD_TEXT_RE = re.compile(
    r"Not connected to any MS SQL server|Connection is closed|DBPROCESS is dead"
    r"|Adaptive Server connection failed|Unexpected EOF from the server"
    r"|Write to the server failed|Read from the server failed|Server closed the connection"
    r"|Connection reset by peer|Broken pipe|Connection refused"
    r"|Unable to connect: Adaptive Server is unavailable"
    # MSSQLDriverException from connect() when the session died during pymssql's setup
    r"|Could not set connection properties|failed for an unknown reason",
    re.IGNORECASE,
)
_TIMEOUT_TEXT_RE = re.compile(r"timed out|timeout expired", re.IGNORECASE)

_MAX_MESSAGE = 240

# Server messages recognised by their wording, for shapes that lose the number.
_KNOWN_TEXTS: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    (re.compile(p, re.IGNORECASE), n)
    for p, n in (
        (r"Login failed for user", 18456),
        (r"is not currently available", 40613),
        (r"Cannot open database .* requested by the login", 4060),
        (r"service is currently busy", 40501),
        (r"was deadlocked on .*resources", 1205),
        (r"Lock request time ?out period exceeded", 1222),
        (r"session is in the kill state", 596),
        (r"Resource ID\s*:\s*\d+.*limit .* has been reached", 10928),
        (r"minimum guarantee", 10929),
    )
)


#: Babelfish for PostgreSQL reports many errors under one generic number with a
#: PostgreSQL-style text. The texts below mean the SQL Server error on the right, so they
#: are classified the same (the generic number stays in ``numbers``). Only consulted
#: when the generic number is present, or at login (where pymssql's number is stale).
BABELFISH_GENERIC = 33557097
_BABELFISH_TEXTS: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    (re.compile(p, re.IGNORECASE), n)
    for p, n in (
        (r"canceling statement due to lock timeout", 1222),
        (r"\bdeadlock detected", 1205),
        (r"the database system is (?:shutting down|starting up|in recovery mode)", 40613),
        (r"terminating connection due to administrator command", 596),
        (r"could not serialize access due to concurrent update", 3960),
        (r"sorry, too many clients already|remaining connection slots are reserved", 10928),
        (r"\brelation \S+ does not exist", 208),
        (r"\bcolumn \S+ does not exist", 207),
        (r"\b(?:procedure|function) \S+ does not exist", 2812),
        (r"\bsyntax error (?:at or )?near\b", 102),
    )
)
_BABELFISH_LOGIN = frozenset({40613, 10928})


def babelfish_numbers(numbers: tuple[int, ...], text: str, connect: bool) -> tuple[int, ...]:
    """The SQL Server numbers a Babelfish generic error's text stands for (or ``()``)."""
    if BABELFISH_GENERIC not in numbers and not connect:
        return ()
    found = tuple(n for pattern, n in _BABELFISH_TEXTS if pattern.search(text))
    if BABELFISH_GENERIC not in numbers:   # a login: only the server-state texts
        found = tuple(n for n in found if n in _BABELFISH_LOGIN)
    return found


@dataclass(frozen=True)
class RawError:
    """What a driver exception says, before any policy is applied.

    ``numbers`` lists every error number found, the primary one first; ``number``
    is that primary number (None when the error carries none). ``dead`` is True
    when the exception's shape alone says the connection is unusable (socket
    errors, ``Not connected``, ``MSSQLDriverException`` on a dead connection);
    ``timeout`` when it reports a timeout.
    """

    numbers: tuple[int, ...] = ()
    number: int | None = None
    severity: int | None = None
    text: str = ""
    dead: bool = False
    timeout: bool = False
    connect: bool = False


def _to_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def short_text(text: str) -> str:
    """Collapse whitespace, hide anything that looks like a secret, and truncate."""
    text = _SECRET_RE.sub(r"\1\2***", " ".join(text.split()))
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


def numbers_in_text(text: str) -> tuple[int, ...]:
    """Every error number a pymssql/FreeTDS message names, server messages first."""
    server = [int(n) for n in _SERVER_NUMBER_RE.findall(text)]
    others = [int(n) for n in _NUMBER_RE.findall(text)]
    return _dedupe(server + others)


def _dedupe(values: list[int]) -> tuple[int, ...]:
    seen: dict[int, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return tuple(seen)


def _severity_in_text(text: str) -> int | None:
    found = [int(s) for s in _SEVERITY_RE.findall(text)]
    return max(found) if found else None


def _int_attr(exc: BaseException, *names: str) -> int | None:
    for name in names:
        value = getattr(exc, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _pymssql_module() -> Any:
    try:
        import pymssql  # noqa: PLC0415
        from pymssql import _mssql  # noqa: PLC0415
    except Exception:  # pragma: no cover - pymssql is a hard dependency
        return None, None
    return pymssql, _mssql


def _pytds_error_type() -> Any:
    import sys

    mod = sys.modules.get("pytds.tds_base")
    if mod is None:
        # Only look at python-tds errors when python-tds has been imported by someone:
        # an exception from it cannot exist otherwise.
        return None
    return getattr(mod, "Error", None)


_PYMSSQL, _MSSQL = _pymssql_module()


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, then whatever it wraps (.orig for SQLAlchemy, __cause__, __context__)."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(out) < 6:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        orig = getattr(e, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(orig)
        todo.append(e.__cause__)
        todo.append(e.__context__)
    return out


def _server_part(text: str) -> str:
    """The server's own message: what precedes the first DB-Library line."""
    i = text.find("DB-Lib error message")
    return (text if i < 0 else text[:i]).strip()


def numbers_from_known_text(text: str) -> tuple[int, ...]:
    """Numbers of well-known server messages recognised by their wording."""
    return tuple(n for pattern, n in _KNOWN_TEXTS if pattern.search(text))


#: What pymssql says of a failed login whose messages it lost.
_LOST_CONNECT_TEXT = "Unknown error"


def _from_connect_args(first: Any, text: str) -> RawError:
    """A failed login. pymssql keeps the number and severity in module globals that are
    never reset, while the text is fresh: the server's message (stored together with the
    number, so the number is current exactly when that message is present) followed by
    DB-Library lines. Without a server message, ``first`` is stale and ignored."""
    if text.strip() == _LOST_CONNECT_TEXT:
        # pymssql gathers a login's messages in one buffer for all threads and empties it
        # when the first of concurrent failures raises: the others say only this, with a
        # number that may be stale. Nothing says the server refused the login: a failed
        # dial, retried by the connect policy (20 of 200 refused logins from 8 threads).
        return RawError(text=text, dead=True, connect=True)
    server_text = _server_part(text)
    nums: list[int] = []
    if server_text:
        if isinstance(first, int) and not _is_dblib(first) and first > 0:
            nums.append(first)
        nums.extend(numbers_from_known_text(server_text))
    nums.extend(numbers_in_text(text))
    found = _dedupe(nums)
    return RawError(
        numbers=found,
        number=found[0] if found else None,
        severity=_server_severity(text),
        text=text,
        connect=True,
    )


_GENERAL_RE = re.compile(r"DB-Lib error message 20018, severity (\d{1,3})")


def _server_severity(text: str) -> int | None:
    """The severity of the server's message at login, from DB-Library's 20018 line.

    pymssql's global severity is stale, but FreeTDS reports every server error as
    "20018 General SQL Server error" carrying that message's own severity, and this line
    survives even when pymssql drops the message itself (seen).
    """
    m = _GENERAL_RE.search(text)
    return int(m.group(1)) if m else None


def _is_dblib(number: int) -> bool:
    return 20000 <= number <= 20999


def _from_one(exc: BaseException) -> RawError | None:
    """Numbers and text from one exception object; None if it is not a driver error."""
    args = exc.args
    # _mssql.MSSQLDatabaseException: args == ((number, bytes),) plus .number .severity.
    # Never read .text: it is a C char* and a hand-made instance segfaults on access.
    if _MSSQL is not None and isinstance(exc, _MSSQL.MSSQLDatabaseException):
        first = args[0] if args else ""
        raw_text = first[1] if isinstance(first, tuple) and len(first) >= 2 else first
        text = _to_text(raw_text)
        number = _int_attr(exc, "number") or None
        if number is None and isinstance(first, tuple) and first and isinstance(first[0], int):
            number = first[0] or None
        severity = _int_attr(exc, "severity") or None
        nums = _dedupe(([number] if number else []) + list(numbers_in_text(text)))
        return RawError(numbers=nums, number=nums[0] if nums else None, severity=severity,
                        text=text)
    # pymssql connect(): args[0] == (number, bytes); the number may be stale.
    if args and isinstance(args[0], tuple) and len(args[0]) >= 2:
        return _from_connect_args(args[0][0], _to_text(args[0][1]))
    if _MSSQL is not None and isinstance(exc, _MSSQL.MSSQLDriverException):
        text = _to_text(args[0] if args else exc)
        nums = numbers_in_text(text)
        # Raised for dead connections ("Not connected to any MS SQL server", DB-Lib
        # 200xx) but also for parameter conversion problems: only the former are dead.
        return RawError(
            numbers=nums, number=nums[0] if nums else None, text=text,
            dead=bool(_DEAD_TEXT_RE.search(text)),
        )
    # cursor.execute(): args[0] number, args[1] bytes text.
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], (bytes, bytearray, str)):
        text = _to_text(args[1])
        nums = _dedupe([args[0]] + list(numbers_in_text(text)))
        severity = _int_attr(exc, "severity")
        ctx = exc.__context__
        if not severity and ctx is not None:
            severity = _int_attr(ctx, "severity") or None
        return RawError(numbers=nums, number=args[0], severity=severity, text=text)
    # python-tds: .msg_no (older) or .number, .severity, .text/.msg
    tds_error = _pytds_error_type()
    if tds_error is not None and isinstance(exc, tds_error):
        number = _int_attr(exc, "msg_no", "number")
        text = _to_text(getattr(exc, "text", None) or (args[0] if args else exc))
        name = type(exc).__name__
        nums = (number,) if number else numbers_in_text(text)
        return RawError(
            numbers=nums,
            number=nums[0] if nums else None,
            severity=_int_attr(exc, "severity"),
            text=text,
            dead=name in ("ClosedConnectionError",),
            timeout=name == "TimeoutError",
        )
    # Any other driver error with an integer .number (pyodbc-free duck typing).
    number = _int_attr(exc, "number", "msg_no")
    if number is not None:
        text = _to_text(getattr(exc, "text", None) or (args[0] if args else exc))
        return RawError(numbers=(number,), number=number, severity=_int_attr(exc, "severity"),
                        text=text)
    return None


def extract(exc: BaseException) -> RawError:
    """Read numbers, severity and text out of any driver, socket or wrapped exception."""
    chain = _chain(exc)
    top_text = _to_text(exc.args[0]) if exc.args and not isinstance(exc.args[0], tuple) else ""
    numbers: list[int] = []
    severity: int | None = None
    text = ""
    dead = False
    timeout = False
    connect = False
    primary: int | None = None
    for i, e in enumerate(chain):
        if connect and _MSSQL is not None and isinstance(e, _MSSQL.MSSQLDatabaseException):
            # The exception under a failed connect() carries the module-global number and
            # severity, which pymssql's clr_err() never resets, so they may be an earlier
            # failure's: the text read above is all we trust.
            continue
        raw = _from_one(e)
        if raw is None:
            continue
        if i > 0 and not text:
            text = top_text  # commit(): "Cannot commit transaction: (20047, b'...')"
        if primary is None:
            primary = raw.number
        numbers.extend(raw.numbers)
        if raw.severity is not None:
            severity = raw.severity if severity is None else max(severity, raw.severity)
        text = text or raw.text
        dead = dead or raw.dead
        timeout = timeout or raw.timeout
        connect = connect or raw.connect
    # commit(): a plain string; the number only on __context__.number (found above).
    if not text:
        text = top_text or _to_text(exc)
    # Text is only trusted from driver errors: "Error 1205" in a user's own
    # RuntimeError is not a deadlock.
    driver = any(_is_driver(e) for e in chain)
    if not numbers and driver:
        numbers.extend(numbers_in_text(text) or numbers_from_known_text(text))
        if numbers and primary is None:
            primary = numbers[0]
    if severity is None and not connect and driver:
        severity = _severity_in_text(text)
    hinted_dead, hinted_timeout = _shape_hints(chain, text, driver)
    dead, timeout = dead or hinted_dead, timeout or hinted_timeout
    nums = _dedupe(numbers)
    meant = babelfish_numbers(nums, text, connect)
    if meant:
        primary = meant[0]
        nums = _dedupe([*meant, *nums])
    if primary is None and nums:
        primary = nums[0]
    if primary is not None:
        nums = _dedupe([primary, *nums])
    return RawError(
        numbers=nums,
        number=primary,
        severity=severity,
        text=short_text(text),
        dead=dead,
        timeout=timeout,
        connect=connect,
    )


def _shape_hints(chain: list[BaseException], text: str, driver: bool) -> tuple[bool, bool]:
    """(dead, timeout) from the shapes alone: socket errors, pymssql's "not connected"
    InterfaceError, and a driver's dead-connection or timeout wording."""
    dead = timeout = False
    for e in chain:
        if isinstance(e, TimeoutError) and not _is_our_error(e):
            timeout = True
        elif isinstance(e, OSError) and not _is_our_error(e):
            dead = True
        if _PYMSSQL is not None and isinstance(e, _PYMSSQL.InterfaceError):
            dead = dead or bool(_DEAD_TEXT_RE.search(_to_text(e)))
    if driver and _DEAD_TEXT_RE.search(text):
        dead = True
    if driver and _TIMEOUT_TEXT_RE.search(text):
        timeout = True
    return dead, timeout


def _is_our_error(exc: BaseException) -> bool:
    from .errors import MssqlPoolError

    return isinstance(exc, MssqlPoolError)


def _is_driver(exc: BaseException) -> bool:
    if _PYMSSQL is not None and isinstance(exc, (_PYMSSQL.Error, _MSSQL.MSSQLException)):
        return True
    tds_error = _pytds_error_type()
    return tds_error is not None and isinstance(exc, tds_error)


# ------------------------------------------------------------------ ending transactions

#: "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION". pymssql's
#: ``rollback()`` ignores it only in SQL Server's wording; Babelfish says "ROLLBACK can only
#: be used in transaction blocks" and pymssql raises it, before sending its BEGIN TRAN.
NO_TRANSACTION = 3903


def is_no_transaction(exc: BaseException) -> bool:
    """True when ``exc`` is error 3903 (ROLLBACK with no transaction open), in any wording."""
    try:
        raw = extract(exc)
    except Exception:  # pragma: no cover - defensive: never let parsing hide an error
        return False
    return raw.number == NO_TRANSACTION and not raw.dead


def rollback(conn: Any) -> None:
    """``conn.rollback()``, where "no transaction to roll back" (3903) is the no-op it is.

    Such a rollback follows a COMMIT sent as a statement, or a deadlock victim whose
    transaction the server already rolled back. On pymssql with autocommit off the driver
    raised before its own ``BEGIN TRAN``, so that is sent here, keeping pymssql's
    invariant (a transaction is always open in that mode). Any other error propagates.
    """
    try:
        conn.rollback()
    except Exception as exc:
        if not is_no_transaction(exc):
            raise
        raw = getattr(conn, "raw", conn)
        inner = getattr(raw, "_conn", None)
        execute_non_query = getattr(inner, "execute_non_query", None)
        if execute_non_query is not None and not getattr(raw, "autocommit_state", True):
            execute_non_query("BEGIN TRAN")


def reset_unsupported(exc: BaseException) -> bool:
    """True when ``sp_reset_connection`` failed because the server has no such procedure
    (SQL Server's 2812, or Babelfish's generic error saying the procedure does not exist)."""
    try:
        raw = extract(exc)
    except Exception:  # pragma: no cover - defensive
        return False
    return 2812 in raw.numbers and not raw.dead and "sp_reset_connection" in raw.text.lower()


# --------------------------------------------------------------------------- the connection


def is_pymssql(raw: Any) -> bool:
    """True when ``raw`` is a pymssql connection (not a ``connect=`` factory's own driver)."""
    return type(raw).__module__.startswith("pymssql")


def autocommit_state(raw: Any) -> bool | None:
    """pymssql's ``autocommit_state``; None when the driver does not say."""
    return getattr(raw, "autocommit_state", None)


def pymssql_autocommit(raw: Any) -> bool | None:
    """For a pymssql connection (or a test double that splits its commit like one): its
    autocommit state; None for any other driver."""
    if not (is_pymssql(raw) or getattr(raw, "_split_commit", False)):
        return None
    return bool(getattr(raw, "autocommit_state", False))


def non_query(raw: Any) -> Callable[[str], object] | None:
    """pymssql's ``_conn.execute_non_query``: one batch, one round trip, results discarded;
    None for a driver without it."""
    return getattr(getattr(raw, "_conn", None), "execute_non_query", None)


def default_mode_non_query(raw: Any) -> Callable[[str], object] | None:
    """:func:`non_query` when ``raw`` is in pymssql's default mode (autocommit off: its own
    BEGIN TRAN is open); None otherwise."""
    execute = non_query(raw)
    if execute is None or getattr(raw, "autocommit_state", True):
        return None
    return execute


def reset_rpc(raw: Any) -> Callable[[], object] | None:
    """A call that sends ``sp_reset_connection`` as an RPC (pymssql's
    ``_conn.init_procedure(name).execute()``); None when the driver cannot send one."""
    init_procedure = getattr(getattr(raw, "_conn", None), "init_procedure", None)
    if init_procedure is None:
        return None
    return lambda: init_procedure("sp_reset_connection").execute()


# --------------------------------------------------------------------------- a dead connection

#: :func:`dead_on_arrival`: the statement never left the client.
NOT_SENT = "not sent"
#: :func:`dead_on_arrival`: the statement was written to a connection whose peer had closed.
DEAD = "dead"

_DEAD_NUMBER = 20047
_NOT_CONNECTED = "Not connected to any MS SQL server"


def dead_on_arrival(exc: BaseException) -> str | None:
    """How a statement failed on a connection that was already dead, or None.

    :data:`NOT_SENT` for ``InterfaceError('Not connected to any MS SQL server')``: pymssql
    raises it before any I/O. :data:`DEAD` for a bare 20047 "DBPROCESS is dead or not
    enabled" (``args == (20047, text)`` naming no other DB-Library error): pymssql wrote
    the batch to a socket whose peer had closed, and the read failed; FreeTDS reports a
    reset before the request reached the server, after it ran, after its reply began and a
    peer that closed while idle all the same way, so the statement may have run. Anything
    else (20017 unexpected EOF, 20004 read failed, 20006 write failed, 20003 timeout...)
    is None.
    """
    args = exc.args
    if type(exc).__name__ == "InterfaceError":
        if len(args) == 1 and _to_text(args[0]).strip() == _NOT_CONNECTED:
            return NOT_SENT
        return None
    if len(args) != 2 or args[0] != _DEAD_NUMBER:
        return None
    text = _to_text(args[1])
    if "DBPROCESS is dead" not in text \
            or any(n != _DEAD_NUMBER for n in numbers_in_text(text)):
        return None
    return DEAD


# --------------------------------------------------------------------------- FreeTDS routing

# FreeTDS/DB-Library lines: "DB-Lib error message 20009, severity 9:\n<text> (host,port)".
_DBLIB_LINE = re.compile(r"DB-Lib error message (\d+), severity \d+:\s*\n?([^\n]*)")
_ROUTED_ADDR = re.compile(r"\(([^(),\s]+),(\d{1,5})\)\s*$")
_SERVER_MSG = re.compile(r"SQL Server message \d+|Msg \d+")


def _error_text(exc: BaseException) -> str:
    """The full text of a driver error (pymssql connect errors carry (number, bytes))."""
    parts: list[str] = []
    for arg in exc.args:
        items = arg if isinstance(arg, tuple) else (arg,)
        for item in items:
            if isinstance(item, (bytes, bytearray)):
                parts.append(bytes(item).decode("utf-8", "replace"))
            elif isinstance(item, str):
                parts.append(item)
    return "\n".join(parts) if parts else str(exc)


def routed_address(exc: BaseException) -> tuple[tuple[str, int] | None, bool]:
    """``(address, bare)`` for a failed pymssql connect.

    ``address`` is the ``(host, port)`` FreeTDS was *routed* to when the failure happened
    there (None when the failure was at the dialled address or the text names none);
    ``bare`` is True when FreeTDS said nothing but "connection failed" there: no refusal,
    no timeout, no server message (a second routing hop, a loop, or a silent close).
    """
    text = _error_text(exc)
    lines = _DBLIB_LINE.findall(text)
    address = None
    for _number, line in lines:
        m = _ROUTED_ADDR.search(line.strip())
        if m:
            address = (m.group(1), int(m.group(2)))
    if address is None:
        return None, False
    numbers = {int(n) for n, _ in lines}
    server_said = bool(_SERVER_MSG.search(text)) or "Login failed" in text
    bare = numbers == {20002} and not server_said and not text.split("DB-Lib", 1)[0].strip()
    return address, bare


# --------------------------------------------------------------------------- DB-API wrapping


def as_dbapi_error(exc: Exception) -> Exception:
    """``_mssql`` exceptions (not DB-API errors) as pymssql.OperationalError."""
    import pymssql  # noqa: PLC0415

    if isinstance(exc, pymssql.Error):
        return exc
    args = exc.args
    if len(args) == 1 and isinstance(args[0], tuple):
        args = args[0]           # ((number, text),) -> (number, text), as cursor errors
    return pymssql.OperationalError(*args)


def commit_error(exc: Exception) -> Exception:
    """What pymssql's ``commit()`` raises when COMMIT TRAN fails."""
    import pymssql  # noqa: PLC0415

    if isinstance(exc, pymssql.Error):
        return exc
    detail = exc.args[0] if exc.args else exc
    error = pymssql.OperationalError(f"Cannot commit transaction: {detail}")
    error.__cause__ = error.__context__ = exc   # where the number is, as with pymssql
    return error
