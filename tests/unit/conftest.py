"""Fixtures the unit tests share: the fake driver and the fake clock (tests/unit/fakedb.py).

A test module that needs a differently made driver (``FakeDB(pymssql_like=True)``)
overrides ``db`` in the module itself.
"""

from __future__ import annotations

import pytest
from fakedb import FakeClock, FakeDB


@pytest.fixture
def db() -> FakeDB:
    """A fresh fake DB-API driver: one server, every switch off."""
    return FakeDB()


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock that moves only when the test advances it."""
    return FakeClock()
