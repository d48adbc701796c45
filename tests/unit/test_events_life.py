"""life_errors: the checker of "every connection's events form a valid life".

Valid logs are generated as random walks over a connection's life (connect, then
checkouts, resets and checkins, ended or not by a cause and its discard), several
connections interleaved at random; the checker must accept every one. Each invalid log
is a valid one with one defect put in (a checkout after the discard, a missing connect, a
second connect, a checkin while idle, an unknown discard reason); the checker must name
it. The same checker is applied to recorded logs of real pool runs elsewhere.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mssql_pool.events import DISCARD_REASONS, EventKind, PoolEvent, life_errors

K = EventKind
# a connection's walk: state -> [(kind, reason, next state)]
IDLE_STEPS = [
    (K.CHECKOUT, None, "busy"),
    (K.CHECK_FAILED, "check_failed", "end"),
    (K.KEEPALIVE_FAILED, "keepalive_failed", "end"),
    (K.REAP_IDLE, "idle", "end"),
    (K.RETIRE_LIFETIME, "lifetime", "end"),
    (K.DISCARD, "pool_closed", "gone"),
    (K.DISCARD, "drained", "gone"),
]
BUSY_STEPS = [
    (K.RESET, None, "busy"),
    (K.LEAK_SUSPECTED, None, "busy"),
    (K.CHECKIN, None, "idle"),
    (K.DISCARD, "dead", "gone"),
    (K.DISCARD, "reset_failed", "gone"),
    (K.RETIRE_LIFETIME, "lifetime", "end"),
]


def ev(kind: EventKind, conn_id: int | None, reason: str | None = None) -> PoolEvent:
    return PoolEvent(kind, 0.0, 0.0, "p", conn_id=conn_id, reason=reason)


@st.composite
def life(draw: Any, conn_id: int) -> tuple[list[PoolEvent], bool]:
    """One connection's events, and whether its life ended (discarded)."""
    out = [ev(K.CONNECT, conn_id)]
    state = "idle"
    for _ in range(draw(st.integers(0, 12))):
        steps = IDLE_STEPS if state == "idle" else BUSY_STEPS
        kind, reason, state = draw(st.sampled_from(steps))
        out.append(ev(kind, conn_id, None if kind is not K.DISCARD else reason))
        if state == "end":                       # the cause, then its discard
            out.append(ev(K.DISCARD, conn_id, reason))
            state = "gone"
        if state == "gone":
            return out, True
    return out, False


@st.composite
def valid_log(draw: Any) -> tuple[list[PoolEvent], list[bool]]:
    n = draw(st.integers(1, 5))
    lives = [draw(life(i + 1)) for i in range(n)]
    queues = [list(events) for events, _ in lives]
    # interleave, keeping each connection's order; pool-wide events in between
    log: list[PoolEvent] = []
    while any(queues):
        i = draw(st.sampled_from([j for j, q in enumerate(queues) if q]))
        log.append(queues[i].pop(0))
        if draw(st.booleans()) and draw(st.booleans()):
            log.append(ev(draw(st.sampled_from([K.FAILOVER, K.RETRY_ATTEMPT,
                                                K.CONNECT_FAILED])), None))
    return log, [ended for _, ended in lives]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(valid_log())
def test_every_generated_valid_life_is_accepted(case: Any) -> None:
    log, ended = case
    assert life_errors(log) == []
    unfinished = [i + 1 for i, e in enumerate(ended) if not e]
    errors = life_errors(log, complete=True)
    assert [int(e.split("#")[1].split()[0]) for e in errors] == unfinished


def _insert(log: list[PoolEvent], at: int, event: PoolEvent) -> list[PoolEvent]:
    return [*log[:at], event, *log[at:]]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(valid_log(), st.sampled_from(["checkout_after_discard", "missing_connect",
                                     "second_connect", "checkin_while_idle",
                                     "bad_reason"]), st.data())
def test_every_defect_put_into_a_valid_life_is_found(case: Any, defect: str,
                                                     data: Any) -> None:
    log, ended = case
    ids = sorted({e.conn_id for e in log if e.conn_id is not None})
    cid = data.draw(st.sampled_from(ids))
    mine = [i for i, e in enumerate(log) if e.conn_id == cid]
    if defect == "checkout_after_discard":
        discarded = [c for c in ids if ended[c - 1]]
        if not discarded:
            return
        cid = data.draw(st.sampled_from(discarded))
        last = max(i for i, e in enumerate(log) if e.conn_id == cid)
        at = data.draw(st.integers(last + 1, len(log)))
        bad = _insert(log, at, ev(K.CHECKOUT, cid))
        expect = f"checkout of connection #{cid} while discarded"
    elif defect == "missing_connect":
        bad = [e for i, e in enumerate(log) if i != mine[0]]
        if len(mine) == 1:   # nothing left of it to complain about
            assert life_errors(bad) == []
            return
        expect = f"of connection #{cid} while new"
    elif defect == "second_connect":
        at = data.draw(st.integers(mine[0] + 1, len(log)))
        bad = _insert(log, at, ev(K.CONNECT, cid))
        expect = f"connect of connection #{cid} while "
    elif defect == "checkin_while_idle":
        bad = _insert(log, mine[0] + 1, ev(K.CHECKIN, cid))   # right after its connect
        expect = f"checkin of connection #{cid} while idle"
    else:
        discards = [i for i in mine if log[i].kind is K.DISCARD]
        if not discards:
            return
        bad = list(log)
        bad[discards[0]] = ev(K.DISCARD, cid, "because")
        expect = f"discard of connection #{cid} with unknown reason 'because'"
    errors = life_errors(bad)
    assert any(expect in e for e in errors), (expect, errors)


def test_hand_written_lives() -> None:
    good = [ev(K.CONNECT, 1), ev(K.CHECKOUT, 1), ev(K.RESET, 1), ev(K.CHECKIN, 1),
            ev(K.CHECKOUT, 1), ev(K.RETIRE_LIFETIME, 1), ev(K.DISCARD, 1, "lifetime"),
            ev(K.CONNECT, 2), ev(K.CHECK_FAILED, 2), ev(K.DISCARD, 2, "check_failed")]
    assert life_errors(good) == [] and life_errors(good, complete=True) == []
    bad = [ev(K.CONNECT, 1), ev(K.DISCARD, 1, "dead"), ev(K.CHECKOUT, 1),
           ev(K.CHECKOUT, 2), ev(K.CONNECT, 3), ev(K.CHECKOUT, 3), ev(K.CHECKOUT, 3),
           ev(K.CONNECT, 4), ev(K.REAP_IDLE, 4), ev(K.CHECKOUT, 4)]
    assert life_errors(bad) == [
        "event 2: checkout of connection #1 while discarded",
        "event 3: checkout of connection #2 while new",
        "event 6: checkout of connection #3 while busy",
        "event 9: checkout of connection #4 while closing",
    ]
    assert life_errors(bad, complete=True)[-2:] == [
        "connection #3 never discarded (last busy)",
        "connection #4 never discarded (last closing)",
    ]
    assert "pool_closed" in DISCARD_REASONS and "other" in DISCARD_REASONS
