"""The house rules hold and are checked the same way everywhere.

* ``.ci/lint``, tox's ``lint``/``type``/``docs`` envs and ``.pre-commit-config.yaml`` run the
  same three checks: ruff over the package, tests, benchmarks and examples; ``mypy --strict``
  on the package; ``mkdocs build --strict``;
* ruff's rule set includes import order, bugbear, pyupgrade and mccabe complexity 15;
* the repository stands alone: no file refers to notes kept outside it.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUFF_PATHS = "mssql_pool tests bench examples"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def test_ruff_rule_set_has_import_order_bugbear_pyupgrade_and_complexity() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lint = config["tool"]["ruff"]["lint"]
    assert {"I", "B", "UP", "C901"} <= set(lint["select"])
    assert lint["mccabe"]["max-complexity"] == 15


def test_ci_lint_runs_the_three_checks() -> None:
    script = (ROOT / ".ci" / "lint").read_text(encoding="utf-8")
    assert f"ruff check {RUFF_PATHS}" in script
    assert "mypy --strict mssql_pool" in script
    assert "mkdocs build --strict" in script
    assert "'.[dev,docker,bench]'" in script  # every extra, so mypy sees every import
    assert (ROOT / ".ci" / "lint").stat().st_mode & 0o111, ".ci/lint must be executable"


def test_tox_envs_match_ci_lint() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini", encoding="utf-8")
    envs = {name.removeprefix("testenv:"): tox[name] for name in tox.sections()}
    assert envs["lint"]["commands"].strip() == f"ruff check {RUFF_PATHS}"
    assert envs["type"]["commands"].strip() == "mypy --strict mssql_pool"
    assert {"docker", "bench"} <= {e.strip() for e in envs["type"]["extras"].split(",")}
    assert envs["docs"]["commands"].strip() == "mkdocs build --strict"
    assert {"lint", "type", "docs"} <= {e.strip() for e in tox["tox"]["envlist"].split(",")}


def test_pre_commit_runs_the_same_checks() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert hooks["ruff"]["entry"] == "ruff check"
    assert all(p in hooks["ruff"]["files"] for p in RUFF_PATHS.split())
    assert hooks["mypy"]["entry"] == "mypy --strict mssql_pool"
    assert "mkdocs build --strict" in hooks["mkdocs"]["entry"]


def test_the_repository_refers_to_no_notes_outside_it() -> None:
    """Comments, docs and tests say what they rely on instead of pointing elsewhere."""
    names = ["FACTS" + ".md", "STYLE" + ".md"]  # spelled apart so this file does not match
    found = subprocess.run(
        ["git", "grep", "-n", "-I", *[arg for n in names for arg in ("-e", n)]],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if found.returncode not in (0, 1):
        pytest.skip(f"not a git checkout: {found.stderr.strip()}")
    assert found.stdout == "", found.stdout


def _imports_inside_functions(path: Path) -> list[str]:
    import ast

    found: list[str] = []
    for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and (node.level or "mssql_pool" in (
                    node.module or "")):
                found.append(f"{path.name}:{node.lineno} from {'.' * node.level}"
                             f"{node.module or ''}")
    return found


def test_the_test_server_has_no_import_cycles_hidden_in_functions() -> None:
    """The engine's parts import each other at the top (result types live in the leaf
    ``_results``), so an import cycle cannot hide in a function; only the package's lazy
    ``TdsServer`` (``__init__``) imports inside a function."""
    testing = ROOT / "mssql_pool" / "testing"
    found = [hit for path in sorted(testing.glob("*.py"))
             for hit in _imports_inside_functions(path)]
    assert found == ["__init__.py:23 from ."], found


#: pymssql's private surface and FreeTDS's wording: known to ``mssql_pool/_driver.py`` only.
_DRIVER_ATTRIBUTES = {"init_procedure", "execute_non_query", "_split_commit"}
#: The texts that code matches FreeTDS's and pymssql's messages with.
_DRIVER_TEXTS = ("DBPROCESS is dead", "Not connected to any MS SQL server", "DB-Lib error message")
#: Modules that import pymssql itself: the driver boundary, the opening of a connection,
#: the command's diagnosis and the SQLAlchemy dialect built on pymssql's.
_IMPORT_PYMSSQL = {"_driver.py", "_connect.py", "_check.py", "sqlalchemy_async.py", "backends.py"}


def _driver_knowledge(path: Path) -> list[str]:
    """Code (not docstrings or comments) in ``path`` that speaks pymssql's private API."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and node.attr in _DRIVER_ATTRIBUTES:
            found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            if node.value in _DRIVER_ATTRIBUTES or node.value.startswith(_DRIVER_TEXTS):
                found.append(f"{where} {node.value[:40]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "startswith" and any(
                    isinstance(a, ast.Constant) and a.value == "pymssql" for a in node.args):
            found.append(f"{where} a pymssql connection told by its module name")
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and path.name not in _IMPORT_PYMSSQL:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            if any(n.split(".")[0] == "pymssql" for n in names):
                found.append(f"{where} import pymssql")
    return found


def test_pymssql_and_freetds_quirks_live_in_the_driver_module() -> None:
    """``_driver.py`` is the one boundary to the driver: no other module of the package
    calls pymssql's private ``_conn`` methods, matches FreeTDS's messages, tests for a
    pymssql connection by its module name or builds pymssql's exceptions."""
    package = ROOT / "mssql_pool"
    paths = [p for p in sorted(package.glob("*.py")) + sorted(package.glob("demo/*.py"))
             if p.name != "_driver.py"]
    found = [hit for path in paths for hit in _driver_knowledge(path)]
    assert found == [], found
