"""FreeTDS's own command-line client, ``tsql`` (Debian's freetds-bin), runs batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from mssql_pool.testing import TdsServer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("tsql") is None,
                       reason="FreeTDS tsql is not installed (apt-get install freetds-bin)"),
]


def run_tsql(server: TdsServer, script: str,
             version: str = "7.4") -> subprocess.CompletedProcess[str]:
    """Feed ``script`` (batches ended by ``go``) to tsql; its own config files are ignored."""
    env = dict(os.environ, TDSVER=version, FREETDSCONF=os.devnull, LANG="C.UTF-8")
    env.pop("TDSDUMP", None)
    return subprocess.run(
        ["tsql", "-H", server.host, "-p", str(server.port), "-U", server.user, "-P",
         server.password, "-D", server.database],
        input=script + "\nexit\n", capture_output=True, text=True, timeout=30, env=env,
        check=False,
    )


@pytest.mark.parametrize("version", ["7.0", "7.1", "7.2", "7.3", "7.4"])
def test_batches_results_and_errors(tds_server: TdsServer, version: str) -> None:
    script = "\n".join([
        "SELECT 1 AS one, N'héllo' AS greeting", "go",
        "CREATE TABLE t (id INT PRIMARY KEY, v NVARCHAR(10))", "go",
        "INSERT INTO t VALUES (1, N'a'), (2, N'b')", "go",
        "SELECT id, v FROM t ORDER BY id; SELECT COUNT(*) AS n FROM t", "go",
        "SELECT * FROM missing_table", "go",
        "BEGIN TRAN", "INSERT INTO t VALUES (3, N'c')", "ROLLBACK",
        "SELECT COUNT(*) AS after_rollback FROM t", "go",
        "PRINT 'printed by the server'", "go",
    ])
    r = run_tsql(tds_server, script, version)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "one\tgreeting\n1\théllo" in out
    assert "id\tv\n1\ta\n2\tb" in out
    assert "n\n2" in out
    assert "after_rollback\n2" in out
    assert "Msg 208" in r.stderr and "Invalid object name 'missing_table'" in r.stderr
    assert "printed by the server" in out + r.stderr
    stats = tds_server.stats()
    assert stats["logins"] == 1 and stats["batches"] >= 6
    deadline = time.monotonic() + 5
    while tds_server.stats()["sessions_open"] and time.monotonic() < deadline:
        time.sleep(0.01)  # tsql has exited: its session ends when the server sees EOF
    assert tds_server.stats()["sessions_open"] == 0


def test_types_and_nulls_as_tsql_prints_them(tds_server: TdsServer) -> None:
    r = run_tsql(tds_server, "\n".join([
        "SELECT CAST(NULL AS INT) AS n, CAST('2024-01-02' AS DATE) AS d, "
        "CAST(1.5 AS DECIMAL(5,2)) AS dec, CAST(255 AS TINYINT) AS ti, "
        "CAST('ab' AS CHAR(4)) AS ch, 0x00FF AS bin, "
        "CAST('12345678-1234-5678-1234-567812345678' AS UNIQUEIDENTIFIER) AS g", "go",
    ]))
    assert r.returncode == 0, r.stderr
    after = r.stdout.split("n\td\tdec\tti\tch\tbin\tg\n", 1)[1]
    row = after.splitlines()[0].split("\t")
    assert row[0] == "NULL" and row[1].startswith("Jan  2 2024") and row[2] == "1.50"
    assert row[3] == "255" and row[4] == "ab  " and row[5].lower() == "00ff"
    assert row[6].upper() == "12345678-1234-5678-1234-567812345678"


def test_a_result_of_many_packets(tds_server: TdsServer) -> None:
    rows = ", ".join(f"({i}, N'{'x' * 40}{i}')" for i in range(2000))
    r = run_tsql(tds_server, "\n".join([
        "CREATE TABLE big (id INT, s NVARCHAR(60))", "go",
        f"INSERT INTO big VALUES {rows}", "go",
        "SELECT id, s FROM big ORDER BY id", "go",
    ]))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "\t" in ln and "x" * 40 in ln]
    assert len(lines) == 2000
    assert lines[-1].endswith("x" * 40 + "1999") and "(2000 rows affected)" in r.stdout
