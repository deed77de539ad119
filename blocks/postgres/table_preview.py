"""What preparing and loading a PostgreSQL table would do, read from the database without
writing (a dry run): the DDL `PostgresTarget.prepare_table` would run, its guard decisions,
and where each column lands with which type.

Every function reads only, on a connection in a READ ONLY transaction the caller opened, and
never creates the ledger: without one, no other job has prepared or loaded anything here.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pyarrow as pa
from psycopg import sql

from blocks.columns import Column, LogicalType, TargetTable
from blocks.postgres import ledger as pg_ledger
from blocks.postgres.ledger_schema import ledger_exists
from blocks.postgres.tables import (
    check_columns,
    check_table_privileges,
    check_unique_key,
    create_table_sql,
    pg_type,
    table_exists,
    truncation_guard,
)
from blocks.postgres.type_loss import type_loss
from blocks.preview import ColumnMapping, GuardDecision, TablePreview, guard
from blocks.seam import LoadMode


def preview_prepare(
    conn: psycopg.Connection,
    job_id: str,
    source_table: str,
    migration: str,
    table: TargetTable,
    mode: LoadMode,
    allow_foreign_rows: bool,
    resumable_within: timedelta,
) -> TablePreview:
    """The DDL and the guard decisions of `prepare_table` for this table: a job that already
    prepared it changes nothing; a missing table is created (CREATE SCHEMA when the schema is
    missing too); an existing one must be one the role may load (`check_table_privileges`),
    have the columns, for `upsert` a unique key, and for
    `replace` pass the truncation guard ("would truncate N rows" or its refusal)."""
    name = table.qualified
    if job_id and ledger_exists(conn) and pg_ledger.get_table_status(conn, job_id, source_table):
        reason = f"job {job_id} already prepared {name}: nothing is created or truncated again"
        return TablePreview(decisions=[GuardDecision(guard="prepare", outcome="pass", reason=reason)])
    if not table_exists(conn, table):
        ddl = [] if _schema_exists(conn, table.schema_name) else [_create_schema(conn, table.schema_name)]
        ddl.append(create_table_sql(table).as_string(conn))
        decisions = [_decision("create table", f"{name} is missing: it is created from the source's columns")]
        if mode is LoadMode.UPSERT:
            keys = ", ".join(table.primary_key)
            decisions.append(_decision("unique key", f"{name} is created with PRIMARY KEY ({keys})"))
        if mode is LoadMode.REPLACE:
            decisions.append(_decision("truncation", f"{name} is new: nothing to truncate"))
        return TablePreview(ddl=ddl, decisions=decisions)
    decisions = [
        _decision("create table", f"{name} exists: not created"),
        guard(
            "privileges",
            lambda: check_table_privileges(conn, table, mode),
            f"the role may {mode.value} into {name}",
        ),
    ]
    if decisions[-1].outcome == "refuse":
        return TablePreview(decisions=decisions)  # the other guards would read what it may not
    decisions.append(
        guard("columns", lambda: check_columns(conn, table), f"{name} has every column the job loads")
    )
    if mode is LoadMode.UPSERT:
        keys = list(table.primary_key)
        decisions.append(guard("unique key", lambda: check_unique_key(conn, table), f"unique key on {keys}"))
    if mode is LoadMode.REPLACE:
        decisions.append(
            guard(
                "truncation",
                lambda: truncation_guard(
                    conn, job_id, migration, table, allow_foreign_rows, resumable_within
                ),
                lambda rows: (
                    f"would truncate {name}: {rows} rows"
                    + (" (allow_truncate_foreign_rows: true)" if allow_foreign_rows else "")
                ),
            )
        )
    return TablePreview(decisions=decisions)


def column_mappings(
    conn: psycopg.Connection, table: TargetTable, source_columns: tuple[Column, ...], staged: pa.Schema
) -> list[ColumnMapping]:
    """Each column's source name and type, staged Arrow type, and target column and type: the
    existing table's type, else the `type_overrides` entry or `pg_type`. A type that cannot
    hold every source value exactly is flagged `lossy` (`type_loss`)."""
    existing = _existing_types(conn, table)
    mappings = []
    for source, target, field in zip(source_columns, table.columns, staged, strict=True):
        if target.name in existing:
            target_type, where = existing[target.name], "the existing column's type"
        elif target.name in table.type_overrides:
            target_type, where = table.type_overrides[target.name], "type_overrides"
        else:
            target_type, where = pg_type(target), ""
        loss = type_loss(source, target_type)
        mappings.append(
            ColumnMapping(
                source_name=source.name,
                source_type=source.source_type or _logical_text(source),
                staged_type=str(field.type),
                target_name=target.name,
                target_type=target_type,
                flag="lossy" if loss else "",
                reason=f"{loss} ({where})" if loss and where else loss or "",
            )
        )
    return mappings


def _existing_types(conn: psycopg.Connection, table: TargetTable) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (sql.Identifier(table.schema_name, table.name).as_string(conn),),
    ).fetchall()
    return dict(rows)


def _logical_text(column: Column) -> str:
    if column.logical is LogicalType.DECIMAL:
        return f"decimal({column.precision},{column.scale})"
    return str(column.logical)


def _schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _create_schema(conn: psycopg.Connection, schema: str) -> str:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)).as_string(conn)


def _decision(guard_name: str, reason: str) -> GuardDecision:
    return GuardDecision(guard=guard_name, outcome="pass", reason=reason)
