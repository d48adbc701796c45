"""SQL Server column types for the TDS test server: declared types, coercion, wire encodings.

SQLite keeps a value's storage class, not its SQL Server type. This module recovers the type a
real server would report for each result column, from (in order of precedence):

* the select list: ``CAST(e AS T)``, ``CONVERT(T, e)``, a typed variable (``DECLARE`` or a
  ``sp_executesql`` parameter declaration), a numeric or string literal;
* the declared type of a table column the select list names (``PRAGMA table_info``);
* the Python values themselves (:func:`._columns.infer_columns`).

Values are then coerced to that type (``Decimal`` quantized to the scale, ``char(n)`` padded,
ISO text parsed into dates...) and the wire encoders registered here in
:data:`._protocol.EXTRA_KINDS` write the types the base codec lacks: tinyint, smallint, real,
char/varchar/nchar (and varchar(max) as PLP), binary, time and datetimeoffset.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import functools
import re
import sqlite3
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._tsql import Tok, tokenize, unquote

if TYPE_CHECKING:
    from ._engine import Executor

K_TINYINT = "tinyint"
K_SMALLINT = "smallint"
K_REAL = "real"
K_CHAR = "char"
K_VARCHAR = "varchar"
K_NCHAR = "nchar"
K_BINARY = "binary"
K_TIME = "time"
K_DTO = "datetimeoffset"


@dataclass(frozen=True)
class SqlType:
    """A declared SQL Server type: kind (a ``K_*`` name), size in bytes (-1 = max), p, s."""

    kind: str
    size: int = 0
    precision: int = 18
    scale: int = 0
    fixed: bool = False  # char(n)/nchar(n)/binary(n): values are padded to the size

    def column(self, name: str) -> P.Column:
        return P.Column(name, self.kind, size=self.size, precision=self.precision,
                        scale=self.scale)


_TYPE = re.compile(
    r"^\s*(\w+(?:\s+precision|\s+varying)?)\s*(?:\(\s*(max|\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$",
    re.IGNORECASE,
)


_SIMPLE = {
    "bit": SqlType(P.K_BIT), "tinyint": SqlType(K_TINYINT), "smallint": SqlType(K_SMALLINT),
    "int": SqlType(P.K_INT), "integer": SqlType(P.K_INT), "bigint": SqlType(P.K_BIGINT),
    "real": SqlType(K_REAL), "double": SqlType(P.K_FLOAT),
    "money": SqlType(P.K_DECIMAL, precision=19, scale=4),
    "smallmoney": SqlType(P.K_DECIMAL, precision=10, scale=4),
    "date": SqlType(P.K_DATE), "datetime": SqlType(P.K_DATETIME),
    "smalldatetime": SqlType(P.K_DATETIME), "uniqueidentifier": SqlType(P.K_GUID),
    "text": SqlType(K_VARCHAR, -1), "ntext": SqlType(P.K_NVARCHAR, -1),
    "image": SqlType(P.K_VARBINARY, -1), "xml": SqlType(P.K_NVARCHAR, -1),
    "sysname": SqlType(P.K_NVARCHAR, 256),
}


@functools.lru_cache(maxsize=1024)
def parse_type(text: str, in_cast: bool = False, table: bool = False) -> SqlType | None:
    """``'decimal(10, 2)'`` -> SqlType; None for a type this server does not model.

    ``table``: a declared column type as SQLite keeps it, where ``(max)`` was dropped, so a
    string or binary type without a length is (max).
    """
    m = _TYPE.match(text)
    if m is None:
        return None
    name = m.group(1).lower().split()[0]
    arg = m.group(2)
    n = -1 if arg is not None and arg.lower() == "max" else int(arg) if arg else None
    s = int(m.group(3)) if m.group(3) else None
    default_len = 30 if in_cast else -1 if table else 1
    if name in _SIMPLE:
        return _SIMPLE[name]
    if name == "float":
        return SqlType(K_REAL if n is not None and 0 < n <= 24 else P.K_FLOAT)
    if name in ("decimal", "numeric", "dec"):
        p = n if n and n > 0 else 18
        return SqlType(P.K_DECIMAL, precision=min(p, 38), scale=min(s or 0, p))
    if name in ("char", "character", "varchar", "nchar", "nvarchar", "binary", "varbinary"):
        length = default_len if n is None else n
        if name in ("char", "character", "varchar"):
            kind = K_CHAR if name != "varchar" else K_VARCHAR
            return SqlType(kind, length, fixed=kind == K_CHAR)
        if name in ("nchar", "nvarchar"):
            kind = K_NCHAR if name == "nchar" else P.K_NVARCHAR
            return SqlType(kind, -1 if length < 0 else 2 * length, fixed=kind == K_NCHAR)
        kind = K_BINARY if name == "binary" else P.K_VARBINARY
        return SqlType(kind, length, fixed=kind == K_BINARY)
    if name in ("time", "datetime2", "datetimeoffset"):
        scale = 7 if n is None or n < 0 else min(n, 7)
        kind = {"time": K_TIME, "datetime2": P.K_DATETIME2, "datetimeoffset": K_DTO}[name]
        return SqlType(kind, scale=scale)
    return None


# ----------------------------------------------------------------------------- coercion


def _parse_dt(text: str) -> _dt.datetime:
    s = text.strip().replace("T", " ")
    m = re.match(r"^(.*?\d{2}:\d{2}(?::\d{2})?)(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?$", s)
    if m is None:
        return _dt.datetime.fromisoformat(s)
    frac = (m.group(2) or "")[:7]
    micro = round(int(frac[1:].ljust(7, "0")) / 10) if frac else 0
    base = _dt.datetime.fromisoformat(m.group(1))
    if micro >= 1_000_000:
        base += _dt.timedelta(seconds=1)
        micro -= 1_000_000
    value = base.replace(microsecond=micro)
    tz = m.group(3)
    if tz:
        if tz == "Z":
            return value.replace(tzinfo=_dt.timezone.utc)
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        off = _dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        return value.replace(tzinfo=_dt.timezone(sign * off))
    return value


def _to_datetime(v: Any) -> _dt.datetime:
    if isinstance(v, _dt.datetime):
        return v
    if isinstance(v, _dt.date):
        return _dt.datetime(v.year, v.month, v.day)
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode()
    if isinstance(v, str):
        if re.match(r"^\s*\d{1,2}:\d{2}", v):
            return _dt.datetime.combine(_dt.date(1900, 1, 1), _to_time(v))
        return _parse_dt(v)
    raise ValueError(f"not a date/time: {v!r}")


def _to_time(v: Any) -> _dt.time:
    if isinstance(v, _dt.datetime):
        return v.time()
    if isinstance(v, _dt.time):
        return v
    if isinstance(v, str) and re.match(r"^\s*\d{1,2}:\d{2}", v):
        return _parse_dt("1900-01-01 " + v.strip()).time()
    return _to_datetime(v).time()


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("latin-1", "replace")
    if isinstance(v, bool):
        return b"\x01" if v else b"\x00"
    if isinstance(v, int):
        return v.to_bytes(8 if v >= 2**31 or v < -(2**31) else 4, "big", signed=True)
    if isinstance(v, uuid.UUID):
        return v.bytes_le
    raise ValueError(f"not binary: {v!r}")


def _to_text(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("latin-1")
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, _dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, uuid.UUID):
        return str(v).upper()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return repr(v)
    return str(v)


def _to_decimal(v: Any, t: SqlType) -> decimal.Decimal:
    if isinstance(v, float):
        d = decimal.Decimal(repr(v))
    elif isinstance(v, bool):
        d = decimal.Decimal(int(v))
    else:
        d = decimal.Decimal(str(v).strip() if not isinstance(v, decimal.Decimal) else v)
    ctx = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_UP)
    return d.quantize(decimal.Decimal(1).scaleb(-t.scale), context=ctx)


def _to_bit(v: Any) -> bool:
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "false"):
            return s == "true"
        return float(s) != 0
    return bool(v)


def _to_dto(v: Any) -> _dt.datetime:
    d = _to_datetime(v)
    return d if d.tzinfo is not None else d.replace(tzinfo=_dt.timezone.utc)


def _to_date(v: Any) -> _dt.date:
    if isinstance(v, _dt.datetime):
        return v.date()
    if isinstance(v, _dt.date):
        return v
    return _to_datetime(v).date()


def _to_guid(v: Any) -> uuid.UUID:
    if isinstance(v, (bytes, bytearray)) and len(v) == 16:
        return uuid.UUID(bytes_le=bytes(v))
    return uuid.UUID(str(v).strip())


def _pad(t: SqlType, v: Any) -> Any:
    if not t.fixed or t.size <= 0:
        return v
    if isinstance(v, bytes):
        return v[: t.size].ljust(t.size, b"\x00")
    n = t.size // 2 if t.kind == K_NCHAR else t.size
    return v[:n].ljust(n)


_COERCE: dict[str, Callable[[Any, SqlType], Any]] = {
    P.K_BIT: lambda v, t: _to_bit(v),
    K_TINYINT: lambda v, t: int(v) if not isinstance(v, str) else int(float(v)),
    K_SMALLINT: lambda v, t: int(v) if not isinstance(v, str) else int(float(v)),
    P.K_INT: lambda v, t: int(v) if not isinstance(v, str) else int(float(v)),
    P.K_BIGINT: lambda v, t: int(v) if not isinstance(v, str) else int(v),
    K_REAL: lambda v, t: float(v),
    P.K_FLOAT: lambda v, t: float(v),
    P.K_DECIMAL: _to_decimal,
    K_CHAR: lambda v, t: _pad(t, _to_text(v)),
    K_VARCHAR: lambda v, t: _to_text(v),
    K_NCHAR: lambda v, t: _pad(t, _to_text(v)),
    P.K_NVARCHAR: lambda v, t: _to_text(v),
    K_BINARY: lambda v, t: _pad(t, _to_bytes(v)),
    P.K_VARBINARY: lambda v, t: _to_bytes(v),
    P.K_DATE: lambda v, t: _to_date(v),
    K_TIME: lambda v, t: _to_time(v),
    P.K_DATETIME: lambda v, t: _to_datetime(v).replace(tzinfo=None),
    P.K_DATETIME2: lambda v, t: _to_datetime(v).replace(tzinfo=None),
    K_DTO: lambda v, t: _to_dto(v),
    P.K_GUID: lambda v, t: _to_guid(v),
}


def coerce(t: SqlType, v: Any) -> Any:
    """``v`` as a value of type ``t`` (ValueError/ArithmeticError when it cannot be)."""
    if v is None:
        return None
    return _COERCE[t.kind](v, t)


def type_of_value(v: Any) -> SqlType | None:
    """The type SQL Server would give a typed parameter or variable holding ``v``."""
    if v is None:
        return None
    if isinstance(v, bool):
        return SqlType(P.K_BIT)
    if isinstance(v, int):
        return SqlType(P.K_INT if -(2**31) <= v < 2**31 else P.K_BIGINT)
    if isinstance(v, float):
        return SqlType(P.K_FLOAT)
    if isinstance(v, decimal.Decimal):
        sign, digits, exp = v.as_tuple()
        scale = max(0, -exp) if isinstance(exp, int) else 0
        return SqlType(P.K_DECIMAL, precision=max(min(len(digits), 38), scale, 1), scale=scale)
    if isinstance(v, _dt.datetime):
        return SqlType(K_DTO if v.tzinfo is not None else P.K_DATETIME2, scale=7)
    if isinstance(v, _dt.date):
        return SqlType(P.K_DATE)
    if isinstance(v, _dt.time):
        return SqlType(K_TIME, scale=7)
    if isinstance(v, uuid.UUID):
        return SqlType(P.K_GUID)
    if isinstance(v, (bytes, bytearray)):
        return SqlType(P.K_VARBINARY, -1 if len(v) > 8000 else 8000)
    if isinstance(v, str):
        return SqlType(P.K_NVARCHAR, -1 if len(v) > 4000 else 8000)
    return None


# ----------------------------------------------------------------------------- select lists

# CAST targets that SQLite's own CAST would mangle (NUMERIC affinity turns '2024-01-02' into
# 2024): the value passes through unchanged and is coerced in Python instead.
_PASS_THROUGH = {P.K_DATE, K_TIME, P.K_DATETIME, P.K_DATETIME2, K_DTO, P.K_GUID, P.K_DECIMAL}
_CLAUSE_END = {"FROM", "INTO", "WHERE", "GROUP", "ORDER", "HAVING", "UNION", "EXCEPT",
               "INTERSECT", "OPTION", "FOR", "WINDOW"}
_FUNC_TYPES = {
    "NEWID": SqlType(P.K_GUID), "GETDATE": SqlType(P.K_DATETIME),
    "GETUTCDATE": SqlType(P.K_DATETIME), "SYSDATETIME": SqlType(P.K_DATETIME2, scale=7),
    "SYSUTCDATETIME": SqlType(P.K_DATETIME2, scale=7),
    "SYSDATETIMEOFFSET": SqlType(K_DTO, scale=7),
}


def _match_paren(toks: Sequence[Tok], i: int) -> int:
    """Index of the ``)`` closing the ``(`` at i (len(toks) when unbalanced)."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].text == "(":
            depth += 1
        elif toks[j].text == ")":
            depth -= 1
            if depth == 0:
                return j
    return len(toks)


def _type_text(toks: Sequence[Tok]) -> str:
    return " ".join(t.text for t in toks)


def rewrite_casts(toks: list[Tok]) -> list[Tok]:
    """Replace CAST/CONVERT to date, time, guid and decimal types by their operand."""
    out: list[Tok] = []
    i = 0
    n = len(toks)
    while i < n:
        t = toks[i]
        u = t.up
        if (u in ("CAST", "TRY_CAST", "CONVERT", "TRY_CONVERT") and i + 1 < n
                and toks[i + 1].text == "("):
            end = _match_paren(toks, i + 1)
            inner = toks[i + 2 : end]
            operand, target = _split_cast(u, inner)
            if operand is not None and target is not None and target.kind in _PASS_THROUGH:
                out.append(Tok("op", "(", t.start, t.start))
                out.extend(rewrite_casts(operand))
                out.append(Tok("op", ")", t.end, t.end))
                i = end + 1
                continue
        out.append(t)
        i += 1
    return out


def split_top(toks: Sequence[Tok], sep: str = ",") -> list[list[Tok]]:
    """Split at ``sep`` (a token text, or an upper-case word) outside parentheses."""
    parts: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        if depth == 0 and (t.text == sep or t.up == sep):
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


def _split_cast(word: str, inner: Sequence[Tok]) -> tuple[list[Tok] | None, SqlType | None]:
    if word in ("CAST", "TRY_CAST"):
        parts = split_top(inner, "AS")
        if len(parts) < 2:
            return None, None
        return parts[0], parse_type(_type_text(parts[-1]), in_cast=True)
    parts = split_top(inner)
    if len(parts) < 2:
        return None, None
    # CONVERT(type, e[, style]): the style is ignored
    return parts[1], parse_type(_type_text(parts[0]), in_cast=True)


# What a select item is: ("type", SqlType) / ("column", name) / ("var", name) / None
Item = tuple[str, Any] | None


def select_items(toks: Sequence[Tok]) -> tuple[list[Item], list[str], bool]:
    """(one Item per select-list entry, table names after FROM/JOIN, has ``*``)."""
    if not toks or toks[0].up != "SELECT":
        return [], [], False
    i = 1
    n = len(toks)
    if i < n and toks[i].up in ("DISTINCT", "ALL"):
        i += 1
    if i < n and toks[i].up == "TOP":
        i += 1
        if i < n and toks[i].text == "(":
            i = _match_paren(toks, i) + 1
        else:
            i += 1
        if i < n and toks[i].up == "PERCENT":
            i += 1
        if i + 1 < n and toks[i].up == "WITH" and toks[i + 1].up == "TIES":
            i += 2
    start = i
    depth = 0
    while i < n:
        t = toks[i]
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif depth == 0 and t.kind == "word" and t.up in _CLAUSE_END:
            break
        i += 1
    items = split_top(toks[start:i])
    star = any(len(it) >= 1 and it[-1].text == "*" for it in items)
    tables = _from_tables(toks[i:])
    return [_classify(it) for it in items], tables, star


def _from_tables(toks: Sequence[Tok]) -> list[str]:
    names: list[str] = []
    for k, t in enumerate(toks):
        if t.up in ("FROM", "JOIN") and k + 1 < len(toks):
            j = k + 1
            parts = [toks[j]]
            while j + 2 < len(toks) and toks[j + 1].text == ".":
                j += 2
                parts.append(toks[j])
            last = parts[-1]
            if last.kind in ("word", "br", "dq"):
                names.append(unquote(last))
            elif last.kind == "temp":
                names.append("tmp__" + last.text.lstrip("#"))
    return names


def _strip_alias(it: list[Tok]) -> list[Tok]:
    if len(it) >= 3 and it[1].text == "=" and it[0].kind in ("word", "br", "dq", "str"):
        return it[2:]  # name = expr
    if len(it) >= 3 and it[-2].up == "AS":
        return it[:-2]
    if len(it) >= 2 and it[-1].kind in ("word", "br", "dq", "str") and it[-2].text != "." and (
        it[-2].kind != "word" or it[-2].up not in ("NULL",)
    ) and it[-1].up not in ("END", "NULL"):
        return it[:-1]
    return it


def _classify(it: list[Tok]) -> Item:
    e = _strip_alias(it)
    if not e:
        return None
    u0 = e[0].up
    if u0 in ("CAST", "TRY_CAST", "CONVERT", "TRY_CONVERT") and len(e) > 2 and e[1].text == "(":
        if _match_paren(e, 1) == len(e) - 1:
            _operand, target = _split_cast(u0, e[2:-1])
            return ("type", target) if target is not None else None
    if len(e) == 3 and e[0].kind == "word" and e[1].text == "(" and e[2].text == ")":
        ft = _FUNC_TYPES.get(u0)
        return ("type", ft) if ft is not None else None
    if u0 == "CURRENT_TIMESTAMP" and len(e) == 1:
        return ("type", SqlType(P.K_DATETIME))
    if len(e) == 1:
        t = e[0]
        if t.kind == "var":
            return ("var", t.text.lower())
        if t.kind == "num":
            if "." in t.text and "e" not in t.text.lower():
                whole, _, frac = t.text.partition(".")
                digits = len(whole.lstrip("0")) + len(frac)
                return ("exact", (SqlType(P.K_DECIMAL, precision=min(max(digits, 1, len(frac)), 38),
                                          scale=len(frac)), decimal.Decimal(t.text)))
            return None
        if t.kind == "str":
            text = unquote(t)
            if t.text[0] in "Nn":
                return ("type", SqlType(P.K_NVARCHAR, max(2, 2 * len(text))))
            return ("type", SqlType(K_VARCHAR, max(1, len(text.encode("utf-8")))))
        if t.kind in ("word", "br", "dq") and t.up != "NULL":
            return ("column", unquote(t).lower())
    if len(e) == 3 and e[1].text == "." and e[2].kind in ("word", "br", "dq"):
        return ("column", unquote(e[2]).lower())
    return None


# ----------------------------------------------------------------------------- table columns


_table_cache: dict[tuple[str, tuple[str, ...]], dict[str, SqlType]] = {}
_table_lock = threading.Lock()


def forget_tables() -> None:
    """A table was created, altered or dropped: declared types are looked up again."""
    with _table_lock:
        _table_cache.clear()


def table_types(con: sqlite3.Connection, tables: Sequence[str],
                database_key: str = "") -> dict[str, SqlType]:
    """Column name (lower case) -> declared type, for the named tables (first one wins).

    Cached per ``database_key`` (a database file) unless a table is a #temp one.
    """
    key = (database_key, tuple(tables))
    cacheable = bool(database_key) and not any(t.startswith("tmp__") for t in tables)
    if cacheable:
        hit = _table_cache.get(key)
        if hit is not None:
            return hit
    out = _table_types(con, tables)
    if cacheable:
        with _table_lock:
            if len(_table_cache) > 2048:
                _table_cache.clear()
            _table_cache[key] = out
    return out


def _table_types(con: sqlite3.Connection, tables: Sequence[str]) -> dict[str, SqlType]:
    out: dict[str, SqlType] = {}
    for name in tables:
        try:
            info = con.execute(f'PRAGMA table_info("{name}")').fetchall()
        except sqlite3.Error:
            continue
        for _cid, cname, ctype, _nn, _d, _pk in info:
            key = str(cname).lower()
            if key not in out and ctype:
                t = parse_type(str(ctype), table=True)
                if t is not None:
                    out[key] = t
    return out


@dataclass
class Shape:
    """What the select list of one statement says about its result columns."""

    items: list[Item]
    tables: list[str]
    star: bool


def shape_of(toks: Sequence[Tok]) -> Shape | None:
    items, tables, star = select_items(toks)
    if not items:
        return None
    if not tables and all(i is None for i in items):
        return None
    return Shape(items, tables, star)


def describe(ex: Executor, shape: Shape | None, names: list[str],
             rows: list[tuple[Any, ...]],
             infer: Callable[[list[str], list[tuple[Any, ...]]], list[P.Column]],
             ) -> tuple[list[P.Column], list[tuple[Any, ...]]]:
    """Result columns with SQL Server types, and the rows coerced to them."""
    cols = infer(names, rows)
    if shape is None:
        return cols, rows
    declared, exact = _declared_types(ex, shape, names)
    if not any(declared):
        return cols, rows
    out_rows = [list(r) for r in rows]
    for idx, t in enumerate(declared):
        if t is not None and _coerce_column(out_rows, rows, idx, t, exact):
            cols[idx] = _fit(t, [r[idx] for r in out_rows]).column(cols[idx].name)
    return cols, [tuple(r) for r in out_rows]


def _declared_types(ex: Executor, shape: Shape, names: list[str],
                    ) -> tuple[list[SqlType | None], dict[int, Any]]:
    """Per result column, the SQL Server type the statement gives it (None: unknown), and
    the exact value of the columns that are a literal or a variable."""
    declared: list[SqlType | None] = [None] * len(names)
    exact: dict[int, Any] = {}
    positional = not shape.star and len(shape.items) == len(names)
    tabtypes: dict[str, SqlType] | None = None
    var_types: dict[str, SqlType] = getattr(ex, "var_types", {})
    for idx, name in enumerate(names):
        item = shape.items[idx] if positional else None
        if item is None and not positional and shape.tables:
            item = ("column", name.lower())
        if item is None:
            continue
        what, arg = item
        if what == "type":
            declared[idx] = arg
        elif what == "exact":  # a literal: its text is more precise than SQLite's REAL
            declared[idx], exact[idx] = arg
        elif what == "var":
            value = ex.state.variables.get(arg)
            declared[idx] = var_types.get(arg) or type_of_value(value)
            exact[idx] = value
        elif what == "column" and shape.tables:
            if tabtypes is None:
                tabtypes = table_types(ex.conn, shape.tables,
                                       ex.engine.path(ex.state.database))
            declared[idx] = tabtypes.get(arg)
    return declared, exact


def _coerce_column(out_rows: list[list[Any]], rows: list[tuple[Any, ...]], idx: int,
                   t: SqlType, exact: dict[int, Any]) -> bool:
    """Column ``idx`` of ``out_rows`` coerced to ``t``; False (and the column as SQLite
    gave it) when a value does not fit the type."""
    try:
        if idx in exact:
            value = coerce(t, exact[idx])
            for r in out_rows:
                r[idx] = value
        else:
            for r in out_rows:
                r[idx] = coerce(t, r[idx])
    except (ValueError, TypeError, ArithmeticError, KeyError):
        for r, orig in zip(out_rows, rows, strict=True):
            r[idx] = orig[idx]
        return False
    return True


def _fit(t: SqlType, values: list[Any]) -> SqlType:
    """A variable-length type widened to hold every value (a column never truncates)."""
    if t.size < 0 or t.fixed or t.kind not in (K_VARCHAR, P.K_NVARCHAR, P.K_VARBINARY):
        return t
    per_char = 2 if t.kind == P.K_NVARCHAR else 1
    longest = max((len(v) * per_char for v in values if v is not None), default=0)
    if longest <= t.size:
        return t
    return SqlType(t.kind, 8000 if longest <= 8000 else -1)


def declare(ex: Executor, toks: Sequence[Tok]) -> None:
    """Remember the declared types of ``DECLARE @a INT = 1, @b NVARCHAR(10)``."""
    _declare_list(ex, toks[1:])


def declare_params(ex: Executor, decl: Any) -> None:
    """Remember the types of a ``sp_executesql`` ``@params`` declaration string."""
    if isinstance(decl, str) and decl.strip():
        _apply(ex, _params_of(decl))


@functools.lru_cache(maxsize=512)
def _params_of(decl: str) -> tuple[tuple[str, SqlType | None], ...]:
    try:
        return _declared(tokenize(decl))
    except Exception:  # noqa: BLE001 - a malformed declaration only loses the typing
        return ()


def _declare_list(ex: Executor, toks: Sequence[Tok]) -> None:
    _apply(ex, _declared(toks))


def _apply(ex: Executor, declared: tuple[tuple[str, SqlType | None], ...]) -> None:
    types: dict[str, SqlType] | None = getattr(ex, "var_types", None)
    if types is None:
        return
    for name, t in declared:
        if t is not None:
            types[name] = t
        else:
            types.pop(name, None)


def _declared(toks: Sequence[Tok]) -> tuple[tuple[str, SqlType | None], ...]:
    """(variable, type) for each ``@name type [= default] [OUTPUT]`` of a declaration list."""
    out: list[tuple[str, SqlType | None]] = []
    for p in split_top(toks):
        if len(p) < 2 or p[0].kind != "var":
            continue
        body = p[1:]
        if body and body[0].up == "AS":
            body = body[1:]
        cut = next((k for k, t in enumerate(body) if t.text == "=" or t.up in ("OUTPUT", "OUT")),
                   len(body))
        out.append((p[0].text.lower(), parse_type(_type_text(body[:cut]))))
    return tuple(out)


# ----------------------------------------------------------------------------- wire encodings


def _collation(enc: P.Encoder) -> bytes:
    return P.COLLATION if enc.major >= 0x71 else b""


def _time_bytes(t: _dt.time | _dt.datetime, scale: int) -> bytes:
    ticks = ((t.hour * 60 + t.minute) * 60 + t.second) * 10**7 + t.microsecond * 10
    ticks //= int(10 ** (7 - scale))
    return int(ticks).to_bytes(3 if scale <= 2 else 4 if scale <= 4 else 5, "little")


def _time_len(scale: int) -> int:
    return 3 if scale <= 2 else 4 if scale <= 4 else 5


def _downlevel(enc: P.Encoder, c: P.Column) -> bool:
    return c.kind in (K_TIME, K_DTO) and enc.major < 0x73


def _text_of(c: P.Column, v: Any) -> str:
    if c.kind == K_TIME:
        return str(v.isoformat())
    return str(v.isoformat(sep=" "))


def typeinfo(enc: P.Encoder, c: P.Column) -> bytes:
    k = c.kind
    if _downlevel(enc, c):
        return b"\xe7" + struct.pack("<H", 100) + _collation(enc)
    if k == K_TINYINT:
        return b"\x26\x01"
    if k == K_SMALLINT:
        return b"\x26\x02"
    if k == K_REAL:
        return b"\x6d\x04"
    if k in (K_CHAR, K_VARCHAR):
        if c.size < 0 or c.size > 8000:
            if enc.major >= 0x72:
                return b"\xa7\xff\xff" + _collation(enc)
            tab = b"\x00\x00"
            return b"\x23" + struct.pack("<i", 0x7FFFFFFF) + _collation(enc) + tab
        return (b"\xaf" if k == K_CHAR else b"\xa7") + struct.pack("<H", max(1, c.size)) + \
            _collation(enc)
    if k == K_NCHAR:
        return b"\xef" + struct.pack("<H", max(2, min(c.size, 8000))) + _collation(enc)
    if k == K_BINARY:
        return b"\xad" + struct.pack("<H", max(1, min(c.size, 8000)))
    if k == K_TIME:
        return bytes([0x29, c.scale])
    if k == K_DTO:
        return bytes([0x2B, c.scale])
    raise ValueError(f"unknown column kind {k}")


def value(enc: P.Encoder, c: P.Column, v: Any) -> bytes:
    k = c.kind
    if _downlevel(enc, c):
        data = None if v is None else P.ucs2(_text_of(c, v))
        return b"\xff\xff" if data is None else struct.pack("<H", len(data)) + data
    if v is None:
        if k in (K_TINYINT, K_SMALLINT, K_REAL, K_TIME, K_DTO):
            return b"\x00"
        return enc._var(P.Column(c.name, k, c.size), None)
    if k == K_TINYINT:
        return b"\x01" + struct.pack("<B", int(v) & 0xFF)
    if k == K_SMALLINT:
        return b"\x02" + struct.pack("<h", int(v))
    if k == K_REAL:
        return b"\x04" + struct.pack("<f", float(v))
    if k in (K_CHAR, K_VARCHAR):
        return enc._var(c, str(v).encode("cp1252", "replace"))
    if k == K_NCHAR:
        return enc._var(c, P.ucs2(str(v)))
    if k == K_BINARY:
        return enc._var(c, bytes(v))
    if k == K_TIME:
        body = _time_bytes(v, c.scale)
        return bytes([len(body)]) + body
    if k == K_DTO:
        off = v.utcoffset() or _dt.timedelta(0)
        utc = (v - off).replace(tzinfo=None)
        body = _time_bytes(utc, c.scale) + int(utc.date().toordinal() - 1).to_bytes(3, "little")
        body += struct.pack("<h", int(off.total_seconds() // 60))
        return bytes([len(body)]) + body
    raise ValueError(f"unknown column kind {k}")


for _kind in (K_TINYINT, K_SMALLINT, K_REAL, K_CHAR, K_VARCHAR, K_NCHAR, K_BINARY, K_TIME,
              K_DTO):
    P.EXTRA_KINDS[_kind] = (typeinfo, value)


def install_functions(con: sqlite3.Connection) -> None:
    """SQL functions sqlglot's output may call that SQLite lacks."""
    con.create_function("uuid", 0, lambda: str(uuid.uuid4()).upper())
    con.create_function(
        "sysdatetimeoffset", 0,
        lambda: _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(sep=" "))
