"""The mssql-pool command without sockets: parsing, redaction, explanations, exit codes."""

from __future__ import annotations

import io
import json
import socket

import pytest

from mssql_pool import cli


def test_parse_target_full_url() -> None:
    t = cli.parse_target("mssql://app%40corp:p%40ss%3Aword@db.example.com:1444/orders?appname=x")
    assert (t.host, t.port, t.user, t.password, t.database) == (
        "db.example.com",
        1444,
        "app@corp",
        "p@ss:word",
        "orders",
    )
    assert t.kwargs["appname"] == "x"
    kwargs = t.connect_kwargs(timeout=3)
    assert kwargs["tds_version"] == "7.4"
    assert kwargs["login_timeout"] == 3 and kwargs["appname"] == "x"


def test_parse_target_defaults_and_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSQL_POOL_PASSWORD", "FromEnv-123")
    t = cli.parse_target("mssql://sa@localhost")
    assert (t.port, t.database, t.password) == (1433, "", "FromEnv-123")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://sa:pw@host/db", "scheme"),
        ("mssql://sa:pw@:1433/db", "host"),
        ("mssql://sa:pw@host:99999/db", "port"),
        ("mssql://sa:pw@host/db?colour=blue", "colour"),
        ("mssql://sa:pw@host/db?timeout=soon", "timeout"),
    ],
)
def test_parse_target_rejects_bad_urls(url: str, fragment: str) -> None:
    with pytest.raises(cli.UsageError) as info:
        cli.parse_target(url)
    assert fragment in str(info.value).lower()
    assert "pw" not in str(info.value).replace("port", "")


def test_target_repr_and_redacted_never_show_the_password() -> None:
    t = cli.parse_target("mssql://sa:Sup3r-Secret@h:1/db?tds_version=7.3")
    assert "Sup3r-Secret" not in repr(t)
    assert t.redacted() == "mssql://sa:***@h:1/db?tds_version=7.3"


def test_scrubber_hides_raw_and_quoted_password_in_secret_positions() -> None:
    # the contract since the structural redaction: the known password is masked where a
    # password stands (URL userinfo, after a secret key), raw or percent-encoded, at any
    # length; the same letters elsewhere are ordinary words and stay
    scrub = cli._scrubber("p@ss word!")
    assert scrub("a mssql://u:p@ss word!@h b PWD=p%40ss%20word%21") == (
        "a mssql://u:***@h b PWD=***")
    short = cli._scrubber("the")
    assert short("mssql://u:the@h: check the user and password=the") == (
        "mssql://u:***@h: check the user and password=***")
    assert cli._scrubber("a")("password='a', try a new one") == "password='***', try a new one"


def test_first_line_handles_pymssql_arg_shapes() -> None:
    connect_shape = Exception((18456, b"Login failed for user 'sa'.DB-Lib error message 20018"))
    assert cli._first_line(connect_shape).startswith("Login failed for user 'sa'")
    execute_shape = Exception(208, b"Invalid object name 'nope'.\nDB-Lib error message 20018")
    assert cli._first_line(execute_shape) == "Invalid object name 'nope'."
    assert cli._first_line(RuntimeError("plain\nsecond")) == "plain"
    assert cli._first_line(RuntimeError()) == "RuntimeError"


def test_explain_gives_meaning_and_remedy() -> None:
    info = cli.explain(Exception((18456, b"Login failed for user 'sa'.")))
    assert info["meaning"] and info["try"]
    assert info["type"] == "Exception"


def test_hex_ip_decodes_proc_net_addresses() -> None:
    assert cli._hex_ip("0100007F", 8) == "127.0.0.1"
    v4_mapped = "0000000000000000FFFF00000100007F"
    assert cli._hex_ip(v4_mapped, 32) == "127.0.0.1"


def test_print_check_text_and_exit_line() -> None:
    result = cli.CheckResult(target="mssql://sa:***@h:1/db")
    result.steps.append(cli.Step("dns", True, 1.0, "h -> 10.0.0.1"))
    result.steps.append(
        cli.Step(
            "tcp",
            False,
            2.0,
            "cannot connect to h:1",
            {"type": "ConnectionRefusedError", "message": "refused", "meaning": "m", "try": "t"},
        )
    )
    result.exit_code = cli.EXIT_TCP
    out = io.StringIO()
    cli.print_check(result, out, lambda s: s)
    text = out.getvalue()
    assert "  ok    dns" in text and "  FAIL  tcp" in text
    assert "meaning: m" in text and "try:     t" in text
    assert text.rstrip().endswith("exit 4")
    data = result.as_dict()
    assert data["ok"] is False and data["exit_meaning"] == "TCP connect failed"
    json.dumps(data)


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["check"],
        ["check", "http://x"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "0"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "nan"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "inf"],
        ["check", "mssql://sa:pw@h/db", "--timeout", "1e300"],
        ["check", "mssql://sa:pw@h/db?tds_version=9.9"],
        ["check", "mssql://sa:pw@h/db?timeout=-5"],
        ["check", "mssql://sa:pw@h/db?charset=NOPE"],
        ["check", "mssql://sa:pw@h/db", "--check-sql", "  "],
        ["check", "mssql://sa:pw@h/db", "--samples", "0"],
        ["check", "mssql://sa:pw/x@h/db"],
        ["demo", "--threads", "0"],
        ["demo", "--duration", "-1"],
        ["demo", "--threads", "many"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "mssql://sa:pw@h/db", "--json", "--timeout", "nan"],
        ["check", "mssql://sa:pw@h/db?tds_version=9.9", "--json"],
        ["check", "mssql://sa:pw@h/db", "--json", "--check-sql", ""],
        ["check", "--json", "mssql://sa:S3c/retPW@h/db"],
        ["check", "--json", "mssql://sa:pw@h/db", "--timeout", "soon"],
    ],
)
def test_bad_usage_with_json_still_prints_json(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["exit_code"] == cli.EXIT_USAGE and data["ok"] is False and data["error"]
    assert "retPW" not in captured.out + captured.err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "demo" in capsys.readouterr().err


def test_help_lists_the_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "check", "serve", "Exit codes"):
        assert word in out


def test_check_dns_failure_is_exit_3_without_network(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_dns(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(cli.socket, "getaddrinfo", no_dns)
    code = cli.main(["check", "mssql://sa:Hidden-Pass-1@db.invalid/x", "--json"])
    assert code == cli.EXIT_DNS
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["exit_code"] == 3 and data["steps"][0]["name"] == "dns"
    assert "Hidden-Pass-1" not in out


def test_serve_delegates_or_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys
    import types

    seen: list[list[str]] = []
    fake = types.ModuleType("mssql_pool.testing.server")
    fake.serve_main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mssql_pool.testing.server", fake)
    assert cli.main(["serve", "--port", "0"]) == 0
    assert seen == [["--port", "0"]]


# ------------------------------------------------------------------ demo, pure parts
def test_demo_schedule_is_deterministic_and_fits_the_run() -> None:
    from mssql_pool import demo

    a = demo.make_schedule(7, 20.0)
    b = demo.make_schedule(7, 20.0)
    assert [(p.key, p.at, p.window, p.params) for p in a] == [
        (p.key, p.at, p.window, p.params) for p in b
    ]
    assert sorted(p.key for p in a) == sorted(demo.FAULT_KEYS)
    assert all(0 < p.at and p.at + p.window < 20.0 for p in a)
    assert [p.at for p in a] == sorted(p.at for p in a)
    other = demo.make_schedule(8, 20.0)
    assert [p.key for p in other] != [p.key for p in a] or [p.at for p in other] != [
        p.at for p in a
    ]
    short = demo.make_schedule(1, 6.0)
    assert all(p.at + p.window < 6.0 for p in short)


def _recorder(threads: int = 2) -> object:
    from mssql_pool import demo

    clock = iter([0.0] + [i * 0.1 for i in range(1, 1000)])
    return demo.Recorder(threads, clock=lambda: next(clock))


def test_invariant_passes_on_a_consistent_ledger() -> None:
    from mssql_pool import demo

    rec = _recorder()
    rec.attempted.update({1, 2, 3, 4})
    rec.commit(0, 1)
    rec.commit(1, 2)
    rec.app_error(3, RuntimeError("gave up"))
    rec.commit_unknown(4, demo.CommitUnknownError("lost"))
    ledger = [(1, 0, 1, 10), (2, 1, 2, 5), (4, 2, 0, 1)]  # 4 landed despite unknown
    balances = {0: 1000 - 10 + 1, 1: 1000 + 10 - 5, 2: 1000 + 5 - 1}
    result = demo.check_invariant(balances, ledger, 3, rec)
    assert result["ok"], result
    assert result["commit_unknown"] == 1 and result["commit_unknown_landed"] == 1


@pytest.mark.parametrize(
    ("ledger", "balances", "failing"),
    [
        # transfer 1 applied twice
        ([(1, 0, 1, 10), (1, 0, 1, 10)], {0: 980, 1: 1020}, "no_duplicates"),
        # acknowledged transfer 1 missing from the ledger (and the balances)
        ([], {0: 1000, 1: 1000}, "acknowledged_landed"),
        # half a transfer: balances do not match the ledger, total off
        ([(1, 0, 1, 10)], {0: 990, 1: 1000}, "total_balance"),
        # failed transfer 3 applied
        ([(1, 0, 1, 10), (3, 1, 0, 5)], {0: 995, 1: 1005}, "failed_not_applied"),
        # a ledger row nobody attempted
        ([(1, 0, 1, 10), (99, 1, 0, 5)], {0: 995, 1: 1005}, "no_unattributed"),
    ],
)
def test_invariant_catches_each_violation(
    ledger: list[tuple[int, int, int, int]], balances: dict[int, int], failing: str
) -> None:
    from mssql_pool import demo

    rec = _recorder()
    rec.attempted.update({1, 3})
    rec.commit(0, 1)
    rec.app_error(3, RuntimeError("x"))
    result = demo.check_invariant(balances, ledger, 2, rec)
    assert not result["ok"]
    assert not result["checks"][failing]["ok"]


def test_recovery_rows_and_report_text() -> None:
    from mssql_pool import demo

    rec = demo.Recorder(2, clock=lambda: 0.0)
    plan = demo.FaultPlan("partition", "network partition (1.0 s)", 1.0, 1.0)
    plan.started, plan.ended = 1.0, 2.0
    skipped = demo.FaultPlan("redirect", "gateway redirect", 1.5, skipped="not here")
    rec.events = [(0.5, "commit"), (1.2, "retry"), (1.5, "error"), (2.3, "commit"), (2.6, "commit")]
    rec.commit_times = [[0.5, 2.3], [2.6]]
    rec.counts.update({"commit": 3, "retry": 1, "error": 1})
    rows = demo._recovery([plan, skipped], rec, 3.0)
    assert rows[0]["fault"].startswith("(before")
    assert rows[1]["retries"] == 1 and rows[1]["app_errors"] == 1
    assert rows[1]["recovered_in"] == pytest.approx(0.6)  # the slower worker, 2.6 - 2.0
    assert rows[2]["skipped"] == "not here"
    report = demo.DemoReport("embedded", 2, 3.0, 1, elapsed=3.0, faults=rows)
    report.counts = dict(rec.counts)
    report.invariant = demo.check_invariant({0: 1000, 1: 1000}, [], 2, demo.Recorder(1))
    report.ok = False
    out = io.StringIO()
    demo.print_report(report, out)
    text = out.getvalue()
    assert "network partition" in text and "0.60s" in text
    assert "skipped: not here" in text
    assert "invariant: PASS" in text
    assert text.rstrip().endswith("result: FAIL (exit 1)")


def test_timeline_buckets_events_per_100ms() -> None:
    from mssql_pool import demo

    rec = demo.Recorder(1, clock=lambda: 0.0)
    rec.events = [(0.05, "commit"), (0.07, "commit"), (0.15, "retry"), (0.31, "error")]
    tl = demo._timeline(rec, 0.35)
    assert tl["commit"][:4] == [2, 0, 0, 0]
    assert tl["retry"][1] == 1 and tl["error"][3] == 1


def test_plot_is_written(tmp_path: object) -> None:
    pytest.importorskip("matplotlib")
    from pathlib import Path

    from mssql_pool import demo

    rec = demo.Recorder(1, clock=lambda: 0.0)
    rec.events = [(0.05 * i, "commit") for i in range(40)]
    report = demo.DemoReport("embedded", 1, 2.0, 1, elapsed=2.0)
    report.timeline = demo._timeline(rec, 2.0)
    report.faults = [
        {"fault": "restart", "at": 0.5, "window": 0.4, "skipped": "", "recovered_in": 0.1}
    ]
    path = Path(str(tmp_path)) / "t.png"
    demo.write_plot(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_recorder_reads_the_pools_events() -> None:
    """Retries and logins in the demo's report are the pool's own events."""
    import pymssql

    from mssql_pool import demo
    from mssql_pool.classify import classify
    from mssql_pool.events import EventKind, PoolEvent

    rec = demo.Recorder(1, clock=lambda: 100.0)
    info = classify(pymssql.OperationalError(1205, b"deadlock victim"))

    def ev(kind: EventKind, t: float, **kw: object) -> PoolEvent:
        return PoolEvent(kind, 100.0 + t, 0.0, "demo", **kw)  # type: ignore[arg-type]

    for event in (ev(EventKind.CONNECT, 0.5, conn_id=1),
                  ev(EventKind.RETRY_ATTEMPT, 1.2, attempt=1, error_info=info),
                  ev(EventKind.CONNECT_FAILED, 1.3),
                  ev(EventKind.CONNECT_FAILED, 1.4, reason="circuit_open"),
                  ev(EventKind.DISCARD, 1.5, conn_id=1, reason="dead"),
                  ev(EventKind.CONNECT, 2.2, conn_id=2)):
        rec(event)
    assert rec.retry_kinds == {"deadlock 1205": 1} and rec.counts["retry"] == 1
    assert rec.pool_events["connect_failed"] == 2 and rec.discards == {"dead": 1}
    plan = demo.FaultPlan("restart", "server restart", 1.0, 1.0)
    plan.started, plan.ended = 1.0, 2.0
    rows = demo._recovery([plan], rec, 3.0)
    # the circuit's refusal is no login; the stats deltas are not consulted
    assert (rows[0]["logins"], rows[0]["logins_failed"]) == (1, 0)
    assert (rows[1]["logins"], rows[1]["logins_failed"], rows[1]["retries"]) == (1, 1, 1)
    report = demo.DemoReport("embedded", 1, 3.0, 1, elapsed=3.0, faults=rows)
    report.pool_events, report.discards = dict(rec.pool_events), dict(rec.discards)
    out = io.StringIO()
    demo.print_report(report, out)
    assert "pool events: connect 2; connect_failed 2; discard 1 (dead 1); retry_attempt 1" \
        in out.getvalue()
