"""Command-line options shared by the whole test tree (keep this file minimal).

``--backend`` chooses where the real-server tests (tests/integration/realserver, marker
``realserver``) find a SQL Server: ``babelfish`` starts Babelfish for PostgreSQL through
its start script, ``testcontainers`` starts SQL Server, ``compose`` uses pytest-docker
with docker/docker-compose.yml, ``auto`` (the default) takes ``MSSQL_POOL_TEST_URL`` when
set, else Babelfish when its start script exists, else whichever of the other two works.
It is declared here, at the top of the test tree, so ``pytest --backend=...`` works from
the repository root. So is the one fixture every test needs: pymssql's process-wide query
timeout reset before each test.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="store",
        default="auto",
        choices=("auto", "babelfish", "testcontainers", "compose"),
        help="where real-server tests get SQL Server: auto (default), babelfish, "
        "testcontainers, compose; "
        "MSSQL_POOL_TEST_URL=mssql://user:pass@host:port/db names an existing server",
    )


@pytest.fixture(autouse=True)
def _no_inherited_query_timeout() -> None:
    """Every test starts with pymssql's default: no query timeout.

    pymssql's ``timeout`` is process-wide (FreeTDS's ``dbsettime``) and a ``connect()``
    without one leaves it as the last connection set it, so a test that connected with
    ``timeout=1`` (the recovery matrix's slow server) or ran the demo (2 s) gave that timeout
    to every later test's connections: a statement slowed by a loaded machine then failed
    with 20003 in whatever test came next. Setting ``query_timeout`` on a connection object
    that never connected calls ``dbsettime`` and nothing else."""
    from pymssql import _mssql

    _mssql.MSSQLConnection.__new__(_mssql.MSSQLConnection).query_timeout = 0
