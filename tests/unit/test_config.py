"""PoolConfig validation: every bad option names its parameter; the repr hides secrets."""

from __future__ import annotations

import dataclasses

import pytest

from mssql_pool import ConfigError, ConnectionPool, PoolConfig
from mssql_pool.config import make_config


def factory() -> object:
    return object()


def test_defaults_are_the_documented_ones() -> None:
    cfg = make_config(connect=factory)
    assert (cfg.min_size, cfg.max_size, cfg.timeout, cfg.max_waiting) == (1, 10, 30.0, 0)
    assert cfg.check == "SELECT 1" and cfg.validate_after == 0.5 and cfg.reset == "auto"
    assert cfg.keepalive is None and cfg.leak_timeout is None
    assert cfg.name.startswith("pool-")


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"min_size": -1}, "min_size"),
        ({"min_size": 1.5}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"min_size": 5, "max_size": 2}, "max_size"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_waiting": -3}, "max_waiting"),
        ({"max_idle": 0}, "max_idle"),
        ({"max_lifetime": -5}, "max_lifetime"),
        ({"keepalive": 0}, "keepalive"),
        ({"validate_after": -0.1}, "validate_after"),
        ({"leak_timeout": 0}, "leak_timeout"),
        ({"check": ""}, "check"),
        ({"check": 42}, "check"),
        ({"reset": "sometimes"}, "reset"),
        ({"configure": "SET NOCOUNT ON"}, "configure"),
        ({"reconnect_failed": 1}, "reconnect_failed"),
        ({"clock": None}, "clock"),
        ({"name": 7}, "name"),
        ({"background": "yes"}, "background"),
        ({"bogus": 1}, "bogus"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_bad_options_name_the_parameter(options: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionPool(connect=factory, **{"background": False, **options})  # type: ignore[arg-type]
    assert info.value.parameter == parameter
    assert str(info.value).startswith(parameter)
    assert isinstance(info.value, ValueError)


def test_exactly_one_connection_source() -> None:
    with pytest.raises(ConfigError, match="conninfo"):
        ConnectionPool(background=False)
    with pytest.raises(ConfigError, match="conninfo"):
        ConnectionPool("mssql://h/db", connect=factory, background=False)
    with pytest.raises(ConfigError, match="conninfo"):
        ConnectionPool(42, background=False)  # type: ignore[arg-type]


def test_config_is_frozen_and_repr_hides_password() -> None:
    pool = ConnectionPool("mssql://app:s3cr3t@db.example.com/orders", name="orders",
                          background=False, min_size=2)
    assert isinstance(pool.config, PoolConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.config.min_size = 3  # type: ignore[misc]
    text = repr(pool.config)
    assert "s3cr3t" not in text and "***" in text
    assert "min_size=2" in text and "name='orders'" in text
    mapping_pool = ConnectionPool({"server": "h", "user": "u", "password": "hunter2"},
                                  background=False)
    assert "hunter2" not in repr(mapping_pool.config)
    pool.close()
    mapping_pool.close()


def test_max_size_none_means_at_least_ten() -> None:
    assert make_config(connect=factory, min_size=12, max_size=None).max_size == 12
    assert make_config(connect=factory, max_size=None).max_size == 10
