"""mssql_pool.testing: a TDS test server (SQL Server stand-in) for recovery tests."""
