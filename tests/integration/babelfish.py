"""Where a Babelfish server is, if one is: for tests that compare the TDS test server with it.

``MSSQL_POOL_BABELFISH_URL`` (e.g. ``mssql://user:pass@127.0.0.1:1433/master``) wins;
otherwise ``../shared/babelfish/start.sh url`` relative to the repository root, when that
script exists, names the URL. Either way the server must already be running (these tests
never start, stop or restart it) and answer a login; else the tests that need it skip.
Tests create only their own tables, with names unique to the run, and drop them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_SCRIPT = ROOT.parent / "shared" / "babelfish" / "start.sh"
ENV = "MSSQL_POOL_BABELFISH_URL"

_found: list[str | None] = []


def babelfish_url() -> str | None:
    """The URL of a running Babelfish, or None (looked up once per process)."""
    if _found:
        return _found[0]
    url = os.environ.get(ENV) or None
    if url is None and START_SCRIPT.is_file():
        try:
            proc = subprocess.run(["bash", str(START_SCRIPT), "url"], capture_output=True,
                                  text=True, timeout=10)
            lines = proc.stdout.strip().splitlines()
            url = lines[-1].strip() if proc.returncode == 0 and lines else None
        except (OSError, subprocess.SubprocessError):
            url = None
    if url is not None:
        parts = urlsplit(url)
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1433),
                                     timeout=2).close()
        except OSError:
            url = None
    _found.append(url)
    return url


def connect_kwargs(url: str, **overrides: Any) -> dict[str, Any]:
    """``pymssql.connect`` arguments for a Babelfish URL (TDS 7.4, bounded timeouts)."""
    parts = urlsplit(url)
    kw: dict[str, Any] = {
        "server": parts.hostname or "127.0.0.1", "port": str(parts.port or 1433),
        "user": unquote(parts.username or ""), "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")) or "master", "tds_version": "7.4",
        "login_timeout": 10, "timeout": 30,
    }
    kw.update(overrides)
    return kw


def unique_table(prefix: str) -> str:
    """A table name no other run or engineer uses."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def babelfish() -> str:
    """The Babelfish URL; skips the test when none is running."""
    url = babelfish_url()
    if url is None:
        pytest.skip(f"no Babelfish: set {ENV} or provide ../shared/babelfish/start.sh "
                    "(and start it)")
    return url
