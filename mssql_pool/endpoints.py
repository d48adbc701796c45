"""Where connections go: primary, failover partners, Azure redirects, per-endpoint circuits.

A pool built from ``conninfo`` dials through one :class:`EndpointRouter`. Its job, at
each new connection:

1. **Order and stickiness.** The endpoints are tried in order, starting with the one
   that answered last (the *current* endpoint): once a failover partner has taken over,
   the pool stays on it while it works, even if the primary comes back (no flapping).
   Only when the current endpoint fails are the others tried again, in configured order.
2. **Per-endpoint failure state.** Each endpoint has its own
   :class:`~mssql_pool.breaker.CircuitBreaker`: after a few consecutive failures a dead
   endpoint is skipped without a login (fast) until its next probe is due, so a dead
   primary costs one probe per interval, not one login timeout per connect. A login
   refused with a throttling hint (10928, 10929, 40501: "retry after N s") holds the
   endpoint for that long. When every endpoint is skipped, connecting fails fast with
   :class:`~mssql_pool.errors.CircuitOpenError` naming the endpoint and the next probe.
3. **Azure redirects.** Azure SQL's gateway answers a login with a routing ENVCHANGE that
   sends the client to the node holding the database; FreeTDS (so pymssql) follows
   exactly one such hop by itself. pymssql does not expose the routing token, but
   FreeTDS names the address it dialled in its messages: ``(host)`` for the address it
   was given, ``(host,port)`` for an address it was routed to. From that:

   * the routed-to node refused or timed out (``20009``/``20003`` at a routed address):
     the node went away (failover). The error stays what it is (a disconnect, retried),
     and the next attempt dials the *gateway* again, which routes to the new node;
   * the routed-to node did not complete the login and FreeTDS reports nothing but
     ``20002 ... connection failed (host,port)``: a second routing hop, or a routing
     loop when that address is the endpoint itself. The attempt is repeated once to
     rule out a node that closed while failing over; if it happens again,
     :class:`~mssql_pool.errors.RedirectError` says so (with ``hops``) instead of a bare
     20002. A node that accepts and closes the connection without a word looks exactly
     the same to FreeTDS; the message says that too.

   With failover partners, several servers or ``read_only=True`` the login must carry
   TDS 7.4 or later and the database name (routing needs both: ``check_login_kwargs``
   refuses anything else); a single server is spoken to at the version the user chose
   (7.4 when none is given), and
   ``read_only=True`` sets the LOGIN7 read-only intent flag (pymssql >= 2.2.8
   ``read_only``; FreeTDS sends ApplicationIntent=ReadOnly), which Always On listeners
   use to route to a readable secondary.
4. **Where did it land?** With ``identify`` on (the default when several endpoints are
   configured or the host is an Azure SQL gateway) each new connection asks the server
   once ``SELECT @@SERVERNAME`` plus, where supported, ``CONNECTIONPROPERTY`` of the
   local address and port. The answer is the connection's *node*
   (:class:`Landing`); a port different from the dialled one means the login was
   redirected; a node different from the endpoint's previous one means the database
   moved (a failover), logged at INFO.

Counters (merged into ``pool.get_stats()``): ``redirects`` (new connections found to
have been routed elsewhere), ``failovers`` (the pool moved: to another endpoint because
the current one failed, or to another node behind the same endpoint),
``endpoint_switches`` (the current endpoint changed), ``redirect_errors``
(:class:`RedirectError` raised), ``connects_rejected`` (connect attempts refused
without a login: open circuit or throttling hold).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._driver import routed_address
from ._dsn import redact
from ._fork import ForkRegistry
from .breaker import CircuitBreaker
from .classify import ErrorKind, classify
from .errors import CircuitOpenError, ConfigError, RedirectError
from .events import EventKind, error_info

if TYPE_CHECKING:
    from .events import EventBus

__all__ = [
    "Endpoint",
    "EndpointRouter",
    "Landing",
    "DEFAULT_ENDPOINT_BREAKER",
    "FAILOVER_NUMBERS",
    "IDENTIFY_SQL",
    "AZURE_GATEWAY_SUFFIXES",
    "ENDPOINT_COUNTERS",
    "is_failover_error",
    "routed_address",
]

logger = logging.getLogger("mssql_pool.endpoints")

#: Circuit breaker settings per endpoint (``endpoint_breaker="auto"``, the default;
#: a mapping or a factory overrides them, None turns circuits off): three consecutive
#: failures open it; probes every 0.25 s, doubling up to 1 s: at most one login per second
#: per endpoint during a long outage, and recovery within a second of the server's return.
#: Without it, a pool whose server is down dials as fast as its callers can fail (about
#: 2000 refused logins per second with 8 threads in the recovery matrix).
DEFAULT_ENDPOINT_BREAKER: Mapping[str, Any] = MappingProxyType(
    {"failure_threshold": 3, "reset_timeout": 0.25, "max_reset_timeout": 1.0}
)

#: Errors that say the database is moving or moved (beyond disconnects and severity >= 20,
#: which already end a connection): a connection that sees one makes every older
#: connection suspect, so the pool converges on the new primary in one pass.
FAILOVER_NUMBERS: frozenset[int] = frozenset(
    {40613, 40197, 40501, 40143, 40540, 4060, 4221, 615, 926}
)

#: Host name suffixes of Azure SQL gateways (identify is on by default for them).
AZURE_GATEWAY_SUFFIXES: tuple[str, ...] = (
    ".database.windows.net", ".database.chinacloudapi.cn", ".database.usgovcloudapi.net",
    ".database.cloudapi.de", ".sql.azuresynapse.net", ".database.fabric.microsoft.com",
)

#: The identification query: server name, the node's address and port (SQL Server), and
#: the session id (for events and server-side correlation).
IDENTIFY_SQL = ("SELECT CONVERT(nvarchar(128), @@SERVERNAME), "
                "CONVERT(nvarchar(48), CONNECTIONPROPERTY('local_net_address')), "
                "CONVERT(int, CONNECTIONPROPERTY('local_tcp_port')), @@SPID")
_IDENTIFY_FALLBACK = "SELECT @@SERVERNAME"

#: Counter keys merged into ``pool.get_stats()``.
ENDPOINT_COUNTERS = ("redirects", "failovers", "endpoint_switches", "redirect_errors",
                     "connects_rejected")

_MIN_TDS = (7, 4)

BreakerSpec = Mapping[str, Any] | Callable[["Endpoint"], CircuitBreaker] | None
IdentifySpec = bool | str | Callable[[Any], "str | None"] | None


# --------------------------------------------------------------------------- Endpoint


@dataclass(frozen=True)
class Endpoint:
    """One address the pool may dial: ``host`` and an optional TCP ``port``.

    Accepted spellings (:meth:`parse`): ``"host"``, ``"host:1433"``, ``"host,1433"``
    (SQL Server's own), ``"tcp:host,1433"`` (Azure connection strings),
    ``"[::1]:1433"``, ``("host", 1433)``. ``str()`` gives ``host:port``.
    """

    host: str
    port: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError("servers", f"an endpoint needs a host name, got {self.host!r}")
        if self.port is not None and (
            isinstance(self.port, bool) or not isinstance(self.port, int)
            or not 0 < self.port < 65536
        ):
            raise ConfigError("servers", f"port must be an int in 1..65535, got {self.port!r}")

    @classmethod
    def parse(cls, value: object, parameter: str = "servers") -> Endpoint:
        """An :class:`Endpoint` from one of the accepted spellings (ConfigError otherwise)."""
        if isinstance(value, Endpoint):
            return value
        try:
            if isinstance(value, tuple) and len(value) == 2:
                host, port = value
                return cls(str(host), None if port is None else int(port))
            if isinstance(value, str):
                return cls(*_split_host_port(value))
        except ConfigError as exc:
            raise ConfigError(parameter, str(exc).split(": ", 1)[-1]) from None
        except (TypeError, ValueError):
            pass
        raise ConfigError(parameter, f"expected 'host', 'host:port', 'host,port' or "
                                     f"(host, port), got {value!r}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Endpoint:
        """The endpoint a ``pymssql.connect`` argument set names (server and port)."""
        host, port = _split_host_port(str(kwargs.get("server") or ""))
        if kwargs.get("port") not in (None, ""):
            try:
                port = int(kwargs["port"])
            except (TypeError, ValueError):
                raise ConfigError("conninfo.port", f"expected an integer, "
                                                   f"got {kwargs['port']!r}") from None
        return cls(host, port)

    def apply(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` aimed at this endpoint: ``server`` is the host, ``port`` separate.

        (FreeTDS prints a routed address as ``(host,port)`` and a given one as ``(host)``
        only while the port is passed on its own; redirect detection relies on it.)
        """
        out = dict(kwargs)
        out["server"] = self.host
        if self.port is not None:
            out["port"] = str(self.port)
        return out

    @property
    def is_azure_gateway(self) -> bool:
        return self.host.lower().endswith(AZURE_GATEWAY_SUFFIXES)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def _split_host_port(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.lower().startswith("tcp:"):
        text = text[4:]
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        rest = rest.lstrip(":,")
        return host, int(rest) if rest else None
    for sep in (",", ":"):
        if text.count(sep) == 1:
            host, port = text.split(sep)
            return host.strip(), int(port) if port.strip() else None
    return text, None


@dataclass(frozen=True)
class Landing:
    """Where one connection landed (``conn.landing``; ``None`` for ``connect=`` pools).

    ``endpoint`` is the address dialled; ``node`` what the server said about itself
    (``@@SERVERNAME``, plus ``address:port`` where ``CONNECTIONPROPERTY`` answers), None
    when identification is off or failed; ``redirected`` True/False when the node's
    port tells, None when unknown; ``at`` the pool clock's time of the connect;
    ``spid`` the server session id, when identification asked for it; ``switched``
    True when new connections go first to this endpoint from now on (counted in
    ``endpoint_switches``), ``switched_from`` where they went until then.
    """

    endpoint: Endpoint
    node: str | None = None
    redirected: bool | None = None
    at: float = 0.0
    spid: int | None = None
    switched: bool = False
    switched_from: Endpoint | None = None

    def __str__(self) -> str:
        via = "" if self.node is None else f" -> {self.node}"
        return f"{self.endpoint}{via}"


# --------------------------------------------------------------------------- errors


def is_failover_error(exc: BaseException) -> bool:
    """True for errors that say the database is moving (see :data:`FAILOVER_NUMBERS`)."""
    info = classify(exc)
    return not FAILOVER_NUMBERS.isdisjoint(info.numbers)


# --------------------------------------------------------------------------- EndpointRouter


class _State:
    """Per-endpoint state (under the router's lock, except the breaker's own)."""

    __slots__ = ("endpoint", "breaker", "hold_until", "hold_for", "hold_error", "node",
                 "connects",
                 "failures", "last_error", "redirected")

    def __init__(self, endpoint: Endpoint, breaker: CircuitBreaker | None) -> None:
        self.endpoint = endpoint
        self.breaker = breaker
        self.hold_until = 0.0
        self.hold_for = 0.0
        self.hold_error: BaseException | None = None
        self.node: str | None = None
        self.connects = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self.redirected: bool | None = None


class EndpointRouter:
    """The ordered endpoints of one pool, with sticky choice and per-endpoint circuits.

    ``endpoints`` lists fixed endpoints in order (primary first). With
    ``primary_from_conninfo=True`` the primary is whatever the resolved conninfo names at
    each connect (a callable conninfo may change it) and ``endpoints`` are its failover
    partners. ``breaker`` is a mapping of :class:`CircuitBreaker` arguments, a callable
    ``endpoint -> CircuitBreaker``, or None (no circuits). ``identify`` is True/False,
    SQL text, a callable ``raw_conn -> str | None``, or None (auto: on with more than one
    endpoint or an Azure gateway host). ``read_only`` asks for read-only intent.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint] = (),
        *,
        primary_from_conninfo: bool = False,
        breaker: BreakerSpec = DEFAULT_ENDPOINT_BREAKER,
        identify: IdentifySpec = None,
        read_only: bool = False,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        if not endpoints and not primary_from_conninfo:
            raise ConfigError("servers", "at least one endpoint is needed")
        self.name = name
        self.read_only = read_only
        self._clock = clock
        self._breaker_spec = breaker
        self._identify = identify
        self._identify_sql: str | None = identify if isinstance(identify, str) else None
        self._dynamic = primary_from_conninfo
        self._lock = threading.Lock()
        self._fixed: tuple[Endpoint, ...] = tuple(endpoints)
        self._states: dict[Endpoint, _State] = {}
        self._primary: Endpoint | None = None if primary_from_conninfo else self._fixed[0]
        self._current: Endpoint | None = self._primary
        self._counters = dict.fromkeys(ENDPOINT_COUNTERS, 0)
        #: Where ``failover``, ``redirect`` and the circuits' events go (the pool's bus).
        self.events: EventBus | None = None
        for ep in self._fixed:
            self._state(ep)
        _instances.add(self)

    def bind_events(self, bus: EventBus | None) -> None:
        """Emit ``failover`` and ``redirect`` to ``bus``, and every endpoint circuit's
        transitions (circuits made later are bound when made)."""
        self.events = bus
        with self._lock:
            states = list(self._states.values())
        for st in states:
            self._bind_breaker(st.breaker, st.endpoint)

    def _bind_breaker(self, breaker: CircuitBreaker | None, ep: Endpoint) -> None:
        if breaker is not None and self.events is not None and breaker.events is None:
            breaker.events = self.events
            if breaker.endpoint is None:
                breaker.endpoint = str(ep)

    # -- observation ------------------------------------------------------------------

    @property
    def current(self) -> Endpoint | None:
        """The endpoint new connections try first (the last one that answered)."""
        return self._current

    @property
    def primary(self) -> Endpoint | None:
        return self._primary

    def order(self) -> list[Endpoint]:
        """Every known endpoint in configured order (primary first)."""
        with self._lock:
            return self._order_locked()

    def breaker(self, endpoint: Endpoint | str) -> CircuitBreaker | None:
        """The circuit breaker of ``endpoint`` (None when circuits are off)."""
        ep = Endpoint.parse(endpoint, "endpoint")
        with self._lock:
            st = self._states.get(ep)
        return None if st is None else st.breaker

    def counters(self, reset: bool = False) -> dict[str, int]:
        with self._lock:
            out = dict(self._counters)
            if reset:
                self._counters = dict.fromkeys(ENDPOINT_COUNTERS, 0)
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per endpoint: ``endpoint``, ``current``, ``state`` (circuit),
        ``node`` (last seen), ``redirected``, ``connects``, ``failures``,
        ``held_for`` (s of throttling hold left), ``last_error`` (redacted text)."""
        now = self._clock()
        with self._lock:
            states = [self._states[ep] for ep in self._order_locked()]
            current = self._current
        out = []
        for st in states:
            br = st.breaker
            out.append({
                "endpoint": str(st.endpoint),
                "current": st.endpoint == current,
                "state": br.state.value if br is not None else "none",
                "node": st.node,
                "redirected": st.redirected,
                "connects": st.connects,
                "failures": st.failures,
                "held_for": max(0.0, st.hold_until - now),
                "last_error": None if st.last_error is None else redact(st.last_error),
            })
        return out

    def __repr__(self) -> str:
        eps = ", ".join(str(ep) + ("*" if ep == self._current else "") for ep in self.order())
        return f"<EndpointRouter {self.name!r} [{eps}]>"

    # -- connecting ----------------------------------------------------------------------

    def connect(self, kwargs: Mapping[str, Any],
                dial: Callable[..., Any]) -> tuple[Any, Landing]:
        """Open one connection: ``dial(**kwargs_for_endpoint)`` on each candidate in turn.

        Returns ``(raw_connection, landing)``. Raises the last endpoint's error when all
        failed, :class:`CircuitOpenError` when every endpoint was skipped (open circuit or
        throttling hold), :class:`RedirectError` for a second routing hop or a loop, and
        an auth or configuration error at once (another endpoint would not help).
        """
        kwargs = self._login_kwargs(kwargs)
        with self._lock:
            if self._dynamic:
                self._set_primary_locked(Endpoint.from_kwargs(kwargs))
            candidates = self._candidates_locked()
            previous = self._current
        failed: list[tuple[Endpoint, BaseException]] = []
        skipped: list[CircuitOpenError] = []
        for ep in candidates:
            st = self._state(ep)
            refusal = self._permit(st)
            if refusal is not None:
                skipped.append(refusal)
                continue
            try:
                raw = self._dial_once(st, kwargs, dial)
            except Exception as exc:
                if st.breaker is not None:
                    # An auth/programming failure proves the server answered.
                    if _endpoint_healthy(exc):
                        st.breaker.record_success()
                    else:
                        st.breaker.record_failure(exc)
                if _endpoint_healthy(exc) or isinstance(exc, ConfigError):
                    raise
                failed.append((ep, exc))
                continue
            if st.breaker is not None:
                st.breaker.record_success()
            try:
                landing = self._landed(st, raw, previous, failed, skipped)
            except Exception as exc:       # died while identifying itself: not a keeper
                _close_quietly(raw)
                self._failed(st, exc)
                failed.append((ep, exc))
                continue
            return raw, landing
        self._rejected(skipped)
        redirect = next((e for _, e in failed if isinstance(e, RedirectError)), None)
        if redirect is not None:
            raise redirect
        if failed:
            for ep, err in failed[:-1]:
                logger.warning("pool %r: endpoint %s failed: %s", self.name, ep, redact(err))
            raise failed[-1][1]
        soonest = min(skipped, key=lambda e: e.retry_at)
        if len(skipped) > 1:
            names = ", ".join(str(e.endpoint) for e in skipped)
            raise CircuitOpenError(
                f"every endpoint is unavailable ({names}); next probe in "
                f"{soonest.retry_in:.2f}s; {soonest}", last_error=soonest.last_error,
                retry_at=soonest.retry_at, retry_in=soonest.retry_in,
                endpoint=soonest.endpoint)
        raise soonest

    def _rejected(self, skipped: list[CircuitOpenError]) -> None:
        """Count (and tell) the endpoints a failed connect skipped without a login."""
        with self._lock:
            self._counters["connects_rejected"] += len(skipped)
        bus = self.events
        if bus is not None:
            for refusal in skipped:
                bus.emit(EventKind.CONNECT_REJECTED, endpoint=str(refusal.endpoint),
                         delay=refusal.retry_in, error_info=error_info(refusal.last_error))

    def _login_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(kwargs)
        if self._fixed or self.read_only:
            # routing to partners and read-only routing need TDS 7.4; a single server
            # may be spoken to at the version the user chose
            check_login_kwargs(out, "conninfo")
        out.setdefault("tds_version", "7.4")
        if self.read_only:
            out["read_only"] = True
        return out

    def _permit(self, st: _State) -> CircuitOpenError | None:
        """None when ``st`` may be dialled now, else the error explaining why not."""
        now = self._clock()
        with self._lock:
            held = st.hold_error
            until = st.hold_until
            if held is not None and until <= now:
                # Throttled: one login per hint interval until one succeeds. This caller
                # goes; everyone else waits another interval.
                st.hold_until = now + st.hold_for
        if held is not None and until > now:
            wait = until - now
            return CircuitOpenError(
                f"endpoint {st.endpoint} asked for a pause before the next login "
                f"({wait:.2f}s left); last error: {_short(held)}",
                last_error=held, retry_at=until, retry_in=wait, endpoint=str(st.endpoint))
        if st.breaker is None:
            return None
        try:
            st.breaker.before_attempt()
        except CircuitOpenError as exc:
            exc.endpoint = str(st.endpoint)
            return exc
        return None

    def _dial_once(self, st: _State, kwargs: dict[str, Any], dial: Callable[..., Any]) -> Any:
        """One login at ``st`` (two when a bare routed 20002 needs confirming)."""
        ep = st.endpoint
        for attempt in (1, 2):
            try:
                return dial(**ep.apply(kwargs))
            except Exception as exc:
                err = self._translate(st, exc, confirmed=attempt == 2)
                if err is None:
                    continue        # a bare routed 20002: look once more
                self._failed(st, err)
                if err is exc:
                    raise
                raise err from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, st: _State, exc: BaseException,
                   confirmed: bool) -> BaseException | None:
        ep = st.endpoint
        address, bare = routed_address(exc)
        if address is None:
            return exc
        with self._lock:
            st.redirected = True
        routed = f"{address[0]}:{address[1]}"
        if not bare:
            logger.info("pool %r: %s routed the login to %s, which failed (%s); the next "
                        "attempt goes through %s again", self.name, ep, routed,
                        _short(exc), ep)
            return exc
        if not confirmed:
            return None
        loop = address[0] == ep.host and address[1] == (ep.port or 1433)
        what = ("a routing loop: the node routed the login back to " + str(ep)) if loop else \
            (f"{routed} routed the login again (a second hop) or closed the connection "
             "without a word")
        err = RedirectError(
            f"login through {ep} was routed to {routed}, which did not complete it: {what}. "
            "FreeTDS (and so pymssql) follows exactly one routing hop; fix the routing or "
            f"connect to the node directly (DB-Lib said only 20002 at {routed}, twice)",
            hops=(str(ep), routed))
        with self._lock:
            self._counters["redirect_errors"] += 1
        logger.warning("pool %r: %s", self.name, err)
        if self.events is not None:
            self.events.emit(EventKind.REDIRECT, endpoint=str(ep), node=routed,
                             error_info=error_info(err))
        return err

    def _failed(self, st: _State, exc: BaseException) -> None:
        info = classify(exc)
        now = self._clock()
        with self._lock:
            st.failures += 1
            st.last_error = exc
            if info.min_delay > 0 and info.kind is ErrorKind.THROTTLED:
                st.hold_until = max(st.hold_until, now + info.min_delay)
                st.hold_for = info.min_delay
                st.hold_error = exc
                logger.info("pool %r: %s throttled the login (%s); no login there for %.1fs",
                            self.name, st.endpoint, info.describe(), info.min_delay)

    def _landed(self, st: _State, raw: Any, previous: Endpoint | None,
                failed: list[tuple[Endpoint, BaseException]],
                skipped: list[CircuitOpenError]) -> Landing:
        ep = st.endpoint
        node, port, spid = self._identify_node(raw, ep)
        redirected = None if port is None else port != (ep.port or 1433)
        now = self._clock()
        moved_from = None
        with self._lock:
            st.connects += 1
            st.hold_error = None
            st.hold_until = 0.0
            if redirected is not None:
                st.redirected = redirected
                if redirected:
                    self._counters["redirects"] += 1
            if node is not None and st.node is not None and node != st.node \
                    and not self.read_only:
                moved_from = st.node
                self._counters["failovers"] += 1
            if node is not None:
                st.node = node
            switched = ep != self._current
            switched_from = self._current if switched else None
            if switched:
                self._counters["endpoint_switches"] += 1
                if previous is not None and (failed or skipped):
                    self._counters["failovers"] += 1
                self._current = ep
        bus = self.events
        if moved_from is not None:
            logger.info("pool %r: failover behind %s: now on node %s (was %s)", self.name, ep,
                        node, moved_from)
            if bus is not None:
                bus.emit(EventKind.FAILOVER, endpoint=str(ep), from_endpoint=str(ep),
                         to_endpoint=str(ep), node=node, reason=f"node was {moved_from}")
        if switched and previous is not None:
            why = "; ".join(f"{e}: {_short(x)}" for e, x in failed) or \
                "; ".join(str(x) for x in skipped) or "configuration"
            logger.info("pool %r: failover from %s to %s (%s)", self.name, previous, ep, why)
            if bus is not None and (failed or skipped):
                last = failed[-1][1] if failed else (skipped[-1] if skipped else None)
                bus.emit(EventKind.FAILOVER, endpoint=str(ep), from_endpoint=str(previous),
                         to_endpoint=str(ep), node=node, reason=why,
                         error_info=error_info(last))
        if redirected and bus is not None:
            bus.emit(EventKind.REDIRECT, endpoint=str(ep), node=node, spid=spid)
        return Landing(ep, node, redirected, now, spid, switched, switched_from)

    def _identify_node(self, raw: Any, ep: Endpoint
                       ) -> tuple[str | None, int | None, int | None]:
        """(node, its port, the session id) as far as identification tells."""
        spec = self._identify
        if spec is None:
            spec = len(self._fixed) + (1 if self._dynamic else 0) > 1 or ep.is_azure_gateway
        if spec is False:
            return None, None, None
        if callable(spec):
            try:
                found = spec(raw)
            except Exception as exc:
                logger.debug("pool %r: identify callable failed: %s", self.name, redact(exc))
                return None, None, None
            return (None if found is None else str(found)), None, None
        sql = self._identify_sql or IDENTIFY_SQL
        row = _query_row(raw, sql)
        if row is None and self._identify_sql is None:
            row = _query_row(raw, _IDENTIFY_FALLBACK)
            if row is not None:
                self._identify_sql = _IDENTIFY_FALLBACK
        elif row is not None and self._identify_sql is None:
            self._identify_sql = sql
        if not row:
            return None, None, None
        name = None if row[0] is None else str(row[0]).strip()
        addr = row[1] if len(row) > 1 else None
        port = row[2] if len(row) > 2 and isinstance(row[2], int) else None
        spid = row[3] if len(row) > 3 and isinstance(row[3], int) else None
        if addr is not None and port is not None:
            return f"{name} ({addr}:{port})", port, spid
        return name, port, spid

    # -- internals --------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """A forked child starts with fresh locks and circuits (a lock another thread of
        the parent held at fork time would never be released here)."""
        self._lock = threading.Lock()
        for st in self._states.values():
            st.breaker = self._make_breaker(st.endpoint)

    def _state(self, ep: Endpoint) -> _State:
        with self._lock:
            st = self._states.get(ep)
            if st is None:
                st = self._states[ep] = _State(ep, self._make_breaker(ep))
            return st

    def _make_breaker(self, ep: Endpoint) -> CircuitBreaker | None:
        spec = self._breaker_spec
        if spec is None:
            return None
        if callable(spec):
            made = spec(ep)
            if not isinstance(made, CircuitBreaker):
                raise ConfigError("endpoint_breaker", f"the factory must return a "
                                                      f"CircuitBreaker, got {made!r}")
            self._bind_breaker(made, ep)
            return made
        return CircuitBreaker(**dict(spec), clock=self._clock, name=f"{self.name} {ep}",
                              events=self.events, endpoint=str(ep))

    def _set_primary_locked(self, ep: Endpoint) -> None:
        if ep == self._primary:
            return
        old = self._primary
        self._primary = ep
        if self._current is None or self._current == old:
            self._current = ep
        if ep not in self._states:
            self._states[ep] = _State(ep, self._make_breaker(ep))

    def _order_locked(self) -> list[Endpoint]:
        eps = [] if self._primary is None else [self._primary]
        eps += [ep for ep in self._fixed if ep not in eps]
        return eps

    def _candidates_locked(self) -> list[Endpoint]:
        order = self._order_locked()
        cur = self._current
        if cur is None or cur not in order:
            return order
        return [cur, *[ep for ep in order if ep != cur]]


#: The router's old name (easy to confuse with :class:`Endpoint`, one address).
Endpoints = EndpointRouter

_instances: ForkRegistry[EndpointRouter] = ForkRegistry()


def _endpoint_healthy(exc: BaseException) -> bool:
    """Errors after which the endpoint is known to be up (and other endpoints won't help)."""
    if isinstance(exc, RedirectError):
        return False
    return classify(exc).kind in (ErrorKind.AUTH, ErrorKind.PROGRAMMING)


def _close_quietly(raw: Any) -> None:
    try:
        raw.close()
    except Exception:
        pass


def _query_row(raw: Any, sql: str) -> tuple[Any, ...] | None:
    cur = None
    try:
        cur = raw.cursor()
        cur.execute(sql)
        row = cur.fetchone()
        while cur.fetchone() is not None:  # drain
            pass
        return tuple(row) if row is not None else None
    except Exception as exc:
        if classify(exc).connection_dead:
            raise
        return None
    finally:
        if cur is not None:
            try:
                cur.close()
            except Exception:
                pass


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "none"
    from ._driver import short_text

    return short_text(redact(f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------- options


def check_login_kwargs(kwargs: Mapping[str, Any], parameter: str) -> None:
    """TDS 7.4 or later (routing needs it): raise ConfigError for an older version."""
    version = kwargs.get("tds_version")
    if version in (None, "", "auto"):
        return
    try:
        parts = tuple(int(p) for p in str(version).split("."))
    except ValueError:
        raise ConfigError(f"{parameter}.tds_version", f"not a version: {version!r}") from None
    if parts < _MIN_TDS:
        raise ConfigError(f"{parameter}.tds_version",
                          f"must be 7.4 or later for redirects and failover partners "
                          f"(Azure routing needs TDS 7.4), got {version!r}")


def endpoint_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the endpoint options of :func:`mssql_pool.config.make_config`.

    Returns the normalised values: ``servers`` and ``failover_partners`` as tuples of
    :class:`Endpoint`. Raises ConfigError naming the parameter.
    """
    out: dict[str, Any] = {}
    servers = opts.get("servers")
    partners = opts.get("failover_partners")
    connect = opts.get("connect")
    for name, value in (("servers", servers), ("failover_partners", partners)):
        if value is not None:
            out[name] = _endpoint_list(name, value)
    if servers is not None and partners is not None:
        raise ConfigError("failover_partners", "give either servers=[...] (every endpoint) or "
                                               "failover_partners=[...] (after conninfo's)")
    read_only = opts.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ConfigError("read_only", f"must be True or False, got {read_only!r}")
    identify = opts.get("identify")
    if identify is not None and not isinstance(identify, (bool, str)) and not callable(identify):
        raise ConfigError("identify", "must be True, False, None, SQL text or a callable")
    breaker = opts.get("endpoint_breaker", "auto")
    if breaker is not None and breaker != "auto" and not callable(breaker):
        out["endpoint_breaker"] = _breaker_arguments(breaker)
    wants = servers is not None or partners is not None or read_only
    if connect is not None and wants:
        which = "servers" if servers is not None else (
            "failover_partners" if partners is not None else "read_only")
        raise ConfigError(which, "needs conninfo (a URL, mapping or callable); a connect= "
                                 "factory chooses its own server")
    conninfo = opts.get("conninfo")
    if wants and isinstance(conninfo, (str, Mapping)):
        from ._dsn import parse_conninfo

        kwargs = parse_conninfo(conninfo)
        check_login_kwargs(kwargs, "conninfo")
        if not kwargs.get("database"):
            raise ConfigError("conninfo", "name the database (…/dbname in the URL): failover "
                                          "partners, Azure routing and read-only routing need "
                                          "it in the login")
    return out


def _endpoint_list(name: str, value: Any) -> tuple[Endpoint, ...]:
    """``servers=`` or ``failover_partners=``: a list of distinct endpoints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(name, f"must be a list of endpoints like ['host2:1433'], "
                                f"got {value!r}")
    eps = tuple(Endpoint.parse(v, name) for v in value)
    if name == "servers" and not eps:
        raise ConfigError(name, "must name at least one endpoint")
    if len(set(eps)) != len(eps):
        raise ConfigError(name, "lists an endpoint twice")
    return eps


def _breaker_arguments(breaker: Any) -> Mapping[str, Any]:
    """``endpoint_breaker=`` given as CircuitBreaker arguments: checked by building one."""
    if not isinstance(breaker, Mapping):
        raise ConfigError("endpoint_breaker", "must be 'auto', a mapping of "
                                              "CircuitBreaker arguments, a callable or None")
    try:
        CircuitBreaker(**dict(breaker))
    except ConfigError as exc:
        raise exc.nested("endpoint_breaker") from None
    except TypeError as exc:
        raise ConfigError("endpoint_breaker", str(exc)) from None
    return MappingProxyType(dict(breaker))


def make_endpoints(config: Any) -> EndpointRouter | None:
    """The :class:`EndpointRouter` of a pool's config (None for ``connect=`` pools)."""
    if config.conninfo is None:
        return None
    servers = config.servers
    breaker = config.endpoint_breaker
    if breaker == "auto":
        breaker = DEFAULT_ENDPOINT_BREAKER
    return EndpointRouter(
        servers if servers is not None else (config.failover_partners or ()),
        primary_from_conninfo=servers is None,
        breaker=breaker,
        identify=config.identify,
        read_only=config.read_only,
        clock=config.clock,
        name=config.name,
    )


def circuit_open(exc: BaseException) -> bool:
    """True for a fast failure without a login (nothing to warn about per attempt)."""
    return isinstance(exc, CircuitOpenError)
