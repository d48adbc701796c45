"""The TDS test server without sqlglot: it runs, says so at start, and errors say why.

sqlglot (the ``testing`` extra) translates T-SQL such as ``TOP`` for SQLite. Without it
the server must not degrade silently: a WARNING when it is created, and the reason in the
text of the errors that translation would have avoided. The import is made to fail with
``sys.modules["sqlglot"] = None``, which is what Python does for a missing module.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymssql
import pytest

from mssql_pool.testing import TdsServer, _translate

HINT = "sqlglot is not installed"


@pytest.fixture
def no_sqlglot(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "sqlglot", None)
    _translate.to_sqlite.cache_clear()      # translations made with sqlglot must not be reused
    yield
    _translate.to_sqlite.cache_clear()      # nor untranslated results after it


def _table() -> str:
    # a fresh name per test, so no cached plan of another test answers the statement
    return "t_" + uuid.uuid4().hex[:12]


def test_without_sqlglot_the_server_warns_at_start(
        no_sqlglot: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mssql_pool.testing")
    with TdsServer():
        pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "mssql_pool.testing.engine"]
    assert len(warnings) == 1, caplog.text
    assert "T-SQL translation is off" in warnings[0].getMessage()
    assert HINT in warnings[0].getMessage()


@contextmanager
def _one_row_table() -> Iterator[tuple[Any, str]]:
    """A fresh server with a fresh table holding (1, 10): a cursor on it, and its name."""
    t = _table()
    with TdsServer() as server:
        conn = pymssql.connect(**server.connect_kwargs(autocommit=True))
        try:
            cur = conn.cursor()
            cur.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY, n INT)")
            cur.execute(f"INSERT INTO {t} (id, n) VALUES (1, 10)")
            yield cur, t
        finally:
            conn.close()


def test_without_sqlglot_plain_sql_works_and_tsql_fails_saying_why(no_sqlglot: None) -> None:
    with _one_row_table() as (cur, t):
        cur.execute(f"SELECT n FROM {t} WHERE id = 1")
        assert cur.fetchall() == [(10,)]
        with pytest.raises(pymssql.ProgrammingError) as info:
            cur.execute(f"SELECT TOP 1 n FROM {t}")
        assert info.value.args[0] == 102
        assert HINT in info.value.args[1].decode()


def test_with_sqlglot_there_is_no_warning_and_tsql_is_translated(
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("sqlglot")
    caplog.set_level(logging.WARNING, logger="mssql_pool.testing")
    with _one_row_table() as (cur, t):
        cur.execute(f"SELECT TOP 1 n FROM {t}")
        assert cur.fetchall() == [(10,)]
    assert "translation is off" not in caplog.text
