"""pymssql's exceptions built in the shapes pymssql raises them, for the unit tests
(docs/retries.md, "pymssql's shapes and quirks")."""

from __future__ import annotations

from collections.abc import Callable

import pymssql
from pymssql import _mssql


def err(number: int, text: str = "x") -> pymssql.OperationalError:
    """A statement error as the classifier reads it: args == (number, bytes), no context."""
    return pymssql.OperationalError(number, text.encode())


def db_exc(number: int, text: str) -> _mssql.MSSQLDatabaseException:
    # What _mssql raises: args == ((number, bytes),). (Never read .text on a hand-made
    # one: it is a NULL char* and segfaults.)
    return _mssql.MSSQLDatabaseException((number, text.encode()))


def raised_in_handler(
    inner: BaseException, outer: Callable[[BaseException], Exception]
) -> Exception:
    """Raise ``outer(inner)`` while handling ``inner``, as pymssql does (sets __context__)."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer(e)  # noqa: B904 - implicit chaining is the point
    except Exception as exc:  # noqa: BLE001
        return exc


def connect_error(number: int, text: str) -> Exception:
    """pymssql.connect(): args[0] is a tuple (number, bytes)."""
    return raised_in_handler(db_exc(number, text), lambda e: pymssql.OperationalError(e.args[0]))
