"""Command-line options shared by the whole test tree (keep this file minimal).

``--backend`` chooses where the real-server tests (tests/integration/realserver, marker
``realserver``) find a SQL Server: ``testcontainers`` starts one, ``compose`` uses
pytest-docker with docker/docker-compose.yml, ``auto`` (the default) takes
``MSSQL_POOL_TEST_URL`` when set, else whichever of the two works. It is declared here,
at the top of the test tree, so ``pytest --backend=...`` works from the repository root.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="store",
        default="auto",
        choices=("auto", "testcontainers", "compose"),
        help="where real-server tests get SQL Server: auto (default), testcontainers, compose; "
        "MSSQL_POOL_TEST_URL=mssql://user:pass@host:port/db names an existing server",
    )
