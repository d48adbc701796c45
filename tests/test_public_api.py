"""The top of the package is the short list docs/api.md gives, and every stable name of that
page is where the page says it is."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import mssql_pool

PAGE = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")


def _section(title: str) -> list[list[str]]:
    """The table rows (cells as lists of backticked words) of one ``##`` section."""
    text = PAGE.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    # a cell's names are the backticked words before any parenthesised remark
    return [[re.findall(r"`([^`]+)`", cell.split(" (", 1)[0]) for cell in row.strip("|").split("|")]
            for row in rows]


def test_all_is_exactly_the_documented_top() -> None:
    documented = [cells[0][0] for cells in _section("At the top: `mssql_pool`")]
    assert sorted(mssql_pool.__all__) == sorted(documented)
    assert len(set(mssql_pool.__all__)) == len(mssql_pool.__all__)


def test_each_top_name_is_defined_where_the_page_says() -> None:
    for cells in _section("At the top: `mssql_pool`"):
        name, home = cells[0][0], cells[-1][0]
        obj = getattr(mssql_pool, name)
        if home != "mssql_pool":
            assert getattr(importlib.import_module(home), name) is obj, name


def test_each_module_name_is_importable_from_its_module() -> None:
    rows = _section("In their modules")
    assert rows, "the module table is missing"
    unavailable = []
    for cells in rows:
        module_name, names = cells[0][0], cells[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an extra that is not installed
            unavailable.append(f"{module_name}: {exc}")
            continue
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name}"
    if unavailable:
        pytest.skip(f"checked every other row; not installed: {unavailable}")


def test_old_top_level_names_still_resolve_but_are_not_stable() -> None:
    from mssql_pool.breaker import CircuitBreaker
    from mssql_pool.classify import ErrorKind
    from mssql_pool.retry import ExponentialBackoff

    assert mssql_pool.CircuitBreaker is CircuitBreaker  # type: ignore[attr-defined]
    assert mssql_pool.ErrorKind is ErrorKind  # type: ignore[attr-defined]
    from mssql_pool import ExponentialBackoff as old  # type: ignore[attr-defined]

    assert old is ExponentialBackoff
    for name in ("CircuitBreaker", "ErrorKind", "ExponentialBackoff", "PooledConnection"):
        assert name not in mssql_pool.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        mssql_pool.no_such_name  # type: ignore[attr-defined]  # noqa: B018
