"""What a statement hands back to the session: result sets, row counts, messages,
environment changes, return statuses and errors (the leaf every part of the engine shares).

A statement's outputs are a list of :data:`Out`; the session encodes them as TDS tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _protocol as P
from ._faults import default_severity, error_text

__all__ = ["Done", "Env", "Info", "Interrupted", "Out", "ReturnFromProcedure", "ReturnStatus",
           "Rows", "SqlError", "Waiter"]


class SqlError(Exception):
    """An error to report to the client: number, severity, text."""

    def __init__(self, number: int, text: str | None = None, severity: int | None = None,
                 state: int = 1, **fields: object) -> None:
        self.number = number
        self.severity = default_severity(number) if severity is None else severity
        self.text = text if text is not None else error_text(number, **fields)
        self.state = state
        super().__init__(f"{number}: {self.text}")


class Interrupted(Exception):
    """An attention or a KILL cut the request short."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "attention" or "kill"


class ReturnFromProcedure(Exception):
    """``RETURN`` inside a stored procedure: unwinds to the call."""


@dataclass
class Rows:
    columns: list[P.Column]
    rows: list[tuple[Any, ...]]


@dataclass
class Done:
    count: int | None  # None: no row count


@dataclass
class Info:
    number: int
    text: str
    severity: int = 0
    state: int = 1


@dataclass
class Env:
    kind: int
    new: str | bytes
    old: str | bytes


@dataclass
class ReturnStatus:
    value: int


Out = Rows | Done | Info | Env | ReturnStatus | SqlError


#: Sleeps for the given seconds, raising :class:`Interrupted` when cut short.
Waiter = Callable[[float], None]
