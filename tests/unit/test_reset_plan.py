"""The reset decision is a named value (:class:`mssql_pool.reset.Reset`), not a bare int."""

from __future__ import annotations

import pytest

from mssql_pool.reset import DISCARD, SESSION, WORK, Reset, plan


@pytest.mark.parametrize(("flags", "mode", "expected"), [
    (0, "auto", Reset.NONE),
    (WORK, "auto", Reset.ROLLBACK),
    (WORK | SESSION, "auto", Reset.FULL),
    (0, "full", Reset.FULL),
    (WORK, "rollback", Reset.ROLLBACK),
    (0, "rollback", Reset.NONE),
    (WORK, print, Reset.CALLBACK),
    (0, print, Reset.NONE),
])
def test_plan_names_its_decision(flags: int, mode: object, expected: Reset) -> None:
    decision = plan(flags, mode)  # type: ignore[arg-type]
    assert decision is expected
    assert repr(decision) == repr(expected)   # a log line or a debugger shows the name
    assert decision.name in {"NONE", "ROLLBACK", "FULL", "CALLBACK"}


def test_plan_gives_a_reason_instead_of_a_decision_to_discard() -> None:
    assert isinstance(plan(DISCARD, "auto"), str)
    assert isinstance(plan(SESSION, "rollback"), str)

