"""What a connection failure means and what to try, for ``mssql-pool check``.

Two tables: by SQL Server / DB-Library error number first (the most specific), then by
the kind :func:`mssql_pool.classify.classify` gives; :func:`explain` returns the
classification with a plain sentence on meaning and remedy.
"""

from __future__ import annotations

from typing import Any

from .classify import classify

__all__ = ["explain", "first_line"]

# By SQL Server / DB-Library error number: (what it means, what to try).
_ADVICE_BY_NUMBER: dict[int, tuple[str, str]] = {
    18456: (
        "the server rejected the login: wrong user name or password, a disabled login, or "
        "SQL authentication switched off (Windows-only mode)",
        "check the user and password; on SQL Server enable mixed-mode authentication; on "
        "Azure SQL use user@server only for old gateways, and check the login exists in the "
        "target database for contained users",
    ),
    4060: (
        "the login worked but the database cannot be opened: it does not exist, the login "
        "has no access, or (Azure) it is failing over",
        "check the database name in the URL and the user's permissions; during a failover "
        "retry in a few seconds",
    ),
    40613: (
        "Azure SQL says the database is not currently available (a reconfiguration or "
        "failover, usually under 30 s)",
        "wait and retry with backoff; mssql_pool's connect policy does this for you",
    ),
    40501: (
        "Azure SQL is busy and throttling this client",
        "wait at least 10 s before retrying; reduce concurrent work or scale up",
    ),
    10928: (
        "a resource limit (sessions or workers) of the database was reached",
        "lower max_size across the fleet (instances x max_size), or raise the service tier",
    ),
    10929: (
        "a resource limit of the database was reached (minimum guarantee not available)",
        "retry after 5 s or more; reduce load",
    ),
    20009: (
        "the client could not reach the server: nothing listening there, or a firewall",
        "check host and port, that SQL Server listens on TCP, and firewall rules",
    ),
    20002: (
        "the connection failed during login: often the server requires encryption this "
        "client did not negotiate, or it closed the connection right away",
        "check the server's 'force encryption' setting and the `encryption` URL "
        "parameter; look at the server's error log",
    ),
    20003: (
        "the server did not answer in time",
        "check the network path (firewall dropping packets, VPN) and server load; raise "
        "login_timeout/timeout if the server is simply slow",
    ),
    20004: ("reading from the server failed: the connection was cut", "check the network path"),
    20006: ("writing to the server failed: the connection was cut", "check the network path"),
    20017: (
        "the server closed the connection unexpectedly",
        "check the server's error log; a redirect target may be unreachable",
    ),
    233: (
        "the server closed the connection before the login completed (often too many "
        "connections, or a protocol mismatch)",
        "check the server's connection limit and error log",
    ),
}
_ADVICE_BY_KIND: dict[str, tuple[str, str]] = {
    "auth": _ADVICE_BY_NUMBER[18456],
    "throttled": (
        "the server is throttling this client",
        "wait at least the hinted delay, then retry with backoff",
    ),
    "transient": (
        "a transient condition that usually clears by itself (failover, resource limit)",
        "retry with backoff; mssql_pool's retry policy does this",
    ),
    "disconnect": (
        "the connection is dead (network cut, server restart or KILL)",
        "check the network path and the server; the pool replaces such connections",
    ),
    "programming": (
        "the SQL itself is wrong (syntax, unknown object or column)",
        "fix the query; retrying will not help",
    ),
    "deadlock": ("the session was chosen as a deadlock victim", "retry the whole transaction"),
    "lock_timeout": ("a lock wait timed out", "roll back and retry the transaction"),
    "query_timeout": (
        "the query ran longer than the timeout; the work may or may not have happened",
        "look at the query plan and blocking; raise `timeout` only if the work is "
        "legitimately slow",
    ),
}
_UNKNOWN_ADVICE = (
    "an error mssql_pool does not classify specially",
    "read the server's message above; the server's error log may say more",
)


def explain(exc: BaseException) -> dict[str, Any]:
    """Classification of ``exc`` plus a plain sentence on meaning and remedy."""
    info: dict[str, Any] = {"type": type(exc).__name__, "message": first_line(exc)}
    ci = classify(exc)
    kind = ci.kind.value
    info.update(
        kind=kind,
        number=ci.number,
        numbers=list(ci.numbers),
        severity=ci.severity,
        retryable=ci.retryable,
        connection_dead=ci.connection_dead,
    )
    if ci.message:
        info["message"] = ci.message.strip().splitlines()[0]
    meaning, remedy = _UNKNOWN_ADVICE
    for number in ci.numbers:
        if number in _ADVICE_BY_NUMBER:
            meaning, remedy = _ADVICE_BY_NUMBER[number]
            break
    else:
        if kind in _ADVICE_BY_KIND:
            meaning, remedy = _ADVICE_BY_KIND[kind]
    info["meaning"] = meaning
    info["try"] = remedy
    return info


def first_line(exc: BaseException) -> str:
    """The server's message of a pymssql error, without DB-Library's lines after it."""
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    text: Any
    if len(args) == 1 and isinstance(args[0], tuple) and len(args[0]) == 2:  # connect() shape
        text = args[0][1]
    elif len(args) >= 2 and isinstance(args[0], int):  # cursor.execute() shape
        text = args[1]
    else:
        text = str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    # pymssql puts the server's message first and DB-Lib's noise after it.
    return lines[0] if lines else type(exc).__name__
