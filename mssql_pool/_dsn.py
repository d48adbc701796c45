"""Connection strings -> ``pymssql.connect`` keyword arguments, and password redaction.

Two forms are accepted:

* a URL ``mssql://user:pass@host:1433/db?tds_version=7.4&appname=x`` (also
  ``mssql+pymssql://`` and ``sqlserver://``); user and password are percent-decoded,
  query parameters become keyword arguments (known numeric/boolean ones converted);
* a mapping of ``pymssql.connect`` keyword arguments (``host`` is accepted as an alias
  of ``server``).

Either way ``tds_version`` defaults to ``"7.4"``: with FreeTDS' "auto", a server that
closes before answering PRELOGIN makes FreeTDS retry with a TDS 5.0 login, tripling
``login_timeout`` (see FACTS.md).

:func:`redact` is the one place that hides passwords. Every repr, log line and error
message that may contain connection text goes through it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

__all__ = ["DEFAULT_TDS_VERSION", "parse_conninfo", "redact", "SECRET_KEYS"]

DEFAULT_TDS_VERSION = "7.4"
SCHEMES = frozenset({"mssql", "mssql+pymssql", "sqlserver", "pymssql"})
#: Keys whose values are secrets, in any case.
SECRET_KEYS = frozenset({"password", "pwd", "passwd", "access_token", "token", "secret"})
_MASK = "***"

_INT_KEYS = frozenset({"port", "login_timeout", "timeout", "arraysize"})
_BOOL_KEYS = frozenset({"autocommit", "as_dict", "use_datetime2", "read_only"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_conninfo(conninfo: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return ``pymssql.connect`` keyword arguments for a URL or a mapping.

    Raises :class:`~mssql_pool.errors.ConfigError` naming ``conninfo`` when the
    input cannot be understood (the message never contains the password).
    """
    if isinstance(conninfo, Mapping):
        kwargs = dict(conninfo)
        if "host" in kwargs and "server" not in kwargs:
            kwargs["server"] = kwargs.pop("host")
    elif isinstance(conninfo, str):
        kwargs = _parse_url(conninfo)
    else:
        raise ConfigError(
            "conninfo", f"expected a URL string or a mapping, got {type(conninfo).__name__}"
        )
    if not kwargs.get("server"):
        raise ConfigError("conninfo", f"no server/host given in {redact(conninfo)}")
    kwargs.setdefault("tds_version", DEFAULT_TDS_VERSION)
    return kwargs


def _parse_url(url: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError("conninfo", f"cannot parse {redact(url)}: {redact(str(exc))}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(
            "conninfo",
            f"URL scheme must be one of {sorted(SCHEMES)}, got {parts.scheme!r} in {redact(url)}",
        )
    kwargs: dict[str, Any] = {}
    if parts.hostname:
        kwargs["server"] = unquote(parts.hostname)
    if port is not None:
        kwargs["port"] = port
    if parts.username is not None:
        kwargs["user"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    database = unquote(parts.path.lstrip("/"))
    if database:
        kwargs["database"] = database
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kwargs[key] = _convert(key, value)
    return kwargs


def _convert(key: str, value: str) -> Any:
    if key in _INT_KEYS:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"conninfo.{key}", f"expected an integer, got {value!r}") from None
    if key in _BOOL_KEYS:
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"conninfo.{key}", f"expected true/false, got {value!r}")
    return value


# URL userinfo: scheme://user:secret@host -> scheme://user:***@host (greedy to the last "@"
# of the token: a raw "@" in a password over-redacts rather than leaks).
_URL_PASSWORD = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s]*(?=@)")
# key=value / key: value / 'key': 'value' / "key"="value" forms for every secret key.
_KEYS = "|".join(sorted(SECRET_KEYS))
_KV_PASSWORD = re.compile(
    r"(?P<pre>(?<![A-Za-z0-9_])['\"]?(?:" + _KEYS + r")['\"]?\s*[=:]\s*)"
    r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s;,&)}]+)",
    re.IGNORECASE,
)


def redact(text_or_dsn: object) -> str:
    """Return ``text_or_dsn`` as text with every password replaced by ``***``.

    Accepts a URL, a mapping of connect arguments, or any text (an exception message,
    an ODBC-style ``PWD=...;`` string, a dict repr). Non-string input is turned into
    text first; a mapping is rendered with its secret values masked.
    """
    if isinstance(text_or_dsn, Mapping):
        items = ", ".join(
            f"{k!r}: {_MASK!r}" if str(k).lower() in SECRET_KEYS else f"{k!r}: {redact(v)!r}"
            for k, v in text_or_dsn.items()
        )
        return "{" + items + "}"
    text = text_or_dsn if isinstance(text_or_dsn, str) else str(text_or_dsn)
    if "@" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("pre") + _MASK, text)
    return _KV_PASSWORD.sub(lambda m: m.group("pre") + _MASK, text)
