"""The documentation site builds cleanly and its reference pages match the code.

* ``mkdocs build --strict`` succeeds (broken links, missing nav pages and bad markup fail);
* every ``PoolConfig`` option is documented in docs/configuration.md, with the default the
  code has;
* every ``get_stats()`` key, every Prometheus metric and every logger of the package is
  documented in docs/operations.md,

so the reference cannot silently go stale when the code changes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mssql_pool import ConnectionPool, PoolConfig
from mssql_pool.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _missing(names: list[str], text: str) -> list[str]:
    """Names that do not appear in ``text`` as inline code (`name`, or `name{...}`...)."""
    return [n for n in names if not re.search(r"`" + re.escape(n) + r"[`{(=\s]", text)]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install 'mssql_pool[docs]')")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def _pool_options() -> list[str]:
    """PoolConfig's fields, plus the connect-guard options the pool accepts besides them."""
    options = [f.name for f in dataclasses.fields(PoolConfig)]
    try:
        from mssql_pool.breaker import GUARD_OPTIONS
    except ImportError:
        return options
    for name in GUARD_OPTIONS:
        value = False if name == "circuit_wait" else None
        try:
            ConnectionPool(connect=lambda: None, min_size=0, background=False,
                           **{name: value}).close()
        except ValueError as exc:
            if "unknown option" in str(exc):
                continue
        options.append(name)
    return options


def test_every_pool_option_is_documented() -> None:
    options = _pool_options()
    assert "max_size" in options and len(options) > 10
    text = _text("configuration.md")
    missing = _missing(options, text)
    assert not missing, f"PoolConfig options missing from docs/configuration.md: {missing}"
    # each option has its own heading, with its default stated right under it
    no_heading = [n for n in options if not re.search(rf"^#+ `{re.escape(n)}`", text, re.M)]
    assert not no_heading, f"options without a section in docs/configuration.md: {no_heading}"


def test_documented_defaults_match_the_code() -> None:
    """The summary table's default column agrees with PoolConfig for plain values."""
    rows = {}
    for line in _text("configuration.md").splitlines():
        m = re.match(r"\| `(\w+)` \| ([^|]*) \|", line)
        if m:
            rows.setdefault(m.group(1), m.group(2))
    wrong = []
    for f in dataclasses.fields(PoolConfig):
        default = f.default
        if f.name == "name" or default is dataclasses.MISSING:
            continue
        if default is not None and not isinstance(default, (bool, int, float, str)):
            continue
        shown = f'"{default}"' if isinstance(default, str) else repr(default)
        if f"`{shown}`" not in rows.get(f.name, ""):
            wrong.append(f"{f.name}: code {shown}, docs {rows.get(f.name)!r}")
    assert not wrong, f"defaults in docs/configuration.md differ from PoolConfig: {wrong}"


def test_documented_endpoint_breaker_matches_the_code() -> None:
    from mssql_pool.endpoints import DEFAULT_ENDPOINT_BREAKER

    shown = json.dumps(dict(DEFAULT_ENDPOINT_BREAKER))
    assert f"`{shown}`" in _text("configuration.md"), f"document {shown} under endpoint_breaker"


def test_every_stats_key_is_documented() -> None:
    pool = ConnectionPool(connect=lambda: None, min_size=0, background=False)
    try:
        keys = sorted(pool.get_stats())
    finally:
        pool.close()
    assert "pool_size" in keys and "requests_num" in keys
    missing = _missing(keys, _text("operations.md"))
    assert not missing, f"get_stats() keys missing from docs/operations.md: {missing}"


def test_the_stats_tables_are_the_stats_module_s_table() -> None:
    """docs/operations.md shows mssql_pool.stats.STATS row for row (one table feeds the
    code, the metrics and the docs)."""
    from mssql_pool.stats import STATS

    text = _text("operations.md")
    rows = [f"| `{s.key}` | {s.meaning} |" if s.kind == "gauge"
            else f"| `{s.key}` | {s.unit} | {s.meaning} |" for s in STATS]
    missing = [row for row in rows if row not in text]
    assert not missing, f"rows of docs/operations.md that differ from stats.STATS: {missing}"


def test_every_metric_is_documented() -> None:
    names = ["mssql_pool_connections"] + [
        f"mssql_pool_{spec.name}" + ("_total" if spec.kind == "counter" else "")
        for spec in METRICS
    ]
    missing = _missing(names, _text("operations.md"))
    assert not missing, f"Prometheus metrics missing from docs/operations.md: {missing}"


def test_what_each_counter_is_counted_from_is_documented() -> None:
    """docs/operations.md shows metrics.COUNTED_FROM row for row, and it names every
    counter the collector rebuilds from events."""
    from mssql_pool.metrics import COUNTED_FROM, EVENT_COUNTERS

    assert sorted(COUNTED_FROM) == sorted(EVENT_COUNTERS)
    rows = [f"| `mssql_pool_{spec.name}_total` | {COUNTED_FROM[spec.key]} |"
            for spec in METRICS if spec.kind == "counter"]
    missing = [row for row in rows if row not in _text("operations.md")]
    assert not missing, f"rows of docs/operations.md that differ from COUNTED_FROM: {missing}"


def test_every_logger_is_documented() -> None:
    found: set[str] = set()
    for path in (ROOT / "mssql_pool").rglob("*.py"):
        found.update(re.findall(r"""getLogger\(\s*["'](mssql_pool[\w.]*)["']""",
                                path.read_text(encoding="utf-8")))
    loggers = sorted(found - {"mssql_pool"})
    assert "mssql_pool.pool" in loggers
    missing = _missing(loggers, _text("operations.md"))
    assert not missing, f"loggers missing from docs/operations.md: {missing}"
