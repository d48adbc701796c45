"""Command-line options shared by the whole test tree (keep this file minimal).

``--backend`` chooses where the real-server tests (tests/integration/realserver, marker
``realserver``) find a SQL Server: ``babelfish`` starts Babelfish for PostgreSQL through
its start script, ``testcontainers`` starts SQL Server, ``compose`` uses pytest-docker
with docker/docker-compose.yml, ``auto`` (the default) takes ``MSSQL_POOL_TEST_URL`` when
set, else Babelfish when its start script exists, else whichever of the other two works.
It is declared here, at the top of the test tree, so ``pytest --backend=...`` works from
the repository root.
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
