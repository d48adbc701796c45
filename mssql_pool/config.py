"""PoolConfig: every option of :class:`~mssql_pool.ConnectionPool`, its default, validated once.

The pool keeps one frozen :class:`PoolConfig`; ``repr(pool.config)`` shows the effective
setup with the password masked. Options, in the order a connection meets them
(create, configure, check, use, reset, discard):

================== ============ ==========================================================
option             default      meaning
================== ============ ==========================================================
min_size           1            connections kept open (refilled in the background)
max_size           10           hard cap on open connections (``None`` = ``max(min_size, 10)``)
timeout            30.0         seconds ``getconn``/``connection`` may wait
max_waiting        0            callers allowed to queue; beyond: ``TooManyRequests`` (0 = no cap)
max_idle           600.0        idle connections above ``min_size`` closed after this (None = never)
max_lifetime       3600.0       connection retired when idle after this, minus 0-5 % jitter
keepalive          None         ping idle connections every N s (Azure drops idle ones at ~4 min)
configure          None         ``fn(raw_conn)`` run on every new connection and after a full reset
check              "SELECT 1"   health check on checkout: SQL text, ``fn(raw_conn)``, or None
validate_after     0.5          skip the check if the connection came back less than this ago
reset              "auto"       "auto", "rollback", "full" or ``fn(raw_conn)``, see reset.py
leak_timeout       None         WARNING with the checkout stack when held longer than this (a
                                debugging aid: it captures a stack on every checkout)
reconnect_timeout  300.0        a ``reconnect_failed`` event when connecting fails this long
reconnect_failed   None         ``fn(pool)`` called on that event (a listener on the event thread)
name               "pool-N"     used in logs, thread names, stats and ``repr``
background         True         run the maintenance thread (False: call ``run_maintenance()``)
maintenance_interval 1.0        seconds between maintenance passes
servers            None         every endpoint in order (replaces conninfo's server), endpoints.py
failover_partners  None         endpoints tried after conninfo's server, e.g. ["host2:1433"]
read_only          False        read-only intent in the login (Always On read-only routing)
endpoint_breaker   "auto"       per-endpoint CircuitBreaker arguments, a factory or None (off);
                                auto: endpoints.DEFAULT_ENDPOINT_BREAKER
identify           None         ask each new connection which node it reached (None: auto)
connect_policy     "auto"       RetryPolicy for failed logins: pause, attempts, deadline (None:
                                retry until the caller's timeout), "auto": CONNECT_POLICY
circuit_breaker    "auto"       pool-wide CircuitBreaker (instance or its arguments), None/auto:
                                none (conninfo pools have one per endpoint)
circuit_wait       False        True: callers wait for an open circuit's probe even when the
                                pool has no connection at all (False: refused at once then)
listeners          ()           ``fn(event)`` or ``(fn, kinds)`` pairs: pool events, events.py
clock/sleep/random monotonic... injection points for tests (monotonic clock only)
================== ============ ==========================================================
"""

from __future__ import annotations

import itertools
import math
import random as _random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._dsn import parse_conninfo, redact_conninfo
from .endpoints import endpoint_options
from .errors import ConfigError

__all__ = ["PoolConfig", "RESET_MODES", "make_config"]

RESET_MODES = ("auto", "rollback", "full")
Conninfo = str | Mapping[str, Any] | Callable[[], "str | Mapping[str, Any]"] | None
_names = itertools.count(1)


@dataclass(frozen=True, repr=False)
class PoolConfig:
    """The effective, validated configuration of one pool (immutable)."""

    conninfo: Conninfo = None
    connect: Callable[[], Any] | None = None
    min_size: int = 1
    max_size: int = 10
    timeout: float = 30.0
    max_waiting: int = 0
    max_idle: float | None = 600.0
    max_lifetime: float | None = 3600.0
    keepalive: float | None = None
    configure: Callable[[Any], None] | None = None
    check: str | Callable[[Any], object] | None = "SELECT 1"
    validate_after: float = 0.5
    reset: str | Callable[[Any], object] = "auto"
    leak_timeout: float | None = None
    reconnect_timeout: float = 300.0
    reconnect_failed: Callable[[Any], object] | None = None
    name: str = ""
    background: bool = True
    maintenance_interval: float = 1.0
    clock: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], object] = field(default=time.sleep)
    random: Callable[[], float] = field(default=_random.random)
    servers: tuple[Any, ...] | None = None
    failover_partners: tuple[Any, ...] | None = None
    read_only: bool = False
    endpoint_breaker: Any = "auto"
    identify: Any = None
    connect_policy: Any = "auto"
    circuit_breaker: Any = "auto"
    circuit_wait: bool = False
    listeners: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("clock", "sleep", "random") and value is f.default:
                continue
            if f.name == "listeners":
                if value:
                    names = ", ".join(getattr(fn, "__qualname__", type(fn).__name__)
                                      for fn, _ in value)
                    shown.append(f"listeners=[{names}]")
                continue
            if f.name == "connect_policy" and not isinstance(value, str):
                shown.append(f"connect_policy={value!r}")
            elif f.name == "conninfo":
                text = redact_conninfo(value)
                shown.append(f"conninfo={text}")
            elif callable(value) and not isinstance(value, str):
                shown.append(f"{f.name}={getattr(value, '__qualname__', type(value).__name__)}")
            else:
                shown.append(f"{f.name}={value!r}")
        return "PoolConfig(" + ", ".join(shown) + ")"


#: The longest duration any option accepts (a year, in seconds): every wait the pool
#: makes must stay below ``threading.TIMEOUT_MAX`` and keep its arithmetic finite.
MAX_SECONDS = 365 * 86400.0
#: The largest pool size accepted.
MAX_SIZE = 100_000
#: The longest pool ``name`` accepted (it goes into log lines, thread names and metrics).
MAX_NAME = 100


def _number(name: str, value: Any, *, minimum: float, allow_none: bool = False,
            integer: bool = False, strict: bool = False,
            maximum: float | None = None) -> Any:
    if value is None and allow_none:
        return None
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an integer" if integer else "a number"
        raise ConfigError(name, f"must be {kind}{' or None' if allow_none else ''}, "
                                f"got {type(value).__name__}")
    if not integer and not math.isfinite(value):
        raise ConfigError(name, f"must be finite, got {value!r}")
    if value < minimum or (strict and value == minimum):
        rel = ">" if strict else ">="
        raise ConfigError(name, f"must be {rel} {minimum}, got {value!r}")
    if maximum is None:
        maximum = MAX_SIZE if integer else MAX_SECONDS
    if value > maximum:
        raise ConfigError(name, f"must be <= {maximum:g}, got {value!r}")
    return value


def check_timeout(name: str, value: Any) -> float | None:
    """A per-call timeout (``getconn(timeout=...)``): None or seconds in [0, MAX_SECONDS]."""
    result: float | None = _number(name, value, minimum=0, allow_none=True)
    return result


def check_name(value: Any) -> str:
    """A pool name: printable text of at most :data:`MAX_NAME` characters (it is written
    into log lines as is, so a newline or control character could forge one)."""
    if not isinstance(value, str):
        raise ConfigError("name", f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_NAME:
        raise ConfigError("name", f"must be at most {MAX_NAME} characters, got {len(value)}")
    if not value.isprintable():
        raise ConfigError("name", f"must be printable (no newline or control character), "
                                  f"got {value!r}")
    return value


def _callable(name: str, value: Any, allow_none: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if not callable(value):
        raise ConfigError(name, f"must be callable, got {type(value).__name__}")
    return value


def make_config(**opts: Any) -> PoolConfig:
    """Validate every option once and return the frozen config.

    Raises :class:`~mssql_pool.errors.ConfigError` (a ``ValueError``) naming the
    offending parameter.
    """
    known = {f.name for f in fields(PoolConfig)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ConfigError(unknown[0], "unknown option")
    o = dict(opts)
    conninfo, connect = o.get("conninfo"), o.get("connect")
    if (conninfo is None) == (connect is None):
        raise ConfigError("conninfo", "give exactly one of conninfo (URL, mapping or callable) "
                                      "or connect= (a zero-argument factory)")
    if conninfo is not None and not isinstance(conninfo, (str, Mapping)) and not callable(conninfo):
        raise ConfigError("conninfo", f"expected a URL, a mapping or a callable, "
                                      f"got {type(conninfo).__name__}")
    if isinstance(conninfo, (str, Mapping)):
        parse_conninfo(conninfo)   # every connection parameter checked now, not at connect
    _callable("connect", connect)
    min_size = _number("min_size", o.get("min_size", 1), minimum=0, integer=True)
    max_size = o.get("max_size", 10)
    if max_size is None:
        max_size = max(min_size, 10)
    max_size = _number("max_size", max_size, minimum=1, integer=True)
    if max_size < min_size:
        raise ConfigError("max_size", f"must be >= min_size ({min_size}), got {max_size}")
    o["min_size"], o["max_size"] = min_size, max_size
    _number("timeout", o.get("timeout", 30.0), minimum=0)
    _number("max_waiting", o.get("max_waiting", 0), minimum=0, integer=True)
    _number("max_idle", o.get("max_idle", 600.0), minimum=0, strict=True, allow_none=True)
    _number("max_lifetime", o.get("max_lifetime", 3600.0), minimum=0, strict=True,
            allow_none=True)
    _number("keepalive", o.get("keepalive"), minimum=0, strict=True, allow_none=True)
    _number("validate_after", o.get("validate_after", 0.5), minimum=0)
    _number("leak_timeout", o.get("leak_timeout"), minimum=0, strict=True, allow_none=True)
    _number("reconnect_timeout", o.get("reconnect_timeout", 300.0), minimum=0)
    _number("maintenance_interval", o.get("maintenance_interval", 1.0), minimum=0, strict=True,
            maximum=3600.0)
    for option in ("configure", "reconnect_failed"):
        _callable(option, o.get(option))
    for option in ("clock", "sleep", "random"):
        if option in o:
            _callable(option, o[option], allow_none=False)
    check = o.get("check", "SELECT 1")
    if check is not None and not callable(check):
        if not isinstance(check, str) or not check.strip():
            raise ConfigError("check", "must be SQL text, a callable or None")
    reset = o.get("reset", "auto")
    if not callable(reset) and reset not in RESET_MODES:
        raise ConfigError("reset", f"must be one of {RESET_MODES} or a callable, got {reset!r}")
    if not isinstance(o.get("background", True), bool):
        raise ConfigError("background", "must be True or False")
    name: Any = o.get("name")
    if name is None or name == "":
        o["name"] = f"pool-{next(_names)}"
    else:
        check_name(name)
    o.update(endpoint_options(o))
    _guard_options(o)
    _listeners_option(o)
    return PoolConfig(**o)


def _listeners_option(o: dict[str, Any]) -> None:
    """Validate ``listeners``: callables or ``(fn, kinds)`` pairs, kinds known."""
    if "listeners" in o:
        from .events import listener_pairs

        o["listeners"] = listener_pairs(o["listeners"])


def _guard_options(o: dict[str, Any]) -> None:
    """Validate ``connect_policy``, ``circuit_breaker`` and ``circuit_wait``."""
    from .breaker import CircuitBreaker
    from .retry import RetryPolicy

    policy = o.get("connect_policy", "auto")
    if not (isinstance(policy, RetryPolicy) or policy is None or policy == "auto"):
        raise ConfigError("connect_policy",
                          f"must be a RetryPolicy, 'auto' or None, got {policy!r}")
    breaker = o.get("circuit_breaker", "auto")
    if isinstance(breaker, Mapping):
        try:
            CircuitBreaker(**breaker)     # its own checks name the bad argument
        except ConfigError as exc:
            raise exc.nested("circuit_breaker") from None
        except TypeError as exc:
            raise ConfigError("circuit_breaker", str(exc)) from None
        o["circuit_breaker"] = dict(breaker)
    elif not (isinstance(breaker, CircuitBreaker) or breaker is None or breaker == "auto"):
        raise ConfigError("circuit_breaker",
                          f"must be a CircuitBreaker, a mapping of its arguments, 'auto' or "
                          f"None, got {breaker!r}")
    if not isinstance(o.get("circuit_wait", False), bool):
        raise ConfigError("circuit_wait", f"must be True or False, got {o['circuit_wait']!r}")
