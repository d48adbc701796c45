"""Every code sample in README.md and docs/*.md runs as written, or says why it cannot.

One test per fenced block, with the id ``docs/page.md:LINE`` (the line of the opening fence).

The conventions, also stated for readers in docs/index.md ("About the samples"):

* Every fence names its language. ``python`` and the shell languages (``bash``, ``sh``,
  ``console``) are run; the languages in ``NOT_CODE`` (``text`` for output and diagrams,
  ``promql``...) are not. An untagged fence fails, so no command hides in one.
* ``<!-- fragment: REASON -->`` as the last non-blank line before a fence: the block is not
  run, because it needs names of the reader's own (an ORM model, a secret store) or cannot
  run here (it installs packages, binds a fixed port, runs for minutes). The reason is
  required. A Python fragment must still compile.
* A ``python`` block runs in a fresh namespace, against a fresh TDS test server
  (``mssql_pool.testing.TdsServer``), within ``SAMPLE_TIMEOUT`` seconds. These names are
  defined for it when the block uses them (the docs' "prelude"):

  - ``url``: ``mssql://sa:...@127.0.0.1:PORT/orders``, the server's URL;
  - ``pool``: an open ``ConnectionPool(url)``;
  - ``exc``: an error pymssql raised (a deadlock victim, 1205).

  Nothing else: imports and the names a sample defines must be in the sample. The server
  has the logins ``sa``/``Secret123!`` and ``app``/``secret``, the databases ``orders``
  (the default), ``bank`` and ``reports``, and in ``orders`` and ``bank`` the tables
  ``acct(id, bal)`` (accounts 1 and 2), ``ledger(tid)``, ``transfers(tid, src, dst,
  amount)``, ``customers(id, name)`` (customer 42) and ``orders(id, customer_id, total,
  state)``. The example hosts of the docs (``db.example.com``, ``*.example.com``,
  ``*.database.windows.net``, ``db``, ``sqlhost``, ``sql-a``...) reach that server:
  ``pymssql.connect`` is wrapped to dial it instead.
  After the code, each ``test_*`` function the block defines is called with the pytest
  fixtures it names (``tds_server``, ``tds_server_factory``, as the plugin gives them).
  Pools and servers left open are closed (a thread of the package still running after that
  fails the block); the default classifier, the retry testing switch and logging are
  restored.
* A block whose first line starts with ``>>>`` is a console session: each statement runs;
  shown output of the form ``module.SomeError: message`` must be what the statement
  raises; other shown output is illustrative and not compared.
* A ``bash``/``sh`` block runs each command line; a ``console`` block runs each ``$ ...``
  line and compares its output with the lines shown under it, numbers with a decimal point
  (timings, addresses) and runs of spaces aside. Only the ``mssql-pool`` command (any path
  to it) can be run; any other command must be in a fragment. ``mssql-pool serve`` is
  started in the background, waited for, and stopped with Ctrl-C (SIGINT) at the end of the
  block, which must end it with status 0; other ``bash`` commands must exit 0. The port
  ``14339`` stands for a free port; when no ``serve`` in the block provides it, a TdsServer
  listens there.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PYTHON = {"python", "py", "pycon"}
SHELL = {"bash", "sh", "shell", "console"}
NOT_CODE = {"text", "promql", "ini", "toml", "yaml", "json", "sql"}

SAMPLE_TIMEOUT = 30          # seconds per block (pytest-timeout ends a block that hangs)
COMMAND_TIMEOUT = 30         # seconds per shell command
DOCS_PORT = "14339"          # stands for a free port in shell samples

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`{]*)")
FRAGMENT = re.compile(r"^\s*<!--\s*fragment:\s*(?P<reason>.*?)\s*-->\s*$")
MARKER = re.compile(r"^\s*<!--\s*\w+\s*:")
EXAMPLE_HOST = re.compile(
    r"(^|\.)example\.com$|\.database\.windows\.net$|^(db|sqlhost|ignored|sql-[a-z])$")
PRELUDE_NAMES = ("url", "pool", "exc")
USERS = {"sa": "Secret123!", "app": "secret"}


@dataclass(frozen=True)
class Block:
    page: str         # relative to the repository root
    line: int         # 1-based line of the opening fence
    lang: str
    code: str
    fragment: str | None   # the reason, when marked as a fragment
    marker_error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def collect(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown page."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = path.relative_to(ROOT).as_posix()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m["indent"]), m["fence"], m["lang"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence)
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        fm = FRAGMENT.match(prev)
        reason = fm["reason"] if fm and fm["reason"] else None
        error = None
        if fm and not reason:
            error = "a fragment marker needs a reason: <!-- fragment: why it is not run -->"
        elif not fm and MARKER.match(prev):
            error = f"unknown marker {prev.strip()!r}: the only one is <!-- fragment: REASON -->"
        out.append(Block(rel, start + 1, lang, "\n".join(body) + "\n", reason, error))
    return out


BLOCKS = [b for page in PAGES for b in collect(page)]


def test_the_samples_are_collected() -> None:
    """The collector finds the blocks of every page (a broken parser would pass vacuously)."""
    by_lang = {lang: sum(b.lang == lang for b in BLOCKS) for lang in ("python", "bash", "text")}
    assert by_lang["python"] >= 30 and by_lang["bash"] >= 5 and by_lang["text"] >= 5, by_lang
    assert sum(b.fragment is None and b.lang in PYTHON for b in BLOCKS) >= 20
    assert {b.page for b in BLOCKS} >= {"README.md", "docs/quickstart.md", "docs/retries.md"}


def test_collector_reads_markers(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("intro\n\n<!-- fragment: needs your Order model -->\n\n```python\n"
                    "session.get(Order, 1)\n```\n\n```\nuntagged\n```\n\n<!-- fragment: -->\n"
                    "```bash\nx\n```\n\n<!-- frgament: typo -->\n```python\npass\n```\n",
                    encoding="utf-8")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        blocks = collect(page)
    finally:
        ROOT = saved
    assert [(b.line, b.lang, b.fragment) for b in blocks] == [
        (5, "python", "needs your Order model"), (9, "", None), (14, "bash", None),
        (19, "python", None)]
    assert blocks[0].code == "session.get(Order, 1)\n"
    assert blocks[2].marker_error is not None and "reason" in blocks[2].marker_error
    assert blocks[3].marker_error is not None and "unknown marker" in blocks[3].marker_error


# ----------------------------------------------------------------------------- python


SEED = """
CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
INSERT INTO acct (id, bal) VALUES (1, 1000);
INSERT INTO acct (id, bal) VALUES (2, 1000);
CREATE TABLE ledger (tid NVARCHAR(64) NOT NULL);
CREATE TABLE transfers (tid NVARCHAR(64) PRIMARY KEY, src INT, dst INT, amount INT);
CREATE TABLE customers (id INT PRIMARY KEY, name NVARCHAR(100));
INSERT INTO customers (id, name) VALUES (42, N'Ada');
CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, total DECIMAL(10, 2),
                     state NVARCHAR(20));
INSERT INTO orders (id, customer_id, total, state) VALUES (17, 42, 99.50, N'open');
INSERT INTO orders (id, customer_id, total, state) VALUES (18, 42, 12.00, N'open');
"""


def _docs_server() -> Any:
    import pymssql

    from mssql_pool.testing import TdsServer

    server = TdsServer(USERS, "orders", databases=("bank", "reports")).start()
    conn = pymssql.connect(**server.connect_kwargs(autocommit=True))
    try:
        cur = conn.cursor()
        for db in ("orders", "bank"):
            cur.execute(f"USE {db}")
            cur.execute(SEED)
    finally:
        conn.close()
    return server


def _deadlock_error(server: Any) -> BaseException:
    import pymssql

    conn = pymssql.connect(**server.connect_kwargs())
    try:
        server.fail_next(1205, match="UPDATE acct")
        try:
            conn.cursor().execute("UPDATE acct SET bal = bal WHERE id = 1")
        except pymssql.Error as exc:
            return exc
        raise AssertionError("the armed 1205 did not fire")
    finally:
        conn.close()


@contextlib.contextmanager
def _example_hosts_reach(server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``pymssql.connect`` to an example host of the docs dials ``server`` instead."""
    import pymssql

    real = pymssql.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        key = "server" if "server" in kwargs else "host" if "host" in kwargs else None
        if key is not None:
            host = re.split(r"[:,]", str(kwargs[key]).removeprefix("tcp:"))[0]
            if EXAMPLE_HOST.search(host):
                kwargs[key] = server.host
                kwargs["port"] = str(server.port)
        return real(*args, **kwargs)

    monkeypatch.setattr(pymssql, "connect", connect)
    yield


@contextlib.contextmanager
def _global_state_restored() -> Iterator[None]:
    """Samples may set process-wide things; put them back afterwards."""
    from mssql_pool import classify, retry

    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    levels = {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    classifier = classify.get_default_classifier()
    testing = retry.set_testing(False)
    retry.set_testing(testing)
    try:
        yield
    finally:
        classify.set_default_classifier(classifier)
        retry.set_testing(testing)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(root_level)
        for name, lg in logging.Logger.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))


def _close_everything(values: list[Any]) -> None:
    from mssql_pool import ConnectionPool
    from mssql_pool.testing import TdsServer

    for value in values:
        with contextlib.suppress(Exception):
            if isinstance(value, ConnectionPool):
                value.close()
            elif isinstance(value, TdsServer):
                value.close()
            elif hasattr(value, "pool") and hasattr(value.pool, "mssql_pool"):
                value.pool.mssql_pool.close()     # an mssql_pool SQLAlchemy engine


def _uses(code: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\b", code) is not None


def _call_tests(ns: dict[str, Any], opened: list[Any]) -> int:
    """Call the ``test_*`` functions a sample defines, with the plugin's fixtures."""
    from mssql_pool.testing import TdsServer

    def factory(*args: Any, **kwargs: Any) -> TdsServer:
        server = TdsServer(*args, **kwargs)
        opened.append(server)
        return server.start()

    called = 0
    for name, fn in list(ns.items()):
        if not (name.startswith("test_") and inspect.isfunction(fn)):
            continue
        fixtures: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters:
            if param == "tds_server_factory":
                fixtures[param] = factory
            elif param == "tds_server":
                fixtures[param] = factory()
            else:
                raise AssertionError(f"{name}() asks for fixture {param!r}, which the docs "
                                     "test does not provide")
        fn(**fixtures)
        called += 1
    return called


def _padded(block: Block, code: str) -> str:
    """The code with blank lines in front, so tracebacks show the Markdown line."""
    return "\n" * block.line + code


def _console_session(code: str) -> list[tuple[str, list[str]]]:
    """``>>>`` lines into (statement, shown output lines)."""
    out: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith(">>> ") or line == ">>>":
            out.append((line[4:], []))
        elif (line.startswith("... ") or line == "...") and out and not out[-1][1]:
            out[-1] = (out[-1][0] + "\n" + line[4:], [])
        elif out and line.strip():
            out[-1][1].append(line)
    return out


SHOWN_ERROR = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Timeout|Exhausted)): "
                         r"(?P<message>.*)$")


def _run_console_session(block: Block, ns: dict[str, Any]) -> None:
    for statement, shown in _console_session(block.code):
        error = SHOWN_ERROR.match(shown[-1]) if shown else None
        code = compile(statement, block.id, "exec")
        if error is None:
            exec(code, ns)
            continue
        try:
            exec(code, ns)
        except Exception as exc:  # noqa: BLE001 - compared with what the page shows
            name = f"{type(exc).__module__}.{type(exc).__qualname__}"
            assert name.endswith(error["type"]) or type(exc).__name__ == error["type"], (
                f"{block.id}: {statement!r} raised {name}, the page shows {error['type']}")
            assert str(exc) == error["message"], (
                f"{block.id}: {statement!r} says {str(exc)!r}, the page shows "
                f"{error['message']!r}")
        else:
            raise AssertionError(f"{block.id}: {statement!r} raised nothing; the page shows "
                                 f"{shown[-1]!r}")


def _exec_python(code: Any, ns: dict[str, Any]) -> None:
    """Run a sample; one with top-level ``await``/``async with`` (the asyncio page) runs
    in an event loop of its own, as it would in an async application's startup code."""
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, ns))
    else:
        exec(code, ns)


def _check_fragment(block: Block) -> None:
    if block.lang in PYTHON:
        code = block.code
        if code.lstrip().startswith(">>>"):
            code = "\n".join(s for s, _ in _console_session(code))
        compile(_padded(block, code), block.page, "exec",   # a fragment must still compile
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _threads_left(before: set[threading.Thread], timeout: float = 5.0) -> list[str]:
    """The package's threads a sample started and did not stop (a pool it left open)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [t.name for t in threading.enumerate()
                if t not in before and t.name.startswith("mssql_pool") and t.is_alive()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def run_python(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    from mssql_pool import pool as pool_module

    before = set(threading.enumerate())
    pools = set(getattr(pool_module, "_pools", ()))
    opened: list[Any] = []
    server = _docs_server()
    opened.append(server)
    ns: dict[str, Any] = {"__name__": "__docs_sample__"}
    try:
        with _global_state_restored(), _example_hosts_reach(server, monkeypatch):
            if _uses(block.code, "url"):
                ns["url"] = server.url
            if _uses(block.code, "pool"):
                from mssql_pool import ConnectionPool

                ns["pool"] = ConnectionPool(server.url, min_size=1, max_size=4, name="docs")
                opened.append(ns["pool"])
            if _uses(block.code, "exc"):
                ns["exc"] = _deadlock_error(server)
            try:
                if block.code.lstrip().startswith(">>>"):
                    _run_console_session(block, ns)
                else:
                    _exec_python(compile(_padded(block, block.code), block.page, "exec",
                                         flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), ns)
                    _call_tests(ns, opened)
            finally:
                _close_everything(list(ns.values()))
    finally:
        _close_everything(opened[::-1])
    # pools the sample made and dropped (``pool = ...`` twice) are closed here
    _close_everything([p for p in getattr(pool_module, "_pools", ()) if p not in pools])
    left = _threads_left(before)
    assert not left, f"{block.id} leaves threads running: {left}"


# ----------------------------------------------------------------------------- shell


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mssql-pool serve exited with {proc.returncode}: "
                                 f"{proc.communicate()[0]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"mssql-pool serve did not listen on port {port} in {timeout} s")


def _argv(command: str) -> list[str]:
    argv = shlex.split(command, comments=True)
    if not argv:
        return argv
    if Path(argv[0]).name != "mssql-pool":
        raise AssertionError(
            f"the docs test runs only the mssql-pool command, not {argv[0]!r}: mark the block "
            "<!-- fragment: REASON --> if it cannot run here")
    return [sys.executable, "-c", "import sys; from mssql_pool.cli import main; "
            "sys.exit(main())", *argv[1:]]


def _starts_server(argv: list[str]) -> bool:
    """``mssql-pool serve`` (not its --help): runs until stopped."""
    return argv[3:4] == ["serve"] and not {"-h", "--help"} & set(argv)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSQL_POOL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _normalised(line: str) -> str:
    return " ".join(re.sub(r"\d+(\.\d+)+", "N", line).split())


def _console(code: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return [(cmd, [ln for ln in shown if ln.strip()]) for cmd, shown in out]


def run_shell(block: Block) -> None:
    port = str(_free_port())
    code = block.code.replace(DOCS_PORT, port)
    if block.lang == "console":
        commands = _console(code)
    else:
        commands = [(ln, []) for ln in code.splitlines() if shlex.split(ln, comments=True)]
    assert commands, f"{block.id}: no command found"
    background: list[subprocess.Popen[str]] = []
    server = None
    try:
        serves = any(_starts_server(_argv(cmd)) for cmd, _ in commands)
        if not serves and port in code:
            from mssql_pool.testing import TdsServer

            server = TdsServer(port=int(port)).start()
        for cmd, shown in commands:
            argv = _argv(cmd)
            if _starts_server(argv):
                proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                background.append(proc)
                _wait_listening(int(port), proc, COMMAND_TIMEOUT)
                continue
            done = subprocess.run(argv, cwd=ROOT, env=_env(), text=True, capture_output=True,
                                  timeout=COMMAND_TIMEOUT)
            output = (done.stdout + done.stderr).splitlines()
            if block.lang == "console":
                got = [_normalised(ln) for ln in output if ln.strip()]
                want = [_normalised(ln) for ln in shown]
                assert got == want, (
                    f"{block.id}: `{cmd}` printed (timings aside) something else than the "
                    "page shows:\n" + "\n".join(output))
            else:
                assert done.returncode == 0, (
                    f"{block.id}: `{cmd}` exited {done.returncode}:\n" + "\n".join(output))
        for proc in background:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
            assert proc.returncode == 0, (
                f"{block.id}: mssql-pool serve ended with {proc.returncode} after Ctrl-C:\n{out}")
    finally:
        for proc in background:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if server is not None:
            server.close()


# ----------------------------------------------------------------------------- the tests


@pytest.mark.timeout(SAMPLE_TIMEOUT)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_sample(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    assert block.marker_error is None, f"{block.id}: {block.marker_error}"
    if block.lang not in PYTHON | SHELL | NOT_CODE:
        raise AssertionError(
            f"{block.id}: a fence must name its language (python, bash, console, text...), "
            f"got {block.lang!r}")
    if block.fragment is not None:
        _check_fragment(block)
        return
    if block.lang in PYTHON:
        run_python(block, monkeypatch)
    elif block.lang in SHELL:
        run_shell(block)


def test_the_tds_server_signature_on_the_testing_page_is_the_real_one() -> None:
    """docs/testing.md shows ``TdsServer(...)`` with every argument at its default."""
    import ast

    from mssql_pool.testing import TdsServer

    shown = next(b for b in BLOCKS if b.page == "docs/testing.md" and "server = TdsServer(users="
                 in b.code)
    call = next(node for node in ast.walk(ast.parse(shown.code))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "TdsServer")
    documented = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    real = {name: p.default for name, p in inspect.signature(TdsServer).parameters.items()}
    assert documented == real, f"{shown.id} shows {documented}, the code has {real}"
