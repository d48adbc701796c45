"""Where the real-server tests get a SQL Server from.

Order of preference (``--backend``, declared in tests/conftest.py):

* ``MSSQL_POOL_TEST_URL`` (any backend): an existing server, e.g.
  ``mssql://sa:Secret-123@127.0.0.1:1433/master``. We do not own it, so the container
  restart test is skipped; everything else runs (the login needs rights to KILL
  sessions, i.e. ALTER ANY CONNECTION, which sa has).
* ``testcontainers``: starts ``mcr.microsoft.com/mssql/server:2022-latest`` (override
  with ``MSSQL_POOL_TEST_IMAGE``) for the session.
* ``compose``: pytest-docker brings up docker/docker-compose.yml for the session.
* ``babelfish``: Babelfish for PostgreSQL (a SQL-Server-compatible engine that speaks
  TDS), started through ``../shared/babelfish/start.sh`` (relative to the repository
  root; ``MSSQL_POOL_BABELFISH_START`` names another start script). Restarts use
  ``start.sh restart``. Tests that need a SQL Server feature Babelfish lacks carry
  ``@pytest.mark.needs_feature("name")`` and are skipped there with the reason
  (:data:`BABELFISH_LACKS`).
* ``auto`` (default): the URL if set, else Babelfish when its start script exists, else
  testcontainers, else compose, whichever is installed and finds a Docker engine.

Without any of them every test here is skipped with one reason line.

To check the tests' own logic without Docker, point them at the TDS test server, which
speaks enough T-SQL (KILL, sys.dm_exec_sessions, lock waits and deadlock detection)::

    mssql-pool serve --port 14330 --password Real-Test-1 &
    MSSQL_POOL_TEST_URL=mssql://sa:Real-Test-1@127.0.0.1:14330/master \
        pytest -m realserver tests/integration/realserver testcontainers
and pytest-docker come with ``pip install -e '.[docker]'`` and are imported lazily.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO_ROOT / "docker" / "docker-compose.yml"
BABELFISH_START = Path(
    os.environ.get("MSSQL_POOL_BABELFISH_START")
    or REPO_ROOT.parent / "shared" / "babelfish" / "start.sh"
)
#: SQL Server features Babelfish 4.2 does not have, by the name tests use in
#: ``@pytest.mark.needs_feature(name)``, with what is missing.
BABELFISH_LACKS = {
    "sp_reset_connection": "no sp_reset_connection by RPC (it resets only on the TDS "
    "header's RESETCONNECTION flag, which FreeTDS cannot send)",
    "waitfor": "no WAITFOR and no server-side sleep",
    "error_numbers": "lock timeouts, syntax errors and missing objects all come back as "
    "33557097 with a PostgreSQL-style message",
    "session_context": "no sp_set_session_context / SESSION_CONTEXT",
}
DEFAULT_IMAGE = "mcr.microsoft.com/mssql/server:2022-latest"
DEFAULT_PASSWORD = "MssqlPool-Test-2022"
READY_TIMEOUT = float(os.environ.get("MSSQL_POOL_TEST_READY_TIMEOUT", "180"))
HOW_TO = (
    "set MSSQL_POOL_TEST_URL=mssql://sa:PASSWORD@HOST:1433/master, or install "
    "'.[docker]' on a machine with a Docker engine (tox -e docker), or provide a Babelfish "
    "start script (MSSQL_POOL_BABELFISH_START)"
)


@dataclass
class RealServer:
    """A reachable SQL Server: how to connect, and (when we own it) how to restart it."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    backend: str
    restart: Callable[[], None] | None = None
    # For the testcontainers backend the host port may change after a restart.
    refresh: Callable[[], tuple[str, int]] | None = None
    _version: str | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        """@@VERSION (read once)."""
        if self._version is None:
            conn = self.connect()
            try:
                cur = conn.cursor()
                cur.execute("SELECT @@VERSION")
                self._version = str(cur.fetchone()[0])
            finally:
                conn.close()
        return self._version

    @property
    def is_babelfish(self) -> bool:
        """Babelfish for PostgreSQL, whichever backend reached it."""
        return self.backend == "babelfish" or self.version.startswith("Babelfish")

    @property
    def url(self) -> str:
        return (
            f"mssql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.database, safe='')}"
        )

    def connect_kwargs(self, **extra: Any) -> dict[str, Any]:
        if self.refresh is not None:
            self.host, self.port = self.refresh()
        kwargs: dict[str, Any] = {
            "server": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "tds_version": "7.4",
            "login_timeout": 10,
        }
        kwargs.update(extra)
        return kwargs

    def connect(self, **extra: Any) -> Any:
        """A raw pymssql connection (autocommit by default: an admin session)."""
        import pymssql

        extra.setdefault("autocommit", True)
        return pymssql.connect(**self.connect_kwargs(**extra))


def parse_test_url(url: str) -> RealServer:
    from mssql_pool._dsn import parse_conninfo
    from mssql_pool.errors import ConfigError

    try:
        kw = parse_conninfo(url)
    except ConfigError as exc:
        raise pytest.UsageError(
            f"MSSQL_POOL_TEST_URL must look like mssql://user:password@host:1433/database ({exc})"
        ) from None
    return RealServer(
        host=str(kw["server"]),
        port=int(kw.get("port", 1433)),
        user=str(kw.get("user", "sa")),
        password=str(kw.get("password", "")),
        database=str(kw.get("database", "master")),
        backend="url",
    )


def docker_engine_problem() -> str | None:
    """None when a Docker engine answers /_ping, else why not (short)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            path = host[len("unix://") :]
            if not os.path.exists(path):
                return f"no Docker engine ({path} not found)"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2.0)
            sock.connect(path)
        elif host.startswith("tcp://"):
            target = urlsplit(host)
            sock = socket.create_connection((target.hostname, target.port or 2375), timeout=2.0)
        else:
            return None  # ssh:// and friends: let the client library try
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(256)
    except OSError as exc:
        return f"no Docker engine at {host} ({exc.strerror or exc})"
    if b" 200 " not in reply.split(b"\r\n", 1)[0]:
        return f"Docker engine at {host} did not answer /_ping"
    return None


def wait_for_login(server: RealServer, timeout: float) -> None:
    """Poll until a login and SELECT 1 succeed (SQL Server takes ~10-30 s to start)."""
    import pymssql

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            conn = server.connect(login_timeout=5)
            try:
                cur = conn.cursor()
                cur.execute("SELECT 1")
                cur.fetchall()
                return
            finally:
                conn.close()
        except (pymssql.Error, OSError) as exc:
            last = exc
            time.sleep(1.0)
    raise TimeoutError(f"SQL Server not ready after {timeout:.0f} s: {type(last).__name__}")


def _from_testcontainers() -> Iterator[RealServer]:
    from testcontainers.mssql import SqlServerContainer

    password = os.environ.get("MSSQL_SA_PASSWORD", DEFAULT_PASSWORD)
    image = os.environ.get("MSSQL_POOL_TEST_IMAGE", DEFAULT_IMAGE)
    container = SqlServerContainer(image, password=password, dbname="master")
    container.with_env("MSSQL_SA_PASSWORD", password)
    container.start()
    try:

        def where() -> tuple[str, int]:
            return container.get_container_host_ip(), int(container.get_exposed_port(1433))

        host, port = where()
        server = RealServer(host, port, "sa", password, "master", "testcontainers", refresh=where)

        def restart() -> None:
            container.get_wrapped_container().restart(timeout=10)

        server.restart = restart
        wait_for_login(server, READY_TIMEOUT)
        yield server
    finally:
        container.stop()


def _from_compose(request: pytest.FixtureRequest) -> Iterator[RealServer]:
    services = request.getfixturevalue("docker_services")
    project = request.getfixturevalue("docker_compose_project_name")
    host = request.getfixturevalue("docker_ip")
    password = os.environ.get("MSSQL_SA_PASSWORD", DEFAULT_PASSWORD)
    server = RealServer(
        host, int(services.port_for("mssql", 1433)), "sa", password, "master", "compose"
    )

    def restart() -> None:
        subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", project, "restart", "mssql"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    server.restart = restart
    wait_for_login(server, READY_TIMEOUT)
    yield server


def _choose_backend(config: pytest.Config) -> tuple[str | None, str]:
    """(backend or None, reason when None)."""
    if os.environ.get("MSSQL_POOL_TEST_URL"):
        return "url", ""
    wanted = config.getoption("--backend")
    have_tc = importlib.util.find_spec("testcontainers") is not None
    have_compose = importlib.util.find_spec("pytest_docker") is not None
    if wanted == "babelfish" or (wanted == "auto" and BABELFISH_START.is_file()):
        if not BABELFISH_START.is_file():
            return None, f"no Babelfish start script at {BABELFISH_START}"
        return "babelfish", ""
    if wanted == "testcontainers" and not have_tc:
        return None, "testcontainers is not installed (pip install -e '.[docker]')"
    if wanted == "compose" and not have_compose:
        return None, "pytest-docker is not installed (pip install -e '.[docker]')"
    if wanted == "auto" and not (have_tc or have_compose):
        return None, f"no MSSQL_POOL_TEST_URL and no testcontainers/pytest-docker; {HOW_TO}"
    problem = docker_engine_problem()
    if problem:
        return None, f"no MSSQL_POOL_TEST_URL and {problem}; {HOW_TO}"
    if wanted == "auto":
        return ("testcontainers" if have_tc else "compose"), ""
    return wanted, ""


_decision: dict[int, tuple[str | None, str]] = {}


def backend_for(config: pytest.Config) -> tuple[str | None, str]:
    """The backend to use (decided once per session), or None and why not."""
    key = id(config)
    if key not in _decision:
        _decision[key] = _choose_backend(config)
    return _decision[key]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip from here, not per test, so ``-ra`` folds every skip into one reason line."""
    backend, reason = backend_for(item.config)
    if backend is None:
        pytest.skip(f"real SQL Server tests: {reason}")


@pytest.fixture(autouse=True)
def _needs_feature(request: pytest.FixtureRequest) -> None:
    """Skip, with the reason, a test marked ``needs_feature(name)`` on a server lacking it."""
    wanted = [f for mark in request.node.iter_markers("needs_feature") for f in mark.args]
    if not wanted:
        return
    server: RealServer = request.getfixturevalue("real_server")
    if server.is_babelfish:
        for feature in wanted:
            if feature in BABELFISH_LACKS:
                pytest.skip(f"needs {feature}: Babelfish has {BABELFISH_LACKS[feature]}")


def run_start_script(*args: str, env: dict[str, str] | None = None,
                     timeout: float = 120.0) -> str:
    """Run the Babelfish start script; its last output line is the URL."""
    out = subprocess.run(
        ["bash", str(BABELFISH_START), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"{BABELFISH_START.name} {' '.join(args)} failed ({out.returncode}): "
            f"{out.stderr.strip()[-400:]}"
        )
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _from_babelfish() -> Iterator[RealServer]:
    url = run_start_script("start")
    server = parse_test_url(url)
    server.backend = "babelfish"

    def restart() -> None:
        run_start_script("restart")

    server.restart = restart
    wait_for_login(server, 60.0)
    yield server  # left running: starting it again costs 0.1 s


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """pytest-docker: our compose file (used by --backend=compose only)."""
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def real_server(request: pytest.FixtureRequest) -> Iterator[RealServer]:
    backend, reason = backend_for(request.config)
    if backend is None:  # pragma: no cover - pytest_runtest_setup skipped already
        pytest.skip(f"real SQL Server tests: {reason}")
    if backend == "url":
        server = parse_test_url(os.environ["MSSQL_POOL_TEST_URL"])
        wait_for_login(server, 30.0)
        yield server
    elif backend == "babelfish":
        yield from _from_babelfish()
    elif backend == "testcontainers":
        yield from _from_testcontainers()
    else:
        yield from _from_compose(request)


@pytest.fixture
def table_name(real_server: RealServer) -> Iterator[str]:
    """A fresh table name (dbo.mssql_pool_t_<hex>); the table is dropped afterwards."""
    name = f"mssql_pool_t_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        conn = real_server.connect()
        try:
            conn.cursor().execute(f"IF OBJECT_ID('dbo.{name}') IS NOT NULL DROP TABLE dbo.{name}")
        finally:
            conn.close()
    except Exception:  # the server may be mid-restart; the table is harmless
        pass


def kill_session(server: RealServer, spid: int) -> None:
    """KILL a session from a separate admin connection, as a DBA would."""
    admin = server.connect()
    try:
        admin.cursor().execute(f"KILL {int(spid)}")
    finally:
        admin.close()


def sessions_of(server: RealServer, program_name: str) -> list[int]:
    """SPIDs of the sessions opened with this application name."""
    admin = server.connect()
    try:
        cur = admin.cursor()
        cur.execute(
            "SELECT session_id FROM sys.dm_exec_sessions WHERE program_name = %s "
            "AND session_id <> @@SPID",
            (program_name,),
        )
        return [int(row[0]) for row in cur.fetchall()]
    finally:
        admin.close()
