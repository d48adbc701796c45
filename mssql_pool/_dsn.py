"""Connection strings -> ``pymssql.connect`` keyword arguments, and password redaction.

Three forms are accepted:

* a URL ``mssql://user:pass@host:1433/db?tds_version=7.4&appname=x`` (also
  ``mssql+pymssql://``, ``pymssql://`` and ``sqlserver://``); user, password and database
  are percent-decoded, query parameters become keyword arguments (numbers and booleans
  converted). A password holding ``@ / # ? %`` must be percent-encoded (``%40 %2F %23
  %3F %25``): a URL in which an ``@`` follows the host part is ambiguous and rejected;
* an ODBC-style string ``Server=host,1433;UID=user;PWD={pa;ss};Database=db`` (a value
  holding ``;`` goes in braces, ``}`` in it doubled);
* a mapping of ``pymssql.connect`` keyword arguments (``host`` is an alias of
  ``server``).

Every value is checked here, at construction, so a typo fails with a
:class:`~mssql_pool.errors.ConfigError` naming the parameter instead of failing every
connect later. ``tds_version`` defaults to ``"7.4"``: with FreeTDS' "auto", a server that
closes before answering PRELOGIN makes FreeTDS retry with a TDS 5.0 login, tripling
``login_timeout``.

Redaction is structural: :func:`redact_conninfo` parses a connection string the way
:func:`parse_conninfo` does and rebuilds it without the secret; no error message ever
contains a raw connection string. :func:`redact` is the defence in depth for free text
(exception messages, ``repr`` of mappings): it masks URL passwords and ``key=value``
secrets wherever they appear, erring towards masking too much.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from .errors import ConfigError

__all__ = [
    "DEFAULT_TDS_VERSION",
    "SECRET_KEYS",
    "TDS_VERSIONS",
    "parse_conninfo",
    "redact",
    "redact_conninfo",
]

DEFAULT_TDS_VERSION = "7.4"
SCHEMES = frozenset({"mssql", "mssql+pymssql", "sqlserver", "pymssql"})
#: Keys whose values are secrets, in any case.
SECRET_KEYS = frozenset({"password", "pwd", "passwd", "access_token", "token", "secret"})
#: The protocol versions ``pymssql.connect(tds_version=...)`` understands.
TDS_VERSIONS = ("4.2", "7.0", "7.1", "7.2", "7.3", "7.4", "8.0")
ENCRYPTION_MODES = ("default", "off", "request", "require")
_MASK = "***"
_AMBIGUOUS = ("percent-encode the password (and any '@', '/', '#', '?', '%' in the user "
              "name): %40 %2F %23 %3F %25")

# pymssql.connect's keyword arguments, by kind of value.
_STR_KEYS = frozenset({"server", "user", "password", "database", "appname"})
_INT_KEYS = frozenset({"timeout", "login_timeout", "arraysize"})
_BOOL_KEYS = frozenset({"autocommit", "as_dict", "use_datetime2", "read_only"})
CONNECT_KEYS = _STR_KEYS | _INT_KEYS | _BOOL_KEYS | {
    "port", "charset", "conn_properties", "tds_version", "encryption"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# ODBC keywords (lower case, spaces removed) -> pymssql keyword.
_ODBC_KEYS = {
    "server": "server", "datasource": "server", "address": "server", "addr": "server",
    "networkaddress": "server", "host": "server", "port": "port",
    "uid": "user", "userid": "user", "user": "user", "username": "user",
    "pwd": "password", "password": "password",
    "database": "database", "initialcatalog": "database",
    "app": "appname", "applicationname": "appname", "appname": "appname",
    "logintimeout": "login_timeout", "connecttimeout": "login_timeout",
    "connectiontimeout": "login_timeout", "login_timeout": "login_timeout",
    "timeout": "timeout", "commandtimeout": "timeout",
    "tds_version": "tds_version", "tdsversion": "tds_version",
    "charset": "charset", "autocommit": "autocommit", "encryption": "encryption",
    "encrypt": "encryption", "applicationintent": "read_only", "read_only": "read_only",
    "as_dict": "as_dict", "use_datetime2": "use_datetime2", "arraysize": "arraysize",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_LONG = 2048   # longest connection string / value we accept


# ------------------------------------------------------------------------------ parsing
def parse_conninfo(conninfo: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return ``pymssql.connect`` keyword arguments for a URL, ODBC string or mapping.

    Every value is validated; raises :class:`~mssql_pool.errors.ConfigError` naming the
    parameter (``conninfo`` or ``conninfo.<key>``). No message contains the password or
    the raw connection string.
    """
    if isinstance(conninfo, Mapping):
        kwargs = _from_mapping(conninfo)
    elif isinstance(conninfo, str):
        text = conninfo.strip()
        if not text:
            raise ConfigError("conninfo", "is empty: give a URL such as "
                                          "mssql://user:password@host:1433/database")
        if len(text) > 4 * _LONG:
            raise ConfigError("conninfo", f"is {len(text)} characters long; at most "
                                          f"{4 * _LONG} are accepted")
        if _SCHEME.match(text):
            kwargs = _parse_url(text)
        elif "=" in text:
            kwargs = _parse_odbc(text)
        else:
            raise ConfigError("conninfo", "expected a URL (mssql://user:password@host:1433/db) "
                                          "or key=value pairs (Server=host;UID=user;PWD=...)")
    else:
        raise ConfigError(
            "conninfo", f"expected a URL string or a mapping, got {type(conninfo).__name__}"
        )
    if not kwargs.get("server"):
        raise ConfigError("conninfo.server", "no server/host given")
    kwargs.setdefault("tds_version", DEFAULT_TDS_VERSION)
    return kwargs


def _from_mapping(conninfo: Mapping[Any, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for key, value in conninfo.items():
        if not isinstance(key, str):
            raise ConfigError("conninfo", f"keys must be strings, got {type(key).__name__}")
        if key == "host":
            if "server" in conninfo:
                raise ConfigError("conninfo.host", "give server or host, not both")
            key = "server"
        kwargs[key] = _check_value(key, value)
    return kwargs


def _param(key: str) -> str:
    """``conninfo.<key>``, with an odd key (long, control characters) shown safely."""
    shown = key if key.isprintable() and len(key) <= 40 else repr(key[:40])
    return f"conninfo.{shown}"


def _check_value(key: str, value: Any) -> Any:
    """Validate one connect argument (given as a Python value); return it unchanged."""
    name = _param(key)
    if key not in CONNECT_KEYS:
        raise ConfigError(name, f"unknown connection parameter; known: "
                                f"{', '.join(sorted(CONNECT_KEYS))}")
    if value is None and key not in ("server",):
        return None
    if key in _STR_KEYS:
        _check_text(key, name, value)
    elif key == "port":
        _check_port(name, value)
    elif key in _INT_KEYS:
        _check_whole_number(key, name, value)
    elif key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be True or False, got {_show(value)}")
    elif key in ("tds_version", "encryption"):
        choices = TDS_VERSIONS if key == "tds_version" else ENCRYPTION_MODES
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {_show(value)}")
    elif key == "charset":
        if not isinstance(value, str) or not _known_charset(value):
            raise ConfigError(name, f"not a known character set: {_show(value)} "
                                    f"(e.g. UTF-8, CP1252, ISO-8859-1)")
    elif not isinstance(value, str) and not (
            isinstance(value, Iterable) and all(isinstance(v, str) for v in value)):
        # conn_properties: SQL text or a list of statements
        raise ConfigError(name, "must be SQL text or a list of SQL statements")
    return value


def _check_text(key: str, name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a string, got {type(value).__name__}")
    if key == "password":
        return   # any text at all; never echoed
    if len(value) > _LONG:
        raise ConfigError(name, f"is {len(value)} characters long; at most {_LONG}")
    if key == "server":
        if not value.strip() or _CONTROL.search(value) or any(c.isspace() for c in value):
            raise ConfigError(name, "must be a host name or address without spaces "
                                    "or control characters")
    elif _CONTROL.search(value):
        raise ConfigError(name, "must not contain control characters")


def _check_port(name: str, value: Any) -> None:
    port = value
    if isinstance(value, str) and value.strip().isdigit():
        port = int(value)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(name, f"must be a TCP port 1-65535, got {_show(value)}")


def _check_whole_number(key: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(name, f"must be a whole number, got {_show(value)}")
    low = 1 if key == "arraysize" else 0
    if value < low or value > 2_147_483:
        raise ConfigError(name, f"must be between {low} and 2147483, got {_show(value)}")


def _known_charset(name: str) -> bool:
    if not name or len(name) > 40 or _CONTROL.search(name):
        return False
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def _show(value: Any) -> str:
    """A short repr of a (non-secret) value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(key: str, text: str) -> Any:
    """A text value (from a URL or an ODBC string) as the Python value pymssql wants."""
    if key in _INT_KEYS or key == "port":
        stripped = text.strip()
        if not stripped.isdigit() or not stripped.isascii():
            what = "a TCP port 1-65535" if key == "port" else "a whole number >= 0"
            raise ConfigError(f"conninfo.{key}", f"must be {what}, got {_show(text)}")
        return int(stripped)
    if key in _BOOL_KEYS:
        low = text.strip().lower()
        if key == "read_only" and low in ("readonly", "readwrite"):
            return low == "readonly"
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"conninfo.{key}", f"must be true or false, got {_show(text)}")
    if key == "encryption" and text.strip().lower() in ("yes", "true", "mandatory", "strict"):
        return "require"
    if key == "encryption" and text.strip().lower() in ("no", "false", "optional"):
        return "off"
    return text


class _Url:
    """A URL split by structure: never raises, whatever the text."""

    def __init__(self, text: str) -> None:
        m = _SCHEME.match(text)
        self.scheme = m.group(1) if m else ""
        rest = text[m.end():] if m else text
        end = len(rest)
        for ch in "/?#":
            i = rest.find(ch)
            if i != -1:
                end = min(end, i)
        authority, tail = rest[:end], rest[end:]
        self.ambiguous = "@" in tail
        if self.ambiguous:
            # the userinfo runs to the last "@": mask all of it but the user name
            userinfo, _, after = rest.rpartition("@")
            self.userinfo: str | None = userinfo
            self.hostport, self.tail = after, ""
        elif "@" in authority:
            userinfo, _, hostport = authority.rpartition("@")
            self.userinfo, self.hostport, self.tail = userinfo, hostport, tail
        else:
            self.userinfo, self.hostport, self.tail = None, authority, tail
        if self.userinfo is not None:
            user, colon, password = self.userinfo.partition(":")
            self.user: str | None = user
            self.password: str | None = password if colon else None
        else:
            self.user = self.password = None

    def redacted(self) -> str:
        auth = ""
        if self.user is not None:
            auth = self.user + (":" + _MASK if self.password is not None else "") + "@"
        path, q, query = self.tail.partition("?")
        if q:
            pairs = []
            for pair in query.split("&"):
                key, eq, _value = pair.partition("=")
                secret = eq and unquote(key).lower() in SECRET_KEYS
                pairs.append(f"{key}={_MASK}" if secret else pair)
            path += "?" + "&".join(pairs)
        return f"{self.scheme}://{auth}{self.hostport}{path}"


def _parse_url(url: str) -> dict[str, Any]:
    u = _Url(url)
    if u.ambiguous:
        raise ConfigError("conninfo", f"an '@' follows the host part, so the URL is "
                                      f"ambiguous; {_AMBIGUOUS}; in {u.redacted()}")
    if u.scheme.lower() not in SCHEMES:
        raise ConfigError("conninfo", f"URL scheme must be one of {', '.join(sorted(SCHEMES))}, "
                                      f"got {_show(u.scheme)} in {u.redacted()}")
    if u.userinfo is not None and ("%" in u.userinfo) and not _valid_escapes(u.userinfo):
        raise ConfigError("conninfo", f"a '%' in the user name or password is not followed "
                                      f"by two hex digits; {_AMBIGUOUS}; in {u.redacted()}")
    kwargs: dict[str, Any] = {}
    host, port_text = _split_hostport(u.hostport, u.redacted())
    if host:
        kwargs["server"] = unquote(host)
    if port_text is not None:
        kwargs["port"] = _convert("port", port_text)
    if u.user is not None and u.user != "":
        kwargs["user"] = unquote(u.user)
    if u.password is not None:
        kwargs["password"] = unquote(u.password)
    path, _, query = u.tail.partition("?")
    if "#" in query or "#" in path:
        raise ConfigError("conninfo", f"percent-encode a '#' (%23) in {u.redacted()}")
    database = unquote(path[1:] if path.startswith("/") else path)
    if "/" in database:
        raise ConfigError("conninfo.database", f"one database name after the host, got "
                                               f"{_show(database)}")
    if database:
        kwargs["database"] = database
    _read_query(query, kwargs)
    for key, value in list(kwargs.items()):
        kwargs[key] = _check_value(key, value)
    return kwargs


def _read_query(query: str, kwargs: dict[str, Any]) -> None:
    """The URL's ``?key=value&...`` into ``kwargs`` (converted, not yet checked)."""
    for pair in query.split("&"):
        if not pair:
            continue
        key_text, eq, value_text = pair.partition("=")
        key = unquote(key_text.replace("+", " "))
        if key == "host":
            key = "server"
        if key in kwargs:
            raise ConfigError(_param(key), "given twice")
        if key not in CONNECT_KEYS:
            raise ConfigError(_param(key), f"unknown URL query parameter; known: "
                                           f"{', '.join(sorted(CONNECT_KEYS))}")
        value = unquote(value_text.replace("+", " ")) if eq else ""
        kwargs[key] = _convert(key, value)


def _valid_escapes(text: str) -> bool:
    return re.search(r"%(?![0-9A-Fa-f]{2})", text) is None


def _split_hostport(hostport: str, shown: str) -> tuple[str, str | None]:
    if hostport.startswith("["):   # [IPv6]:port
        close = hostport.find("]")
        if close == -1:
            raise ConfigError("conninfo.server", f"unclosed '[' in {shown}")
        host, rest = hostport[1:close], hostport[close + 1:]
        if rest and not rest.startswith(":"):
            raise ConfigError("conninfo.server", f"unexpected text after ']' in {shown}")
        return host, rest[1:] if rest else None
    host, colon, port = hostport.rpartition(":")
    if not colon:
        return hostport, None
    return host, port


def _odbc_braced(text: str, i: int, index: int) -> tuple[str, int]:
    """The ``{...}`` value of pair ``index`` starting at ``text[i]`` (``}}`` is a ``}``):
    the value, and where the pair ends (at its ``;`` or the end of the text)."""
    n = len(text)
    j, chars = i + 1, []
    while True:
        if j >= n:
            raise ConfigError("conninfo", f"pair {index}: a '{{' value is not closed "
                                          f"by '}}'; {_ODBC_HINT}")
        if text[j] == "}":
            if j + 1 < n and text[j + 1] == "}":
                chars.append("}")
                j += 2
                continue
            break
        chars.append(text[j])
        j += 1
    i = j + 1
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] != ";":
        raise ConfigError("conninfo", f"pair {index}: text after a '}}' that closes a "
                                      f"value; {_ODBC_HINT}")
    return "".join(chars), i


def _parse_odbc(text: str) -> dict[str, Any]:
    """``Key=value;Key={va;lue}`` pairs. Messages name known keys only: a key that
    is not one may be the tail of a password that needed braces."""
    kwargs: dict[str, Any] = {}
    i, n, index = 0, len(text), 0
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        if i >= n:
            break
        index += 1
        eq = text.find("=", i)
        semi = text.find(";", i)
        if eq == -1 or (semi != -1 and semi < eq):
            raise ConfigError("conninfo", f"pair {index} of the key=value string has no '=': "
                                          f"{_ODBC_HINT}")
        raw_key = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "{":
            value, i = _odbc_braced(text, i, index)
        else:
            end = text.find(";", i)
            end = n if end == -1 else end
            value = text[i:end].strip()
            i = end
        key = _ODBC_KEYS.get(raw_key.lower().replace(" ", ""))
        if key is None:
            raise ConfigError("conninfo", f"pair {index} of the key=value string is not a "
                                          f"known keyword (Server, Port, UID, PWD, Database, "
                                          f"App, TDS_Version, Login Timeout, ...); "
                                          f"{_ODBC_HINT}")
        if key in kwargs:
            raise ConfigError(f"conninfo.{key}", "given twice")
        if key == "server" and "," in value:   # ODBC's host,port
            value, _, port = value.partition(",")
            kwargs["port"] = _convert("port", port)
        kwargs[key] = value if key in ("password", "user", "database", "appname",
                                       "server", "charset", "tds_version") \
            else _convert(key, value)
    for key, value in list(kwargs.items()):
        kwargs[key] = _check_value(key, value)
    return kwargs


_ODBC_HINT = "a value holding ';' or starting with '{' goes in braces: PWD={a;b} ('}' doubled)"


# ---------------------------------------------------------------------------- redaction
def redact_conninfo(conninfo: object) -> str:
    """A connection string or mapping as text without its secrets, by structure.

    A URL keeps everything but the password (``mssql://user:***@host:1433/db?...``); an
    ambiguous one is masked up to its last ``@``. An ODBC-style string keeps its keys and
    non-secret values. A mapping is shown with secret values masked. Anything else goes
    through :func:`redact`. Never raises.
    """
    if isinstance(conninfo, Mapping):
        return redact(conninfo)
    if not isinstance(conninfo, str):
        return "<callable>" if callable(conninfo) else redact(conninfo)
    text = conninfo.strip()
    if _SCHEME.match(text):
        return _Url(text).redacted()
    if "=" in text:
        return _redact_odbc(text)
    return redact(text)


def _redact_odbc(text: str) -> str:
    """Keys and non-secret values of an ODBC-style string; a secret's value (braced or
    not) becomes ***, and so does everything after a pair that does not parse."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        eq = text.find("=", i)
        semi = text.find(";", i)
        if eq == -1 or (semi != -1 and semi < eq):
            out.append(_MASK)          # not key=value: it may be a password's tail
            break
        raw_key = text[i:eq]
        secret = raw_key.strip().lower().replace(" ", "") in SECRET_KEYS
        j = eq + 1
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "{":
            k = j + 1
            while k < n:
                if text[k] == "}":
                    if k + 1 < n and text[k + 1] == "}":
                        k += 2
                        continue
                    break
                k += 1
            if k >= n:   # unclosed brace: everything after it may be secret
                out.append(f"{raw_key}={_MASK}" if secret else f"{raw_key}={{{_MASK}")
                break
            value = text[j:k + 1]
            end = text.find(";", k + 1)
            end = n if end == -1 else end
            value += text[k + 1:end]
        else:
            end = text.find(";", j)
            end = n if end == -1 else end
            value = text[j:end]
        out.append(f"{raw_key}={_MASK if secret else value}")
        i = end + 1
        if end < n and secret and not value.strip().startswith("{"):
            # an unbraced secret: what follows may be its tail when it held a ';'
            rest = text[i:]
            if rest.strip() and not re.match(r"\s*[A-Za-z_ ]+=", rest):
                out.append(_MASK)
                break
    return ";".join(out)


# URL userinfo in free text: scheme://user:secret@host -> scheme://user:***@host. The
# secret runs to the last "@" on the line (an "@" or a space in a password over-masks
# rather than leaks).
# (So a message names its redacted URL last: an "@" after it would be masked too.)
_URL_PASSWORD = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\r\n]*(?=@)")
# key=value / key: value / 'key': 'value' / "key"="value" / Key={value} for secret keys.
_KEYS = "|".join(sorted(SECRET_KEYS))
_KV_PASSWORD = re.compile(
    r"(?P<pre>(?<![A-Za-z0-9_])['\"]?(?:" + _KEYS + r")['\"]?\s*[=:]\s*)"
    r"(?:(?P<sq>')(?:[^'\\]|\\.)*'?|(?P<dq>\")(?:[^\"\\]|\\.)*\"?"
    r"|(?P<br>\{)(?:[^}]|\}\})*\}?|[^;\r\n]*)",
    re.IGNORECASE,
)


def _kv_mask(m: re.Match[str]) -> str:
    opening = m.group("sq") or m.group("dq") or m.group("br") or ""
    closing = {"'": "'", '"': '"', "{": "}"}.get(opening, "")
    return m.group("pre") + opening + _MASK + closing


def redact(text_or_dsn: object, secrets: Iterable[str] = ()) -> str:
    """Return ``text_or_dsn`` as text with every password replaced by ``***``.

    Accepts a mapping of connect arguments (secret values masked, other values redacted
    in turn) or any text: an exception message, a URL, an ODBC-style ``PWD=...;``
    string, a dict repr. ``secrets`` are passwords known to the caller: they are masked
    where they stand in a secret's position (after ``user:`` in a URL, after a secret
    key), raw or percent-encoded, not where the same letters form an ordinary word.
    """
    if isinstance(text_or_dsn, Mapping):
        items = ", ".join(
            f"{k!r}: {_MASK!r}" if str(k).lower() in SECRET_KEYS
            else f"{k!r}: {redact(v, secrets)!r}"
            for k, v in text_or_dsn.items()
        )
        return "{" + items + "}"
    text = text_or_dsn if isinstance(text_or_dsn, str) else str(text_or_dsn)
    for secret in secrets:
        if not secret:
            continue
        for form in dict.fromkeys((secret, quote(secret, safe=""), repr(secret)[1:-1])):
            text = _mask_known(text, form)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("pre") + _MASK, text)
    return _KV_PASSWORD.sub(_kv_mask, text)


def _mask_known(text: str, secret: str) -> str:
    """Mask ``secret`` where it follows ``user:`` in a URL or a secret key's ``=``/``:``."""
    escaped = re.escape(secret)
    text = re.sub(r"(://[^:/@\s]*:)" + escaped + r"(?=@)", lambda m: m.group(1) + _MASK, text)
    return re.sub(
        r"((?<![A-Za-z0-9_])['\"]?(?:" + _KEYS + r")['\"]?\s*[=:]\s*['\"{]?)" + escaped,
        lambda m: m.group(1) + _MASK, text, flags=re.IGNORECASE)
