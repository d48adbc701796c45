"""The mssql-pool command without sockets: parsing, usage errors, dispatch, exit codes."""

from __future__ import annotations

import json
import socket

import pytest

from mssql_pool import _check, cli
from mssql_pool._check import EXIT_DNS


def test_parse_target_full_url() -> None:
    t = cli.parse_target("mssql://app%40corp:p%40ss%3Aword@db.example.com:1444/orders?appname=x")
    assert (t.host, t.port, t.user, t.password, t.database) == (
        "db.example.com",
        1444,
        "app@corp",
        "p@ss:word",
        "orders",
    )
    assert t.kwargs["appname"] == "x"
    kwargs = t.connect_kwargs(timeout=3)
    assert kwargs["tds_version"] == "7.4"
    assert kwargs["login_timeout"] == 3 and kwargs["appname"] == "x"


def test_parse_target_defaults_and_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSQL_POOL_PASSWORD", "FromEnv-123")
    t = cli.parse_target("mssql://sa@localhost")
    assert (t.port, t.database, t.password) == (1433, "", "FromEnv-123")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://sa:pw@host/db", "scheme"),
        ("mssql://sa:pw@:1433/db", "host"),
        ("mssql://sa:pw@host:99999/db", "port"),
        ("mssql://sa:pw@host/db?colour=blue", "colour"),
        ("mssql://sa:pw@host/db?timeout=soon", "timeout"),
    ],
)
def test_parse_target_rejects_bad_urls(url: str, fragment: str) -> None:
    with pytest.raises(cli.UsageError) as info:
        cli.parse_target(url)
    assert fragment in str(info.value).lower()
    assert "pw" not in str(info.value).replace("port", "")


def test_target_repr_and_redacted_never_show_the_password() -> None:
    t = cli.parse_target("mssql://sa:Sup3r-Secret@h:1/db?tds_version=7.3")
    assert "Sup3r-Secret" not in repr(t)
    assert t.redacted() == "mssql://sa:***@h:1/db?tds_version=7.3"


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["check"],
        ["check", "http://x"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "0"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "nan"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "inf"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "1e300"],
        ["check", "mssql://sa:pw@h/db?tds_version=9.9"],
        ["check", "mssql://sa:pw@h/db?timeout=-5"],
        ["check", "mssql://sa:pw@h/db?charset=NOPE"],
        ["check", "mssql://sa:pw@h/db", "--check-sql", "  "],
        ["check", "mssql://sa:pw@h/db", "--samples", "0"],
        ["check", "mssql://sa:pw/x@h/db"],
        ["demo", "--threads", "0"],
        ["demo", "--duration", "-1"],
        ["demo", "--threads", "many"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "mssql://sa:pw@h/db", "--json", "--timeout", "nan"],
        ["check", "mssql://sa:pw@h/db?tds_version=9.9", "--json"],
        ["check", "mssql://sa:pw@h/db", "--json", "--check-sql", ""],
        ["check", "--json", "mssql://sa:S3c/retPW@h/db"],
        ["check", "--json", "mssql://sa:pw@h/db", "--timeout", "soon"],
    ],
)
def test_bad_usage_with_json_still_prints_json(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["exit_code"] == cli.EXIT_USAGE and data["ok"] is False and data["error"]
    assert "retPW" not in captured.out + captured.err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "demo" in capsys.readouterr().err


def test_help_lists_the_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "check", "serve", "Exit codes"):
        assert word in out


def test_check_dns_failure_is_exit_3_without_network(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_dns(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(_check.socket, "getaddrinfo", no_dns)
    code = cli.main(["check", "mssql://sa:Hidden-Pass-1@db.invalid/x", "--json"])
    assert code == EXIT_DNS
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["exit_code"] == 3 and data["steps"][0]["name"] == "dns"
    assert "Hidden-Pass-1" not in out


def test_serve_delegates_or_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys
    import types

    seen: list[list[str]] = []
    fake = types.ModuleType("mssql_pool.testing.server")
    fake.serve_main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mssql_pool.testing.server", fake)
    assert cli.main(["serve", "--port", "0"]) == 0
    assert seen == [["--port", "0"]]
