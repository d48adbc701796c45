"""From SQLite's values to SQL Server's: the converters SQLite applies to declared column
types, the result columns inferred from Python values, and values written back as T-SQL
literals."""

from __future__ import annotations

import datetime as _dt
import decimal
import re
import sqlite3
from collections.abc import Callable
from typing import Any

from . import _protocol as P

__all__ = ["infer_columns", "literal", "register_converters"]

#: SQLite's text of a datetime (what a DATETIME column gives back without a converter)
_DT_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,7})?$")



class _DateTime2(_dt.datetime):
    pass


def _conv_datetime(cls: type[_dt.datetime]) -> Callable[[bytes], Any]:
    def conv(raw: bytes) -> Any:
        s = raw.decode()
        try:
            v = _dt.datetime.fromisoformat(s.replace("Z", ""))
        except ValueError:
            return s
        return cls(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)

    return conv


def _conv_date(raw: bytes) -> Any:
    try:
        return _dt.datetime.fromisoformat(raw.decode()).date()
    except ValueError:
        return raw.decode()


def _conv_decimal(raw: bytes) -> Any:
    try:
        return decimal.Decimal(raw.decode())
    except decimal.InvalidOperation:
        return raw.decode()


def _conv_bit(raw: bytes) -> Any:
    s = raw.decode()
    return s not in ("0", "0.0", "") if s.lstrip("-").replace(".", "").isdigit() else s


def _conv_binary(raw: bytes) -> bytes:
    # blobs arrive unchanged; text stored into a binary column converts like varchar does
    try:
        return raw.decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return raw


_registered = False


def register_converters() -> None:
    global _registered
    if _registered:
        return
    sqlite3.register_converter("BIT", _conv_bit)
    for name in ("DECIMAL", "NUMERIC", "MONEY", "SMALLMONEY"):
        sqlite3.register_converter(name, _conv_decimal)
    for name in ("DATETIME", "SMALLDATETIME"):
        sqlite3.register_converter(name, _conv_datetime(_dt.datetime))
    sqlite3.register_converter("DATETIME2", _conv_datetime(_DateTime2))
    sqlite3.register_converter("DATE", _conv_date)
    for name in ("VARBINARY", "BINARY", "IMAGE", "ROWVERSION"):
        sqlite3.register_converter(name, _conv_binary)
    _registered = True


def infer_columns(names: list[str], rows: list[tuple[Any, ...]]) -> list[P.Column]:
    """The result columns of ``rows`` (SQLite's values): each column's kind is the one
    every non-NULL value fits (INT widens to BIGINT; mixed kinds become NVARCHAR or
    FLOAT), sized to hold them. Datetime texts in ``rows`` are parsed in place."""
    cols: list[P.Column] = []
    for i, name in enumerate(names):
        kind = ""
        size = 2
        scale = 0
        for r in rows:
            v = r[i]
            if v is None:
                continue
            k = _kind_of(v, kind)
            if k == P.K_DECIMAL:
                exp = v.as_tuple().exponent
                if isinstance(exp, int):
                    scale = max(scale, -exp)
            elif k == P.K_VARBINARY:
                size = max(size, len(v))
            elif k == P.K_NVARCHAR:
                size = max(size, 2 * len(str(v)))
            if kind and kind != k and {kind, k} != {P.K_INT, P.K_BIGINT}:
                kind = P.K_NVARCHAR if P.K_NVARCHAR in (kind, k) else P.K_FLOAT
            else:
                kind = k
        kind = kind or P.K_INT
        if kind in (P.K_NVARCHAR, P.K_VARBINARY):
            size = -1 if size > 8000 else 8000
        if kind in (P.K_DATETIME, P.K_DATETIME2):
            _parse_datetime_texts(rows, i)
        cols.append(P.Column(_column_name(name), kind, size=size, precision=38,
                             scale=min(scale, 38)))
    return cols


def _kind_of(v: Any, kind: str) -> str:
    """The column kind of one non-NULL value; ``kind`` is the column's so far (an INT
    column that has seen a BIGINT stays BIGINT)."""
    if isinstance(v, bool):
        return P.K_BIT
    if isinstance(v, int):
        fits = -(2**31) <= v < 2**31
        return P.K_INT if fits and kind != P.K_BIGINT else P.K_BIGINT
    if isinstance(v, float):
        return P.K_FLOAT
    if isinstance(v, decimal.Decimal):
        return P.K_DECIMAL
    if isinstance(v, _DateTime2):
        return P.K_DATETIME2
    if isinstance(v, _dt.datetime):
        return P.K_DATETIME
    if isinstance(v, _dt.date):
        return P.K_DATE
    if isinstance(v, bytes):
        return P.K_VARBINARY
    if isinstance(v, str) and _DT_TEXT.match(v):
        return P.K_DATETIME
    return P.K_NVARCHAR


def _parse_datetime_texts(rows: list[tuple[Any, ...]], i: int) -> None:
    """Column ``i`` of a datetime column: texts SQLite gave back become datetimes."""
    for r_i, r in enumerate(rows):
        v = r[i]
        if isinstance(v, str):
            rows[r_i] = r[:i] + (_dt.datetime.fromisoformat(v[:26]),) + r[i + 1 :]


_PLAIN_NAME = re.compile(r"^[^\W\d][\w$#@]*$")


def _column_name(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else ""


def literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float, decimal.Decimal)):
        return str(v)
    if isinstance(v, bytes):
        return "0x" + v.hex()
    if isinstance(v, _dt.datetime):
        return "'" + v.isoformat(sep=" ") + "'"
    if isinstance(v, _dt.date):
        return "'" + v.isoformat() + "'"
    return "'" + str(v).replace("'", "''") + "'"
