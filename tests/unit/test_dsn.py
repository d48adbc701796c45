"""URL/mapping parsing to pymssql arguments, and password redaction."""

from __future__ import annotations

import pytest

from mssql_pool import ConfigError
from mssql_pool._dsn import parse_conninfo, redact


def test_url_to_pymssql_kwargs() -> None:
    kw = parse_conninfo("mssql://us%40er:p%40ss%3Aw@host.example:1444/orders"
                        "?appname=x&login_timeout=5&autocommit=true")
    assert kw == {"server": "host.example", "port": 1444, "user": "us@er",
                  "password": "p@ss:w", "database": "orders", "appname": "x",
                  "login_timeout": 5, "autocommit": True, "tds_version": "7.4"}


def test_tds_version_default_and_override() -> None:
    assert parse_conninfo("mssql://h")["tds_version"] == "7.4"
    assert parse_conninfo("mssql://h?tds_version=7.3")["tds_version"] == "7.3"
    assert parse_conninfo({"server": "h", "tds_version": "7.1"})["tds_version"] == "7.1"


def test_mapping_accepts_host_alias() -> None:
    kw = parse_conninfo({"host": "h", "user": "u", "password": "p", "database": "db"})
    assert kw["server"] == "h" and "host" not in kw and kw["tds_version"] == "7.4"


@pytest.mark.parametrize("bad", ["postgres://u:pw@h/db", "mssql:///db", {"user": "u"},
                                 "mssql://u:pw@h?port=abc", "mssql://u:pw@h?autocommit=maybe"])
def test_bad_conninfo_is_a_config_error_without_password(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_conninfo(bad)  # type: ignore[arg-type]
    assert info.value.parameter.startswith("conninfo")
    assert "pw@" not in str(info.value)


def test_wrong_type() -> None:
    with pytest.raises(ConfigError, match="conninfo"):
        parse_conninfo(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("mssql://user:hunter2@host/db", "hunter2"),
        ("connect to mssql+pymssql://u:a@b@host:1433 failed", "a@b"),
        ("Server=h;UID=u;PWD=hunter2;Database=x", "hunter2"),
        ("{'server': 'h', 'password': 'hunter2'}", "hunter2"),
        ('{"password": "hunter 2"}', "hunter 2"),
        ("password=hunter2 user=u", "hunter2"),
        ("access_token: abc.def.ghi", "abc.def.ghi"),
    ],
)
def test_redact_removes_passwords(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_redact_mapping_and_exception() -> None:
    out = redact({"server": "h", "Password": "hunter2", "user": "u"})
    assert "hunter2" not in out and "'server': 'h'" in out
    assert "hunter2" not in redact(ValueError("login mssql://u:hunter2@h failed"))


def test_redact_leaves_plain_text_alone() -> None:
    assert redact("SELECT 1 FROM t WHERE a = 2") == "SELECT 1 FROM t WHERE a = 2"
    assert redact("mssql://user@host/db") == "mssql://user@host/db"


def test_odbc_keywords_and_conversions() -> None:
    kw = parse_conninfo("Data Source=db,1444; User ID=app; Password={a}}b;c}; "
                        "Initial Catalog=orders; Application Name=x; Login Timeout=5; "
                        "ApplicationIntent=ReadOnly; Encrypt=yes; TDS_Version=7.3")
    assert kw == {"server": "db", "port": 1444, "user": "app", "password": "a}b;c",
                  "database": "orders", "appname": "x", "login_timeout": 5,
                  "read_only": True, "encryption": "require", "tds_version": "7.3"}


def test_url_ipv6_host_and_query_secret_are_handled() -> None:
    kw = parse_conninfo("mssql://u:p@[::1]:1444/db")
    assert (kw["server"], kw["port"]) == ("::1", 1444)
    from mssql_pool._dsn import redact_conninfo
    assert redact_conninfo("mssql://h/db?password=hunter2&appname=x") == (
        "mssql://h/db?password=***&appname=x")


def test_odd_parameter_names_are_shown_safely() -> None:
    with pytest.raises(ConfigError) as info:
        parse_conninfo({"server": "h", "x\nforged": 1})
    assert "\n" not in str(info.value)
