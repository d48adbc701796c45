"""Bad input caught at the door, and passwords that never come out (issue-level cases).

Each case here was accepted (or leaked) before: the structural parser in ``_dsn``,
the ranges in ``config``/``breaker`` and the per-call checks in ``pool`` catch them now.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from mssql_pool import ConfigError, ConnectionPool, MssqlPoolError
from mssql_pool._dsn import parse_conninfo, redact, redact_conninfo
from mssql_pool.breaker import CircuitBreaker
from mssql_pool.config import MAX_NAME, make_config

SECRET = "S3c retPW"


def factory() -> object:
    return object()


# ------------------------------------------------------------------ 1. whitespace
@pytest.mark.parametrize("password", ["S3c retPW", "S3c\tretPW", " S3cretPW ", "S3c\nretPW"])
def test_whitespace_in_a_url_password_is_masked_in_repr_and_log(
        password: str, caplog: pytest.LogCaptureFixture) -> None:
    url = f"mssql://app:{password}@127.0.0.1:1/db"
    caplog.set_level(logging.DEBUG, logger="mssql_pool")
    pool = ConnectionPool(url, min_size=0, background=False)
    try:
        shown = repr(pool.config) + "\n".join(r.getMessage() for r in caplog.records)
        assert "mssql://app:***@127.0.0.1:1/db" in shown
        for part in password.split():
            assert part not in shown
    finally:
        pool.close()


def test_whitespace_password_round_trips_exactly() -> None:
    assert parse_conninfo("mssql://u:a\tb c@h/db")["password"] == "a\tb c"


# ------------------------------------------------------------------ 2. / # ? in a URL
@pytest.mark.parametrize("sep", ["/", "#", "?"])
def test_unencoded_separator_in_password_is_rejected_without_leaking(sep: str) -> None:
    url = f"mssql://app:S3c{sep}r3tPW@db.example.com:1433/orders"
    with pytest.raises(ConfigError) as info:
        ConnectionPool(url, min_size=0, background=False)
    text = str(info.value)
    assert "percent-encode the password" in text
    assert "mssql://app:***@db.example.com:1433/orders" in text
    assert "S3c" not in text and "r3tPW" not in text
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize("sep", ["/", "#", "?"])
def test_a_callable_returning_an_ambiguous_url_leaks_nowhere(
        sep: str, caplog: pytest.LogCaptureFixture) -> None:
    # resolved on every connect: the error reaches PoolTimeout and a WARNING per attempt
    caplog.set_level(logging.DEBUG, logger="mssql_pool")
    url = f"mssql://app:S3c{sep}r3tPW@db.example.com:1433/orders"
    with ConnectionPool(lambda: url, min_size=0, background=False) as pool:
        with pytest.raises(MssqlPoolError) as info:
            pool.getconn(timeout=0.05)
    texts = [str(info.value), repr(info.value), str(info.value.__cause__),
             str(getattr(info.value, "last_error", "")), caplog.text,
             repr(pool.last_connect_error)]
    assert "percent-encode the password" in caplog.text
    for text in texts:
        assert "S3c" not in text and "r3tPW" not in text


def test_percent_encoded_separators_are_accepted() -> None:
    kw = parse_conninfo("mssql://app:S3c%2Fr%23t%3FP%40W%25@h/db")
    assert kw["password"] == "S3c/r#t?P@W%"


def test_bad_percent_escape_in_password_is_rejected() -> None:
    with pytest.raises(ConfigError, match="percent-encode") as info:
        parse_conninfo("mssql://u:100%sure@h/db")
    assert "sure" not in str(info.value)


# ------------------------------------------------------------------ 3. ODBC-style
@pytest.mark.parametrize(
    ("text", "password"),
    [
        ("Server=h;UID=u;PWD={S3c;retPW};Database=db", "S3c;retPW"),
        ("Server=h;UID=u;Password=S3c retPW;Database=db", "S3c retPW"),
        ("Server=h;UID=u;PWD=S3c,retPW", "S3c,retPW"),
        ("Server=h;UID=u;PWD={S3c}}retPW}", "S3c}retPW"),
    ],
)
def test_odbc_style_strings_parse_and_redact(text: str, password: str) -> None:
    assert parse_conninfo(text)["password"] == password
    for shown in (redact_conninfo(text), redact(text), repr(make_config(conninfo=text))):
        assert "retPW" not in shown and "S3c" not in shown
    assert redact_conninfo(text).startswith("Server=h;UID=u;")


def test_odbc_server_comma_port() -> None:
    kw = parse_conninfo("Server=db.example.com,1444;UID=u;PWD=x;Database=d")
    assert (kw["server"], kw["port"], kw["database"]) == ("db.example.com", 1444, "d")


def test_odbc_unbraced_semicolon_is_an_error_without_the_tail() -> None:
    with pytest.raises(ConfigError) as info:
        parse_conninfo("Server=h;PWD=S3c;retPW")
    assert "retPW" not in str(info.value) and "S3c" not in str(info.value)
    assert "retPW" not in redact_conninfo("Server=h;PWD=S3c;retPW")


@pytest.mark.parametrize(
    "text",
    ["{'password': 'a b c'}", "PWD={S3c;retPW}", "Password=S3c retPW;", "PWD=S3c,retPW",
     "x mssql://u:S3c retPW@h y"],
)
def test_free_text_redaction_covers_the_whole_secret(text: str) -> None:
    out = redact(text)
    assert "retPW" not in out and "b c" not in out


def test_known_secret_masked_only_in_secret_positions() -> None:
    text = "login to mssql://u:a@h as u failed: check a password=a"
    out = redact(text, secrets=["a"])
    assert out == "login to mssql://u:***@h as u failed: check a password=***"


# ------------------------------------------------------------------ 5. numbers in range
@pytest.mark.parametrize(
    ("option", "value", "parameter"),
    [
        ("endpoint_breaker", {"reset_timeout": math.inf}, "endpoint_breaker.reset_timeout"),
        ("endpoint_breaker", {"reset_timeout": math.nan}, "endpoint_breaker.reset_timeout"),
        ("endpoint_breaker", {"max_reset_timeout": math.nan},
         "endpoint_breaker.max_reset_timeout"),
        ("endpoint_breaker", {"probe_timeout": math.nan}, "endpoint_breaker.probe_timeout"),
        ("endpoint_breaker", {"probe_timeout": 1e300}, "endpoint_breaker.probe_timeout"),
        ("circuit_breaker", {"reset_timeout": math.inf}, "circuit_breaker.reset_timeout"),
        ("circuit_breaker", {"reset_timeout": math.nan}, "circuit_breaker.reset_timeout"),
        ("circuit_breaker", {"max_reset_timeout": math.inf},
         "circuit_breaker.max_reset_timeout"),
        ("maintenance_interval", 1e10, "maintenance_interval"),
        ("timeout", 1e10, "timeout"),
        ("max_lifetime", 1e300, "max_lifetime"),
        ("max_size", 10**9, "max_size"),
    ],
)
def test_unusable_numbers_are_rejected_naming_the_outer_option(
        option: str, value: Any, parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionPool("mssql://u:p@h/db", background=False, min_size=0, **{option: value})
    assert info.value.parameter == parameter


@pytest.mark.parametrize("kw", [{"reset_timeout": math.nan}, {"reset_timeout": math.inf},
                                {"reset_timeout": 1, "max_reset_timeout": math.nan},
                                {"probe_timeout": math.nan}, {"reset_timeout": "5"}])
def test_breaker_rejects_non_finite_intervals(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker(**kw)


# ------------------------------------------------------------------ 6. conninfo at construction
@pytest.mark.parametrize(
    ("conninfo", "parameter"),
    [
        ("", "conninfo"),
        ({}, "conninfo.server"),
        ("mssql:///db", "conninfo.server"),
        ("mssql://u:p@/db", "conninfo.server"),
        ("postgres://u:p@h/db", "conninfo"),
        ("mssql://u:p@h:70000/db", "conninfo.port"),
        ("mssql://u:p@h:abc/db", "conninfo.port"),
        ("mssql://u:p@h/db?bogus=1", "conninfo.bogus"),
        ("mssql://u:p@h/db?timeout=-5", "conninfo.timeout"),
        ("mssql://u:p@h/db?tds_version=9.9", "conninfo.tds_version"),
        ("mssql://u:p@h/db?charset=NOPE", "conninfo.charset"),
        ("mssql://u:p@h/db?autocommit=maybe", "conninfo.autocommit"),
        ({"server": "h", "port": 0}, "conninfo.port"),
        ({"server": "h", "timeout": -1}, "conninfo.timeout"),
        ({"server": "h", "bogus": 1}, "conninfo.bogus"),
        ({"server": "h", "user": 5}, "conninfo.user"),
        ({"server": "bad host"}, "conninfo.server"),
        ("just words", "conninfo"),
    ],
)
def test_connection_parameters_checked_at_construction(conninfo: Any, parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionPool(conninfo, background=False, min_size=0)
    assert info.value.parameter == parameter


def test_valid_forms_are_accepted() -> None:
    for conninfo in ("mssql://u:p@h:1433/db?tds_version=7.3&charset=UTF-8&timeout=5",
                     {"host": "h", "user": "u", "password": "p", "port": "1433"},
                     "Server=h;UID=u;PWD=p;Database=db;TDS_Version=7.4"):
        cfg = make_config(conninfo=conninfo, background=False, min_size=0)
        assert cfg.conninfo == conninfo


# ------------------------------------------------------------------ 7. per-call arguments
@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1, "5", True, 1e300])
def test_getconn_timeout_is_checked(timeout: Any) -> None:
    with ConnectionPool(connect=factory, min_size=0, background=False) as pool:
        with pytest.raises(ConfigError) as info:
            pool.getconn(timeout=timeout)
        assert info.value.parameter == "timeout"
        assert pool.get_stats()["requests_num"] == 0


@pytest.mark.parametrize("bad", [None, object(), "conn"])
def test_putconn_takes_only_a_pooled_connection(bad: Any) -> None:
    with ConnectionPool(connect=factory, min_size=0, background=False) as pool:
        with pytest.raises(TypeError, match="putconn"):
            pool.putconn(bad)


# ------------------------------------------------------------------ 8. pool names
@pytest.mark.parametrize("name", ["a\nINFO forged line", "tab\there", "nul\x00", "esc\x1b[31m",
                                  "x" * (MAX_NAME + 1), "y" * 100_000, "line\u2028sep"])
def test_pool_name_with_control_characters_or_too_long_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionPool(connect=factory, name=name, background=False)
    assert info.value.parameter == "name"
    assert len(str(info.value)) < 400


def test_printable_names_up_to_the_cap_are_fine() -> None:
    for name in ("orders", "commandes-é-日本", "z" * MAX_NAME):
        with ConnectionPool(connect=factory, name=name, background=False, min_size=0) as pool:
            assert pool.name == name
