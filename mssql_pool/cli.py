"""The ``mssql-pool`` command: ``demo``, ``check`` and ``serve``.

``mssql-pool demo``
    Money transfers on several threads through ``pool.run_transaction`` while a
    seeded chaos schedule hits an embedded TDS test server (or a real server with
    ``--url``); a live progress line, then a report with the invariant check.
    Exit 0 when the invariant holds and no unexpected error reached the workload.

``mssql-pool check URL``
    Connectivity diagnostics, one step at a time: name resolution, TCP connect,
    login (and whether the login was redirected), server version, round-trip
    latency, the health-check query, a checkout through a pool. A failure is
    explained: its SQL Server error number, its classification, what it means and
    what to try. The password never appears in the output.

    Exit codes (``check``; ``demo`` uses 0, 1, 2 with the same meanings):

    ==  ===================================================================
    0   every step passed
    1   the demo failed its invariant / an unexpected error; or an internal
        error in ``check`` (a bug: please report it)
    2   bad usage: unknown option, malformed URL
    3   name resolution (DNS) failed
    4   TCP connect failed (refused, unreachable, timed out)
    5   login failed (wrong credentials, database unavailable, throttled...)
    6   a query failed after login (version, latency or health-check query)
    7   a checkout through ConnectionPool failed although a plain login worked
    ==  ===================================================================

``mssql-pool serve [options]``
    Runs the TDS test server in the foreground for manual testing with any client
    (options: ``mssql-pool serve --help``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ._check import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Target,
    diagnose,
    print_check,
    scrub_tree,
    scrubber,
)
from ._dsn import parse_conninfo, redact
from .errors import ConfigError

__all__ = ["main", "EXIT_CODES", "EXIT_OK", "EXIT_USAGE", "UsageError", "parse_target"]

#: Bounds of ``check --timeout`` (seconds) and ``--samples``.
MAX_CHECK_TIMEOUT = 3600.0
MAX_SAMPLES = 10_000


class UsageError(Exception):
    """Bad command-line input; the message says which argument and why."""


_PYMSSQL_KWARGS = frozenset(
    {
        "server",
        "port",
        "user",
        "password",
        "database",
        "timeout",
        "login_timeout",
        "charset",
        "as_dict",
        "appname",
        "conn_properties",
        "autocommit",
        "tds_version",
        "use_datetime2",
        "arraysize",
        "encryption",
        "read_only",
    }
)


def parse_target(url: str) -> Target:
    """Parse ``mssql://user:password@host:port/database?tds_version=7.4&appname=x``.

    Parsing is :func:`mssql_pool._dsn.parse_conninfo`'s (the pool's own); the password
    may also come from ``$MSSQL_POOL_PASSWORD`` (keeps it out of ``ps``).
    """
    if "://" not in url and "=" not in url:
        raise UsageError("URL: expected mssql://user:password@host:port/database")
    try:
        kwargs = parse_conninfo(url)
    except ConfigError as exc:
        raise UsageError(f"URL: {exc}") from None
    unknown = sorted(set(kwargs) - _PYMSSQL_KWARGS)
    if unknown:
        raise UsageError(f"URL: unknown parameter(s) {', '.join(unknown)}")
    server = str(kwargs["server"])
    port = kwargs.get("port")
    if port is None and server.count(":") == 1:  # pymssql also takes "host:port"
        server, _, port_text = server.partition(":")
        port = int(port_text) if port_text.isdigit() else None
    port = int(port) if port is not None else 1433
    if not 0 < port < 65536:
        raise UsageError(f"URL: port must be 1-65535, got {port}")
    kwargs["server"], kwargs["port"] = server, port
    password = str(kwargs.pop("password", "") or os.environ.get("MSSQL_POOL_PASSWORD", ""))
    return Target(
        host=server,
        port=port,
        user=str(kwargs.get("user", "")),
        password=password,
        database=str(kwargs.get("database", "")),
        kwargs=kwargs,
    )


# ------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on its own; keep our wording
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mssql-pool",
        description="mssql_pool: a self-healing connection pool for SQL Server and Azure SQL.",
        epilog="Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,check,serve}")

    demo = sub.add_parser(
        "demo",
        help="money transfers under a chaos schedule, with an invariant check",
        description="Run a money-transfer workload through pool.run_transaction while a "
        "seeded chaos schedule kills sessions, injects deadlocks and login failures, "
        "restarts, redirects and partitions the embedded TDS test server. The pool's own "
        "log lines go to stderr with MSSQL_POOL_LOG=INFO (default: errors only).",
    )
    demo.add_argument(
        "--duration", type=float, default=20.0, help="seconds of workload (default 20)"
    )
    demo.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the chaos schedule and the workload (default 1)",
    )
    demo.add_argument("--accounts", type=int, default=50, help="number of accounts (default 50)")
    demo.add_argument(
        "--url",
        help="run against this real server instead (mssql://...); "
        "faults that need the test server are skipped or done with KILL",
    )
    demo.add_argument("--plot", metavar="PNG", help="write the timeline picture (matplotlib)")
    demo.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    demo.add_argument("--no-chaos", action="store_true", help="run the workload without faults")
    demo.add_argument(
        "--keep-tables",
        action="store_true",
        help="with --url: leave the demo tables in place (default: dropped at the end)",
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the pool's Prometheus metrics on this port while the demo runs "
        "(0 picks a free one)",
    )
    demo.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics are served on (default 127.0.0.1, this machine only; "
        "0.0.0.0 for every interface)",
    )
    demo.add_argument(
        "--progress",
        choices=("auto", "line", "plain", "off"),
        default="auto",
        help="live progress on stderr: a redrawn line on a TTY, plain lines "
        "otherwise (default auto)",
    )

    check = sub.add_parser(
        "check",
        help="connectivity diagnostics for a server URL",
        description="Diagnose connectivity to a SQL Server step by step.",
        epilog="Exit codes: "
        + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items() if k != 1)
        + "; 1 internal error",
    )
    check.add_argument(
        "url",
        help="mssql://user:password@host:port/database[?tds_version=7.4]"
        " (the password may come from $MSSQL_POOL_PASSWORD instead)",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help=f"seconds allowed for each step, > 0 and <= {MAX_CHECK_TIMEOUT:g} (default 10)",
    )
    check.add_argument(
        "--check-sql", default="SELECT 1", help="health-check query to run (default 'SELECT 1')"
    )
    check.add_argument(
        "--samples",
        type=int,
        default=5,
        help=f"SELECT 1 round trips to time, 1-{MAX_SAMPLES} (default 5)",
    )
    check.add_argument(
        "--no-pool", action="store_true", help="skip the checkout through ConnectionPool"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object instead")

    sub.add_parser("serve", help="run the TDS test server in the foreground", add_help=False)
    return parser


def _check_main(args: argparse.Namespace, out: TextIO) -> int:
    target = parse_target(args.url)
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_CHECK_TIMEOUT):
        raise UsageError(f"--timeout must be a number of seconds > 0 and <= "
                         f"{MAX_CHECK_TIMEOUT:g}, got {args.timeout!r}")
    if not 1 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be between 1 and {MAX_SAMPLES}, got {args.samples}")
    if not args.check_sql.strip():
        raise UsageError("--check-sql must be a query (it is blank)")
    scrub = scrubber(target.password)
    result = diagnose(
        target,
        timeout=args.timeout,
        check_sql=args.check_sql,
        samples=args.samples,
        use_pool=not args.no_pool,
    )
    if args.json:
        tree = scrub_tree(result.as_dict(), scrub)
        out.write(scrub(json.dumps(tree, indent=2, default=str)) + "\n")
    else:
        print_check(result, out, scrub)
    return result.exit_code


def _usage_json(message: str) -> str:
    """What ``check --json`` prints for bad usage: still one JSON object."""
    return json.dumps({"ok": False, "exit_code": EXIT_USAGE,
                       "exit_meaning": EXIT_CODES[EXIT_USAGE], "error": redact(message),
                       "steps": []}, indent=2)


def _serve_main(argv: Sequence[str]) -> int:
    try:
        from mssql_pool.testing.server import serve_main
    except ImportError as exc:
        sys.stderr.write(
            f"mssql-pool serve: the TDS test server is not available ({exc}); "
            "install the 'testing' extra: pip install 'mssql_pool[testing]'\n"
        )
        return EXIT_FAILED
    code = serve_main(list(argv))
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mssql-pool`` console script. Returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "serve":
        return _serve_main(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "check":
            return _check_main(args, sys.stdout)
        if args.duration <= 0:
            raise UsageError("--duration must be > 0 seconds")
        if not 1 <= args.threads <= 256:
            raise UsageError("--threads must be between 1 and 256")
        if args.accounts < 2:
            raise UsageError("--accounts must be >= 2")
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'mssql_pool[plot]'")
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise UsageError(f"--metrics-port must be 0-65535, got {args.metrics_port}")
        if not args.metrics_host.strip() or any(c.isspace() for c in args.metrics_host):
            raise UsageError("--metrics-host must be a host name or address")
        if args.metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
            raise UsageError(
                "--metrics-port needs prometheus-client: pip install 'mssql_pool[metrics]'"
            )
        from mssql_pool.demo import demo_main

        return int(demo_main(args))
    except UsageError as exc:
        sys.stderr.write(f"mssql-pool: error: {redact(exc)}\n")
        if args_list and args_list[0] == "check" and "--json" in args_list:
            sys.stdout.write(_usage_json(str(exc)) + "\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("mssql-pool: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
