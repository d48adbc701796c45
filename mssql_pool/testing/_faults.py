"""Faults on demand: SQL Server's error texts and a thread-safe, deterministic fault book."""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass

from ..errors import ConfigError

# number -> (severity, message template). Templates take keyword fields; missing ones get
# a neutral filler (see :func:`error_text`).
MESSAGES: dict[int, tuple[int, str]] = {
    102: (15, "Incorrect syntax near '{near}'."),
    207: (16, "Invalid column name '{name}'."),
    208: (16, "Invalid object name '{name}'."),
    245: (16, "Conversion failed when converting the varchar value '{name}' to data type int."),
    266: (16, "Transaction count after EXECUTE indicates a mismatching number of BEGIN and COMMIT "
              "statements. Previous count = {previous}, current count = {current}."),
    515: (16, "Cannot insert the value NULL into column '{name}', table '{table}'; column does not "
              "allow nulls. INSERT fails."),
    547: (16, "The INSERT statement conflicted with the FOREIGN KEY constraint \"{name}\". The "
              "conflict occurred in database \"{database}\", table \"{table}\"."),
    596: (21, "Cannot continue the execution because the session is in the kill state."),
    911: (16, "Database '{database}' does not exist. Make sure that the name is entered "
              "correctly."),
    1205: (13, "Transaction (Process ID {spid}) was deadlocked on lock resources with another "
               "process and has been chosen as the deadlock victim. Rerun the transaction."),
    1222: (16, "Lock request time out period exceeded."),
    2601: (14, "Cannot insert duplicate key row in object '{table}' with unique index '{name}'. "
               "The duplicate key value is {value}."),
    2627: (14, "Violation of PRIMARY KEY constraint '{name}'. Cannot insert duplicate key in "
               "object '{table}'. The duplicate key value is {value}."),
    2714: (16, "There is already an object named '{name}' in the database."),
    2812: (16, "Could not find stored procedure '{name}'."),
    3701: (11, "Cannot drop the table '{name}', because it does not exist or you do not have "
               "permission."),
    3902: (16, "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION."),
    3903: (16, "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION."),
    4060: (11, "Cannot open database \"{database}\" requested by the login. The login failed."),
    8134: (16, "Divide by zero error encountered."),
    10928: (20, "Resource ID : {resource}. The {what} limit for the database is {limit} and has "
                "been reached. See 'http://go.microsoft.com/fwlink/?LinkId=267637' for "
                "assistance."),
    10929: (20, "Resource ID : 1. The request limit for the database is {limit} and has been "
                "reached. However, the server is currently too busy to support requests greater "
                "than {limit} for this database. See "
                "'http://go.microsoft.com/fwlink/?LinkId=267637' for assistance. Otherwise, "
                "please try again later."),
    18456: (14, "Login failed for user '{user}'."),
    40143: (16, "The service has encountered an error processing your request. Please try again."),
    40197: (20, "The service has encountered an error processing your request. Please try again. "
                "Error code {code}."),
    40501: (20, "The service is currently busy. Retry the request after 10 seconds. Incident ID: "
                "{incident}. Code: {code}."),
    40540: (20, "The service has encountered an error processing your request. Please try again."),
    40613: (17, "Database '{database}' on server '{server}' is not currently available.  Please "
                "retry the connection later.  If the problem persists, contact customer support, "
                "and provide them the session tracing ID of '{incident}'."),
    49918: (16, "Cannot process request. Not enough resources to process request."),
    50000: (16, "{text}"),
}


def default_severity(number: int) -> int:
    return MESSAGES.get(number, (16, ""))[0]


class _Filler(dict[str, object]):
    def __missing__(self, key: str) -> object:
        defaults = {"code": 4097, "limit": 30, "value": "(1)", "near": "'", "resource": 1,
                    "what": "request"}
        return defaults.get(key, "?")


def error_text(number: int, **fields: object) -> str:
    """SQL Server's message text for ``number`` with ``fields`` filled in."""
    template = MESSAGES.get(number, (16, ""))[1]
    if not template:
        return f"Error {number} raised by the TDS test server."
    values = _Filler(fields)
    values.setdefault("incident", str(uuid.UUID(int=number)).upper())
    return template.format_map(values)


@dataclass
class Fault:
    kind: str  # "error", "drop", "delay", "login"
    pattern: re.Pattern[str] | None
    times: int
    number: int = 0
    severity: int | None = None
    message: str | None = None
    seconds: float = 0.0
    after_execute: bool = False

    def matches(self, text: str) -> bool:
        return self.pattern is None or self.pattern.search(text) is not None


class FaultBook:
    """Pending faults, consumed in the order they were armed (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self, kind: str, text: str) -> Fault | None:
        """The first armed fault of this kind matching text; one of its `times` is used up."""
        with self._lock:
            for f in self._faults:
                if f.kind == kind and f.matches(text):
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return f
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)


def compile_match(match: str | None) -> re.Pattern[str] | None:
    if match is None:
        return None
    try:
        return re.compile(match, re.IGNORECASE)
    except (re.error, TypeError) as exc:
        raise ConfigError("match", f"must be a regular expression, got {match!r}: {exc}") from None
