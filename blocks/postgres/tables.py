"""Where a source table lands in PostgreSQL: the target table model, its DDL, and the checks
a table passes before a job loads into it (columns, unique key, the truncation guard).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from blocks.columns import Column, LogicalType, TargetTable
from blocks.errors import TargetGuardError
from blocks.job_status import UNFINISHED
from blocks.postgres import ledger as pg_ledger
from blocks.postgres.ledger_schema import ledger_exists
from blocks.seam import LoadMode

_PG_TYPE = {
    LogicalType.INTEGER: "bigint",
    LogicalType.FLOAT: "double precision",
    LogicalType.STRING: "text",
    LogicalType.BOOLEAN: "boolean",
    LogicalType.DATE: "date",
    LogicalType.TIME: "time",
    LogicalType.TIMESTAMP: "timestamp",
    LogicalType.TIMESTAMP_TZ: "timestamptz",
    LogicalType.JSON: "jsonb",
    LogicalType.BINARY: "bytea",
}


def pg_type(column: Column) -> str:
    """The PostgreSQL type a source column is created with (see the README's type table)."""
    if column.logical is LogicalType.DECIMAL:
        return f"numeric({column.precision},{column.scale})"
    return _PG_TYPE[column.logical]


def ident(table: TargetTable) -> sql.Composed:
    """The table's schema-qualified identifier, quoted for SQL."""
    return sql.Identifier(table.schema_name, table.name)


def schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def table_exists(conn: psycopg.Connection, table: TargetTable) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (ident(table).as_string(conn),)).fetchone()
    return row[0] is not None


def existing_columns(conn: psycopg.Connection, table: TargetTable) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        (table.schema_name, table.name),
    ).fetchall()
    return dict(rows)


def create_table_sql(table: TargetTable) -> sql.Composed:
    cols = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name),
            sql.SQL(table.type_overrides.get(c.name) or pg_type(c)),
            sql.SQL("" if c.nullable else " NOT NULL"),
        )
        for c in table.columns
    ]
    if table.primary_key:
        cols.append(
            sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, table.primary_key)))
        )
    return sql.SQL("CREATE TABLE {} ({})").format(ident(table), sql.SQL(", ").join(cols))


def check_columns(conn: psycopg.Connection, table: TargetTable) -> None:
    """Raise `TargetGuardError` when an existing table lacks one of the columns."""
    existing = existing_columns(conn, table)
    missing = [c.name for c in table.columns if c.name not in existing]
    if missing:
        raise TargetGuardError(f"target table {table.qualified} exists but lacks column(s) {missing}")


def check_table_privileges(conn: psycopg.Connection, table: TargetTable, mode: LoadMode) -> None:
    """Raise `TargetGuardError` when the session's role may not load the existing `table` in
    `mode`: SELECT and INSERT always, UPDATE for `upsert`, TRUNCATE for `replace`. The message
    names the role, the table, each missing privilege and the GRANT that fixes it. Reads only."""
    needed = ["SELECT", "INSERT"] + (["UPDATE"] if mode is LoadMode.UPSERT else [])
    needed += ["TRUNCATE"] if mode is LoadMode.REPLACE else []
    role, *held = conn.execute(
        sql.SQL("SELECT current_user, {}").format(
            sql.SQL(", ").join(
                sql.SQL("has_table_privilege(%(t)s::regclass, {})").format(p)
                for p in map(sql.Literal, needed)
            )
        ),
        {"t": ident(table).as_string(conn)},
    ).fetchone()
    missing = [p for p, ok in zip(needed, held, strict=True) if not ok]
    if missing:
        grant = f"GRANT {', '.join(missing)} ON {ident(table).as_string(conn)} TO {sql.Identifier(role).as_string(conn)}"
        raise TargetGuardError(
            f"role {role} lacks {', '.join(missing)} on target table {table.qualified} (needed to "
            f"{mode.value} into it). Fix, as a role that may grant it: {grant}"
        )


def check_unique_key(conn: psycopg.Connection, table: TargetTable) -> None:
    """Raise `TargetGuardError` unless the table has a unique index on its `primary_key` (upsert)."""
    if not table.primary_key:
        raise TargetGuardError(f"upsert into {table.qualified} needs primary_key in the config")
    rows = conn.execute(
        "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique GROUP BY i.indexrelid",
        (ident(table).as_string(conn),),
    ).fetchall()
    if sorted(table.primary_key) not in [r[0] for r in rows]:
        raise TargetGuardError(
            f"upsert into {table.qualified} needs a unique index or primary key on {list(table.primary_key)}"
        )


def truncation_guard(
    conn: psycopg.Connection,
    job_id: str,
    migration: str,
    table: TargetTable,
    allow_foreign_rows: bool,
    resumable_within: timedelta,
) -> int:
    """Raise `TargetGuardError` before a `replace` truncates `table` while another unfinished,
    still resumable job has prepared it, or while it holds rows `migration` did not write
    (unless `allow_foreign_rows`). Returns the rows the truncation would remove. Reads only;
    a database without a ledger has no other job."""
    others = pg_ledger.other_jobs_for_target(conn, job_id, table.qualified) if ledger_exists(conn) else []
    since = datetime.now(UTC) - resumable_within
    blocking = [o for o in others if o["status"] in UNFINISHED and o["started_at"] >= since]
    if blocking:
        raise TargetGuardError(
            f"refusing to truncate {table.qualified}: job {blocking[0]['job_id']} "
            f"({blocking[0]['status']}) is unfinished and can still resume; finish or roll it back first"
        )
    present = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(table))).fetchone()[0]
    if allow_foreign_rows:
        return present
    ours: list[str] = []
    for other in others:  # newest first, back to the last truncation by this migration
        if other["migration"] != migration or other["status"] == "rolled_back":
            continue
        ours.append(other["job_id"])
        if other["truncated"]:
            break
    chunks = pg_ledger.loaded_chunks_for_target(conn, ours, table.qualified) if ours else []
    written = sum(c["rows_after"] - c["rows_before"] for c in chunks)
    if present > written:
        raise TargetGuardError(
            f"refusing to truncate {table.qualified}: it holds {present} rows but migration "
            f"{migration!r} wrote only {written} of them; set allow_truncate_foreign_rows: true "
            "on the table to replace them anyway"
        )
    return present
