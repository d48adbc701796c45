"""mssql_pool.otel: events become spans and span events (opentelemetry-sdk, in memory)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402

from mssql_pool.classify import classify  # noqa: E402
from mssql_pool.errors import ConfigError  # noqa: E402
from mssql_pool.events import EventBus, EventKind  # noqa: E402
from mssql_pool.otel import OtelBridge, instrument, uninstrument  # noqa: E402

WAIT = 10.0


@pytest.fixture
def traced() -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus = EventBus("orders")
    yield bus, provider, exporter
    bus.close()


def deadlock() -> Any:
    import pymssql

    return classify(pymssql.OperationalError(1205, b"deadlock victim"))


def test_a_checkout_that_waited_is_a_child_span_of_the_callers(traced: Any) -> None:
    bus, provider, exporter = traced
    instrument(bus, provider)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("request") as request:
        bus.emit(EventKind.CHECKOUT, conn_id=1, duration=0.0)      # fast path: no span
        ev = bus.emit(EventKind.CHECKOUT, conn_id=2, duration=0.25, reason="checked")
    assert bus.flush(WAIT) and ev is not None
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"request", "mssql_pool.checkout"}
    span = spans["mssql_pool.checkout"]
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id
    assert span.end_time - span.start_time == pytest.approx(0.25e9, abs=1e3)
    assert span.end_time == int(ev.wall * 1e9)
    attrs = dict(span.attributes or {})
    assert attrs["db.client.connection.pool.name"] == "orders"
    assert attrs["db.system.name"] == "microsoft.sql_server"
    assert attrs["mssql_pool.conn_id"] == 2 and attrs["mssql_pool.reason"] == "checked"


def test_min_wait_leaves_short_waits_out(traced: Any) -> None:
    bus, provider, exporter = traced
    instrument(bus, provider, min_wait=0.5)
    bus.emit(EventKind.CHECKOUT, conn_id=1, duration=0.25)
    bus.emit(EventKind.CHECKOUT, conn_id=1, duration=0.75)
    assert bus.flush(WAIT)
    assert [s.name for s in exporter.get_finished_spans()] == ["mssql_pool.checkout"]
    with pytest.raises(ConfigError, match="min_wait"):
        OtelBridge(provider, min_wait=-1)


def test_retries_and_lost_commits_are_error_spans(traced: Any) -> None:
    bus, provider, exporter = traced
    instrument(bus, provider)
    bus.emit(EventKind.RETRY_ATTEMPT, attempt=1, delay=0.05, duration=0.1,
             error_info=deadlock(), reason="transaction")
    bus.emit(EventKind.COMMIT_UNKNOWN, attempt=2, error_info=deadlock(), reason="raised")
    assert bus.flush(WAIT)
    retry, unknown = exporter.get_finished_spans()
    assert retry.name == "mssql_pool.retry_attempt"
    assert retry.status.status_code is StatusCode.ERROR
    attrs = dict(retry.attributes or {})
    assert attrs["error.type"] == "deadlock" and attrs["db.response.status_code"] == "1205"
    assert attrs["mssql_pool.attempt"] == 1 and attrs["mssql_pool.delay"] == 0.05
    assert unknown.name == "mssql_pool.commit_unknown"
    assert unknown.status.status_code is StatusCode.ERROR


def test_an_outage_is_one_reconnect_span_with_an_event_per_step(traced: Any) -> None:
    bus, provider, exporter = traced
    instrument(bus, provider)
    bus.emit(EventKind.RECONNECT_STARTED, endpoint="db1:1433")
    for n in (2, 3):
        bus.emit(EventKind.RECONNECT_ATTEMPT, attempt=n, delay=0.1)
    bus.emit(EventKind.CIRCUIT_OPENED, endpoint="db1:1433", attempt=3)
    bus.emit(EventKind.RECONNECT_FAILED, attempt=3, duration=30.0)
    bus.emit(EventKind.RECONNECT_SUCCEEDED, attempt=4, duration=31.0)
    bus.emit(EventKind.FAILOVER, from_endpoint="db1:1433", to_endpoint="db2:1433")
    assert bus.flush(WAIT)
    reconnect, failover = exporter.get_finished_spans()
    assert reconnect.name == "mssql_pool.reconnect" and reconnect.parent is None
    assert [e.name for e in reconnect.events] == [
        "reconnect_attempt", "reconnect_attempt", "circuit_opened", "reconnect_failed",
        "reconnect_succeeded"]
    assert reconnect.status.status_code is StatusCode.ERROR   # it took reconnect_failed
    assert dict(reconnect.attributes or {})["mssql_pool.attempts"] == 4
    assert failover.name == "mssql_pool.failover"             # outside the outage


def test_an_aborted_outage_ends_in_error_and_uninstrument_stops(traced: Any) -> None:
    bus, provider, exporter = traced
    bridge = instrument(bus, provider)
    bus.emit(EventKind.RECONNECT_STARTED)
    bus.emit(EventKind.RECONNECT_ABORTED, attempt=2)
    bus.emit(EventKind.RECONNECT_STARTED)
    assert bus.flush(WAIT)
    uninstrument(bus, bridge)           # ends the open one
    bus.emit(EventKind.RETRY_ATTEMPT, attempt=1)
    assert bus.flush(WAIT)
    first, second = exporter.get_finished_spans()
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["reconnect_aborted"]
    assert second.name == "mssql_pool.reconnect" and second.events == ()
    assert bus.listeners == ()


def test_failed_checkouts_and_failed_redirects_are_error_spans(traced: Any) -> None:
    bus, provider, exporter = traced
    instrument(bus, provider)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("request") as request:
        ev = bus.emit(EventKind.CHECKOUT_FAILED, reason="timeout", duration=2.0, wait=2.0)
    bus.emit(EventKind.REDIRECT, from_endpoint="gw:1433", to_endpoint="node:11000")
    bus.emit(EventKind.REDIRECT, from_endpoint="gw:1433", to_endpoint="node:11001",
             error_info=deadlock())
    assert bus.flush(WAIT) and ev is not None
    spans = [s for s in exporter.get_finished_spans() if s.name != "request"]
    failed, redirected, bad_redirect = spans
    assert failed.name == "mssql_pool.checkout"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "checkout_failed: timeout"
    assert failed.parent is not None
    assert failed.parent.span_id == request.get_span_context().span_id
    assert failed.end_time - failed.start_time == pytest.approx(2e9, abs=1e3)
    assert dict(failed.attributes or {})["mssql_pool.wait"] == 2.0
    assert redirected.name == bad_redirect.name == "mssql_pool.redirect"
    assert redirected.status.status_code is StatusCode.UNSET
    assert bad_redirect.status.status_code is StatusCode.ERROR


def test_a_rejected_connect_during_an_outage_is_an_event_of_its_span(traced: Any) -> None:
    bus, provider, exporter = traced
    instrument(bus, provider)
    bus.emit(EventKind.RECONNECT_STARTED)
    bus.emit(EventKind.CONNECT_REJECTED, endpoint="db1:1433", reason="circuit open")
    bus.emit(EventKind.RECONNECT_SUCCEEDED, attempt=2)
    assert bus.flush(WAIT)
    (outage,) = exporter.get_finished_spans()
    assert [e.name for e in outage.events] == ["connect_rejected", "reconnect_succeeded"]
