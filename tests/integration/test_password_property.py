"""Property: no password comes out, whatever it is and however it was given.

Generated passwords (any character but lone surrogates: printable, control, non-ASCII,
astral) go in every accepted form: a URL with the password as is, a URL with it
percent-encoded, a mapping, an ODBC-style string, and ``$MSSQL_POOL_PASSWORD`` for
``mssql-pool check``. Every surface is rendered: log records at DEBUG (with their
tracebacks), ``repr``/``str`` of the pool, its config and the connection proxies,
exception messages with their whole chain, ``get_stats()``, the Prometheus output, and
the check command's text and JSON on stdout and stderr; against the TDS test server
(logins that work) and against a closed port (connects that fail).

How a leak is told from a coincidence: the same scenario is run again with a *control*
password of the same shape (letters, digits and non-ASCII characters swapped for
others, punctuation, spaces and control characters kept, so every parser takes the same
path). A surface that does not leak is independent of the password, so each written form
of the password (raw, percent-encoded, repr- and JSON-escaped) occurs in the real run no
more often than in the control run: a password "a" may appear inside "database", but not
once more than it would anyway. Numbers (timings, ports, counters) are normalised.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from mssql_pool import ConnectionPool, MssqlPoolError, cli
from mssql_pool.testing import TdsServer

pytestmark = pytest.mark.timeout(300)

# Failed logins and query timeouts change pymssql's process-wide state (the severity kept
# after a failed login, the last query timeout), which later tests would inherit: the
# properties run in a fresh interpreter, started by test_properties_in_a_fresh_interpreter.
CHILD_ENV = "MSSQL_POOL_PROPERTY_CHILD"
in_child = pytest.mark.skipif(os.environ.get(CHILD_ENV) != "1",
                              reason="runs in a fresh interpreter (see below)")

USER = "leak_user"
DB = "master"
FORMS = ("url", "url_encoded", "dict", "odbc")
# every character but lone surrogates, with the ones that have meaning somewhere
# (separators of URLs, ODBC strings and reprs; whitespace) drawn more often
STRUCTURAL = " \t\n/#?@%:;,{}='\"\\&+[]"
passwords = st.text(
    st.one_of(st.sampled_from(STRUCTURAL), st.characters(codec="ascii"),
              st.characters(blacklist_categories=("Cs",))),
    min_size=1, max_size=16)
# 10 generated examples each (plus the explicit ones) keep the suite quick;
# MSSQL_POOL_PROPERTY_EXAMPLES=300 for a long hunt
EXAMPLES = int(os.environ.get("MSSQL_POOL_PROPERTY_EXAMPLES", "10"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 10,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


# ------------------------------------------------------------------ the control password
def _swap(c: str) -> str:
    if "a" <= c <= "z":
        return chr((ord(c) - 97 + 13) % 26 + 97)
    if "A" <= c <= "Z":
        return chr((ord(c) - 65 + 13) % 26 + 65)
    if "0" <= c <= "9":
        return "qrstuvwxyz"[ord(c) - 48]   # a digit becomes a letter: numbers normalise
    if ord(c) > 0xFFFF:
        return "\U0001f600" if c != "\U0001f600" else "\U0001f601"
    if ord(c) > 0x7F and (c.isalnum() or c.isprintable()) and not c.isspace():
        return "é" if c != "é" else "ü"
    return c   # ASCII punctuation, whitespace, control characters: the structure


def control_of(password: str) -> str:
    return "".join(_swap(c) for c in password)


def written_forms(password: str) -> set[str]:
    """The password and every piece of it (three characters or more: a leaked tail is a
    leak too), raw and as URLs, reprs and JSON write them."""
    n = len(password)
    shortest = min(3, n)
    pieces = {password[i:j] for i in range(n) for j in range(i + shortest, n + 1)}
    forms: set[str] = set()
    for p in pieces:
        forms |= {p, quote(p, safe=""), quote_plus(p), repr(p)[1:-1], json.dumps(p)[1:-1],
                  json.dumps(p, ensure_ascii=False)[1:-1]}
    return {f for f in forms if f}


def normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+", "0x0", text)
    return re.sub(r"\d+", "0", text)


def _telling(form: str) -> bool:
    """A form with a letter or a non-ASCII character: digits and punctuation alone also
    make up timings and counters, so their counts say nothing."""
    return any(c.isalpha() or ord(c) > 127 for c in form)


def assert_no_leak(password: str, real: str, control: str) -> None:
    real_n, control_n = normalise(real), normalise(control)
    for form in written_forms(password):
        f = normalise(form)
        if _telling(f):
            assert real_n.count(f) <= control_n.count(f), (
                f"password form {form!r} leaked:\n--- real ---\n{real}\n"
                f"--- control ---\n{control}")


def assert_neither_leaks(password: str, real: str, control_password: str,
                         control: str) -> None:
    """Both ways round: a password of digits and punctuation has a control of letters,
    which a leak of the control run shows."""
    assert_no_leak(password, real, control)
    assert_no_leak(control_password, control, real)


# ------------------------------------------------------------------ connection strings
def conninfo_for(form: str, password: str, host: str, port: int) -> Any:
    if form == "url":
        return f"mssql://{USER}:{password}@{host}:{port}/{DB}?login_timeout=2"
    if form == "url_encoded":
        return f"mssql://{USER}:{quote(password, safe='')}@{host}:{port}/{DB}?login_timeout=2"
    if form == "dict":
        return {"server": host, "port": port, "user": USER, "password": password,
                "database": DB, "login_timeout": 2}
    value = "{" + password.replace("}", "}}") + "}"
    if (";" not in password and not password.startswith("{") and password == password.strip()
            and not any(c in password for c in "\r\n")):
        value = password   # unbraced where ODBC allows it
    return f"Server={host},{port};UID={USER};PWD={value};Database={DB};Login Timeout=2"


def usable(form: str, password: str) -> bool:
    """Forms that cannot carry this password at all (not a leak question)."""
    if form == "url" and "%" in password:
        return False   # "%41" would be decoded: the percent-encoded form covers it
    return True


# ------------------------------------------------------------------ surfaces
@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    formatter = logging.Formatter("%(levelname)s %(name)s %(threadName)s %(message)s")

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler = Grab(logging.DEBUG)
    root = logging.getLogger("mssql_pool")
    before = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def describe(exc: BaseException) -> str:
    """Message, repr, args and the whole chain with tracebacks."""
    parts = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [type(e).__name__, str(e), repr(e), repr(e.args)]
        for attr in ("last_error", "original"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                parts += [str(inner), repr(inner)]
        e = e.__cause__ or e.__context__
    parts.append("".join(traceback.format_exception(exc)))
    return "\n".join(parts)


def metrics_text(pool: ConnectionPool) -> str:
    try:
        from prometheus_client import CollectorRegistry, generate_latest

        from mssql_pool.metrics import register
    except ImportError:  # the metrics extra is optional
        return ""
    registry = CollectorRegistry()
    register(pool, registry)
    return generate_latest(registry).decode()


def pool_surfaces(conninfo: Any, *, acquire_timeout: float) -> tuple[str, str]:
    """(what the pool shows, the path taken) for one conninfo."""
    out: list[str] = []
    path: list[str] = []
    with captured_logs() as logs:
        try:
            pool = ConnectionPool(conninfo, name="leak", min_size=0, max_size=2,
                                  background=False, timeout=acquire_timeout,
                                  endpoint_breaker=None, circuit_breaker=None)
        except MssqlPoolError as exc:
            path.append(type(exc).__name__)
            out.append(describe(exc))
        else:
            with pool:
                out += [repr(pool), str(pool), repr(pool.config), str(pool.config)]
                try:
                    with pool.connection() as conn:
                        out += [repr(conn), str(conn)]
                        cur = conn.cursor()
                        cur.execute("SELECT 1")
                        out += [repr(cur), repr(cur.fetchall())]
                        path.append("connected")
                except Exception as exc:  # noqa: BLE001 - the surface under test
                    path.append(type(exc).__name__)
                    out.append(describe(exc))
                out.append(repr(sorted(pool.get_stats())))
                out.append(metrics_text(pool))
    out += sorted({normalise(line) for line in logs})   # repeated attempts collapse
    return "\n".join(out), ",".join(path)


def check_surfaces(target: str, *, json_out: bool, use_pool: bool,
                   env_password: str | None) -> tuple[str, str]:
    argv = ["check", target, "--timeout", "2", "--samples", "1"]
    argv += (["--json"] if json_out else []) + ([] if use_pool else ["--no-pool"])
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = os.environ.pop("MSSQL_POOL_PASSWORD", None)
    if env_password is not None:
        os.environ["MSSQL_POOL_PASSWORD"] = env_password
    try:
        with captured_logs() as logs, contextlib.redirect_stdout(stdout), \
                contextlib.redirect_stderr(stderr):
            code = cli.main(argv)
    finally:
        os.environ.pop("MSSQL_POOL_PASSWORD", None)
        if saved is not None:
            os.environ["MSSQL_POOL_PASSWORD"] = saved
    text = stdout.getvalue()
    if json_out and code != cli.EXIT_USAGE:
        text = json.dumps(json.loads(text), ensure_ascii=False, sort_keys=True) + "\n" + text
    logged = sorted({normalise(line) for line in logs})
    return "\n".join([text, stderr.getvalue(), *logged]), str(code)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server() -> Iterator[TdsServer]:
    with TdsServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _against(server: TdsServer, closed_port: int, live: bool
             ) -> tuple[int, Callable[[str], None]]:
    def set_password(password: str) -> None:
        server._users[USER] = password   # the login the live runs use

    return (server.port if live else closed_port), set_password


# ------------------------------------------------------------------ the properties
@in_child
@SETTINGS
@given(password=passwords, form=st.sampled_from(FORMS), live=st.booleans())
@example(password="S3c retPW", form="url", live=True)           # item 1: whitespace
@example(password="S3c/r3tPW", form="url", live=False)          # item 2: ambiguous URL
@example(password="S3c#r3t?PW", form="url", live=False)
@example(password="S3c;retPW", form="odbc", live=True)          # item 3: ODBC braces
@example(password="S3c retPW", form="odbc", live=False)
@example(password="S3c,retPW", form="odbc", live=True)
@example(password="pässwörd\x00\U0001f511", form="dict", live=True)
def test_pool_surfaces_never_show_the_password(server: TdsServer, closed_port: int,
                                               password: str, form: str, live: bool) -> None:
    control = control_of(password)
    assume(control != password and usable(form, password))
    port, set_password = _against(server, closed_port, live)
    runs = []
    for secret in (password, control):
        set_password(secret)
        runs.append(pool_surfaces(conninfo_for(form, secret, "127.0.0.1", port),
                                  acquire_timeout=2.0 if live else 0.1))
    (real, real_path), (ctrl, ctrl_path) = runs
    assume(real_path == ctrl_path)   # the same story, or the comparison says nothing
    event(real_path)
    assert_neither_leaks(password, real, control, ctrl)


@in_child
@SETTINGS
@given(password=passwords, form=st.sampled_from(("url", "url_encoded", "odbc", "env")),
       live=st.booleans(), json_out=st.booleans(), use_pool=st.booleans())
@example(password="ab", form="env", live=True, json_out=False, use_pool=True)   # item 4
@example(password="S3c retPW", form="url", live=True, json_out=True, use_pool=False)
@example(password="S3c/r3tPW", form="url", live=True, json_out=False, use_pool=False)
@example(password="S3c;retPW", form="odbc", live=False, json_out=True, use_pool=False)
@example(password="é", form="env", live=True, json_out=True, use_pool=False)
def test_check_command_never_shows_the_password(server: TdsServer, closed_port: int,
                                                password: str, form: str, live: bool,
                                                json_out: bool, use_pool: bool) -> None:
    control = control_of(password)
    assume(control != password and usable(form, password))
    if form == "env":
        assume("\x00" not in password)   # an environment variable cannot hold NUL
    port, set_password = _against(server, closed_port, live)
    runs = []
    for secret in (password, control):
        set_password(secret)
        if form == "env":
            target = f"mssql://{USER}@127.0.0.1:{port}/{DB}"
            runs.append(check_surfaces(target, json_out=json_out, use_pool=use_pool,
                                       env_password=secret))
        else:
            target = conninfo_for(form, secret, "127.0.0.1", port)
            runs.append(check_surfaces(target, json_out=json_out, use_pool=use_pool,
                                       env_password=None))
    (real, real_code), (ctrl, ctrl_code) = runs
    assume(real_code == ctrl_code)
    event(f"exit {real_code}")
    assert_neither_leaks(password, real, control, ctrl)


# ------------------------------------------------------------------ the method itself
def test_the_comparison_catches_a_leak() -> None:
    """The oracle is not vacuous: a surface that prints the password is caught, even a
    one-letter one hidden among ordinary words."""
    for password in ("a", "S3c retPW", "é/#?", "\x01x", "00", "1;2"):
        control = control_of(password)
        with pytest.raises(AssertionError, match="leaked"):
            assert_neither_leaks(password, f"database error for {password!r}",
                                 control, f"database error for {control!r}")
        assert_neither_leaks(password, "error for '***' in 0.25 s", control,
                             "error for '***' in 0.3 s")
    # a tail is a leak too
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_leak("S3c;retPW", "PWD=***;retPW", "PWD=***;ergCJ")


@pytest.mark.skipif(os.environ.get(CHILD_ENV) == "1", reason="this is the fresh interpreter")
def test_properties_in_a_fresh_interpreter() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(Path(__file__))],
        cwd=root, env=dict(os.environ, **{CHILD_ENV: "1"}), capture_output=True, text=True,
        timeout=280)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
    assert proc.returncode == 0, tail
    assert "3 passed" in tail, tail   # the two properties and the oracle's own test
