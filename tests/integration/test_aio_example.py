"""The asyncio example application (examples/asyncio_app.py) runs against the TDS test
server: concurrent transfers through run_transaction, reads, and a request cancelled
mid-query whose statement is cancelled on the server and whose connection comes back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "asyncio_app.py"

pytestmark = pytest.mark.timeout(60)


def test_the_example_app_runs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("asyncio_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    out = capsys.readouterr().out
    assert "transfers: 20 ok" in out
    assert "{'id': 1, 'balance': 500} {'id': 2, 'balance': 500}" in out
    assert "busy=0 waiting=0" in out
    assert "statements cancelled on the server: 1" in out
