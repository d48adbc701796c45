"""pytest plugin of mssql_pool.testing (fixtures arrive with the TDS test server)."""
