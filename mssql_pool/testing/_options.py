"""What the test server says it is (its version) and the session options it starts
each login with, as SQL Server's; errors that end only the statement."""

from __future__ import annotations

VERSION = (16, 0, 4135)

VERSION_STRING = (
    "Microsoft SQL Server 2022 (RTM-CU15) (KB5041321) - 16.0.4135.4 (X64) \n"
    "\tJul 10 2024 14:09:09 \n\tCopyright (C) 2022 Microsoft Corporation\n"
    "\tDeveloper Edition (64-bit) on Linux (mssql_pool.testing TDS test server) <X64>"
)

ISOLATION_NAMES = {
    1: "READ UNCOMMITTED", 2: "READ COMMITTED", 3: "REPEATABLE READ", 4: "SERIALIZABLE",
    5: "SNAPSHOT",
}

LOGIN_OPTIONS = {
    "ANSI_NULLS": True, "ANSI_NULL_DFLT_ON": True, "ANSI_PADDING": True, "ANSI_WARNINGS": True,
    "ARITHABORT": True, "CONCAT_NULL_YIELDS_NULL": True, "QUOTED_IDENTIFIER": True,
    "CURSOR_CLOSE_ON_COMMIT": False, "IMPLICIT_TRANSACTIONS": False, "NOCOUNT": False,
    "XACT_ABORT": False, "ARITHIGNORE": False, "NUMERIC_ROUNDABORT": False,
    "ANSI_DEFAULTS": False, "FMTONLY": False,
}

OPTION_BITS = {
    "IMPLICIT_TRANSACTIONS": 2, "CURSOR_CLOSE_ON_COMMIT": 4, "ANSI_WARNINGS": 8,
    "ANSI_PADDING": 16, "ANSI_NULLS": 32, "ARITHABORT": 64, "ARITHIGNORE": 128,
    "QUOTED_IDENTIFIER": 256, "NOCOUNT": 512, "ANSI_NULL_DFLT_ON": 1024,
    "CONCAT_NULL_YIELDS_NULL": 4096, "NUMERIC_ROUNDABORT": 8192, "XACT_ABORT": 16384,
}

# errors that end only the statement (the batch goes on), as SQL Server's do
STATEMENT_ERRORS = frozenset({245, 515, 547, 1222, 2601, 2627, 3701, 3902, 3903, 6104, 6106,
                              8134})
