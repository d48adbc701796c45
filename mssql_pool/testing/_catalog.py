"""The system views a pool or a tool reads (``sys.dm_exec_sessions``, ``sys.tables``,
``INFORMATION_SCHEMA.COLUMNS``...), built per query from the engine's state."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import Executor, SessionState

__all__ = ["CATALOG", "Catalog"]


Catalog = tuple[list[str], list[tuple[Any, ...]]]


def _cat_sessions(ex: Executor) -> Catalog:
    cols = ["session_id", "login_name", "host_name", "program_name", "status", "database_id",
            "transaction_isolation_level", "login_time", "is_user_process", "context_info",
            "open_transaction_count", "original_login_name", "language", "lock_timeout",
            "text_size", "quoted_identifier", "arithabort", "ansi_nulls", "ansi_warnings",
            "ansi_padding", "concat_null_yields_null"]
    rows = []
    for s in ex.engine.sessions_provider():
        state: SessionState | None = s.get("_state")
        if state is None:
            continue
        o = state.options
        rows.append((state.spid, state.user, state.hostname, state.appname,
                     "running" if s.get("in_request") else "sleeping",
                     ex.engine.database_id(state.database), state.isolation,
                     state.login_time.isoformat(sep=" "), 1, state.context_info,
                     state.trancount, state.user, state.language, state.lock_timeout,
                     state.textsize, int(o.get("QUOTED_IDENTIFIER", False)),
                     int(o.get("ARITHABORT", False)), int(o.get("ANSI_NULLS", False)),
                     int(o.get("ANSI_WARNINGS", False)), int(o.get("ANSI_PADDING", False)),
                     int(o.get("CONCAT_NULL_YIELDS_NULL", False))))
    return cols, rows


def _cat_databases(ex: Executor) -> Catalog:
    cols = ["name", "database_id", "compatibility_level", "state", "state_desc",
            "snapshot_isolation_state", "is_read_committed_snapshot_on", "collation_name",
            "user_access_desc", "is_read_only"]
    rows = [(name, i + 1, 160, 0, "ONLINE", 0, 0, "SQL_Latin1_General_CP1_CI_AS", "MULTI_USER", 0)
            for i, name in enumerate(ex.engine.databases())]
    return cols, rows


def _cat_tables(ex: Executor) -> Catalog:
    cols = ["name", "object_id", "schema_id", "type", "type_desc", "create_date",
            "modify_date", "is_ms_shipped", "principal_id", "parent_object_id"]
    rows = [(name, oid, 1, "U", "USER_TABLE", "2024-01-01 00:00:00", "2024-01-01 00:00:00", 0,
             None, 0) for oid, name, _sql, _t in ex._tables()]
    return cols, rows


def _cat_objects(ex: Executor) -> Catalog:
    cols, rows = _cat_tables(ex)
    for rowid, name in ex.conn.execute(
            "SELECT rowid, name FROM main.sqlite_master WHERE type='view'"):
        rows.append((name, int(rowid) + 1000, 1, "V", "VIEW", "2024-01-01 00:00:00",
                     "2024-01-01 00:00:00", 0, None, 0))
    return cols, rows


def _cat_schemas(ex: Executor) -> Catalog:
    return ["name", "schema_id", "principal_id"], [
        ("dbo", 1, 1), ("guest", 2, 2), ("INFORMATION_SCHEMA", 3, 3), ("sys", 4, 4)]


def _cat_system_views(ex: Executor) -> Catalog:
    names = ["dm_exec_sessions", "databases", "tables", "objects", "schemas", "columns",
             "system_views", "dm_exec_requests", "dm_tran_session_transactions"]
    return ["name", "object_id", "schema_id", "type", "type_desc"], [
        (n, -100 - i, 4, "V", "VIEW") for i, n in enumerate(names)]


def _cat_requests(ex: Executor) -> Catalog:
    cols = ["session_id", "request_id", "status", "command", "database_id", "blocking_session_id",
            "wait_type", "wait_time", "open_transaction_count", "transaction_isolation_level"]
    rows = [(s["spid"], 0, "running", "SELECT", 1, 0, None, 0, 0, 2)
            for s in ex.engine.sessions_provider() if s.get("in_request")]
    return cols, rows


def _decl_info(decl: str) -> tuple[str, int | None, int | None, int | None]:
    m = re.match(r"\s*(\w+)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?", decl or "")
    if not m:
        return ("sql_variant", None, None, None)
    name = m.group(1).lower()
    a = int(m.group(2)) if m.group(2) else None
    b = int(m.group(3)) if m.group(3) else None
    if name == "integer":
        name = "int"
    if name in ("nvarchar", "varchar", "nchar", "char", "varbinary", "binary"):
        return (name, a if a is not None else -1, None, None)
    if name in ("decimal", "numeric"):
        return (name, None, a or 18, b or 0)
    return (name, None, None, None)


def _columns_of(ex: Executor) -> list[tuple[int, str, int, str, bool, Any, bool]]:
    out = []
    for oid, name, _sql, _t in ex._tables():
        for cid, cname, ctype, notnull, default, pk in ex.conn.execute(
                f'PRAGMA main.table_info("{name}")'):
            out.append((oid, name, int(cid) + 1, cname, bool(notnull), default,
                        bool(pk) and (ctype or "").upper() == "INTEGER", ctype))
    return out  # type: ignore[return-value]


def _cat_columns(ex: Executor) -> Catalog:
    cols = ["object_id", "name", "column_id", "system_type_id", "user_type_id", "max_length",
            "precision", "scale", "is_nullable", "is_identity", "is_computed",
            "collation_name"]
    rows = []
    for oid, _t, cid, cname, notnull, _d, ident, ctype in _columns_of(ex):  # type: ignore[misc]
        tname, ln, prec, scale = _decl_info(ctype)
        rows.append((oid, cname, cid, 0, 0, ln or 0, prec or 0, scale or 0, int(not notnull),
                     int(ident), 0, None))
    return cols, rows


def _cat_is_tables(ex: Executor) -> Catalog:
    cols = ["TABLE_CATALOG", "TABLE_SCHEMA", "TABLE_NAME", "TABLE_TYPE"]
    rows = [(ex.state.database, "dbo", name, "BASE TABLE") for _o, name, _s, _t in ex._tables()]
    for (name,) in ex.conn.execute("SELECT name FROM main.sqlite_master WHERE type='view'"):
        rows.append((ex.state.database, "dbo", name, "VIEW"))
    return cols, rows


def _cat_is_columns(ex: Executor) -> Catalog:
    cols = ["TABLE_CATALOG", "TABLE_SCHEMA", "TABLE_NAME", "COLUMN_NAME", "ORDINAL_POSITION",
            "COLUMN_DEFAULT", "IS_NULLABLE", "DATA_TYPE", "CHARACTER_MAXIMUM_LENGTH",
            "NUMERIC_PRECISION", "NUMERIC_SCALE", "DATETIME_PRECISION", "COLLATION_NAME"]
    rows = []
    for _oid, tname, cid, cname, notnull, default, _i, ctype in _columns_of(ex):  # type: ignore[misc]
        dtype, ln, prec, scale = _decl_info(ctype)
        rows.append((ex.state.database, "dbo", tname, cname, cid, default,
                     "NO" if notnull else "YES", dtype, ln, prec, scale, None,
                     "SQL_Latin1_General_CP1_CI_AS" if ln is not None else None))
    return cols, rows


CATALOG: dict[tuple[str, str], Callable[[Executor], Catalog]] = {
    ("sys", "dm_exec_sessions"): _cat_sessions,
    ("sys", "databases"): _cat_databases,
    ("sys", "tables"): _cat_tables,
    ("sys", "objects"): _cat_objects,
    ("sys", "all_objects"): _cat_objects,
    ("sys", "schemas"): _cat_schemas,
    ("sys", "system_views"): _cat_system_views,
    ("sys", "dm_exec_requests"): _cat_requests,
    ("sys", "columns"): _cat_columns,
    ("information_schema", "tables"): _cat_is_tables,
    ("information_schema", "columns"): _cat_is_columns,
}
