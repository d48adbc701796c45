"""The real-server tests' backend choice (tests/integration/realserver/conftest.py):
Babelfish when its start script exists and nothing else is configured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "integration" / "realserver" / "conftest.py"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, CONFTEST)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)       # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def conftest(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delenv("MSSQL_POOL_TEST_URL", raising=False)
    return load("realserver_conftest_under_test", monkeypatch)


class Config:
    def __init__(self, backend: str) -> None:
        self.backend = backend

    def getoption(self, name: str) -> Any:
        assert name == "--backend"
        return self.backend


@pytest.fixture
def with_script(
    conftest: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    """The conftest, with a Babelfish start script where it looks for one."""
    script = tmp_path / "start.sh"
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(conftest, "BABELFISH_START", script)
    return conftest


def test_babelfish_is_chosen_when_its_start_script_exists(with_script: ModuleType) -> None:
    assert with_script._choose_backend(Config("auto")) == ("babelfish", "")
    assert with_script._choose_backend(Config("babelfish")) == ("babelfish", "")


def test_a_url_wins_over_babelfish(
    with_script: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSSQL_POOL_TEST_URL", "mssql://sa:x@127.0.0.1:1433/master")
    assert with_script._choose_backend(Config("auto")) == ("url", "")


def test_without_the_script_babelfish_skips_with_one_reason(
    conftest: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conftest, "BABELFISH_START", tmp_path / "absent.sh")
    backend, reason = conftest._choose_backend(Config("babelfish"))
    assert backend is None and "no Babelfish start script" in reason and "\n" not in reason
    backend, reason = conftest._choose_backend(Config("auto"))
    assert backend != "babelfish"


def test_default_start_script_is_beside_the_checkout(conftest: ModuleType,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSSQL_POOL_BABELFISH_START", raising=False)
    mod = load("realserver_conftest_default", monkeypatch)
    root = CONFTEST.parents[3]
    assert mod.BABELFISH_START == root.parent / "shared" / "babelfish" / "start.sh"
