"""A chunk's rows into a PostgreSQL table by COPY: binary where every column has an exact
binary form, CSV otherwise, and upserts through a temporary staging table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from blocks.errors import DataConversionError, TargetGuardError
from blocks.postgres import ledger_claims
from blocks.postgres.csv_copy import batch_to_copy_csv
from blocks.postgres.ledger_schema import lock
from blocks.postgres.pg_binary import COPY_HEADER, COPY_TRAILER, BinaryCopyEncoder, target_typnames
from blocks.postgres.tables import TargetTable, ident


def copy_batches(
    conn: psycopg.Connection,
    ident: sql.Composable,
    table: TargetTable,
    batches: Iterable[pa.RecordBatch],
) -> int:
    """COPY the batches in; binary when every column's (Arrow, PostgreSQL) type pair has an
    exact binary form (`blocks.postgres.pg_binary`), CSV otherwise (say, an existing table whose
    column is float4 for a float64 source)."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return 0
    names = [c.name for c in table.columns]
    encoder = BinaryCopyEncoder.for_columns(
        first.schema.types, target_typnames(conn, ident.as_string(conn), names), names
    )
    encode = encoder.encode if encoder else batch_to_copy_csv
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL("binary" if encoder else "csv")
    )
    rows = 0
    with conn.cursor() as cur:
        try:
            with cur.copy(statement) as copy:
                if encoder:
                    copy.write(COPY_HEADER)
                for batch in itertools.chain([first], batches):
                    copy.write(encode(batch))
                    rows += batch.num_rows
                if encoder:
                    copy.write(COPY_TRAILER)
        except psycopg.errors.DataError as exc:
            raise DataConversionError(f"{table.qualified} rejected a value: {exc}".strip()) from None
        except psycopg.errors.IntegrityError as exc:
            raise TargetGuardError(
                f"{table.qualified} refused the chunk: {exc}".strip()
                + "\nThe target already holds rows with these keys that no other migration job's ledger "
                "range covers (written by hand or by another tool?): use load_mode upsert or replace, "
                "or delete those rows first"
            ) from None
    return rows


def upsert_batches(
    conn: psycopg.Connection,
    table: TargetTable,
    batches: Iterable[pa.RecordBatch],
    job_id: str,
    source_table: str,
    chunk_id: str,
) -> tuple[int, list[dict[str, Any]]]:
    """Insert the chunk's rows, updating rows with the same key. Returns the rows sent, and
    the other jobs' chunks whose rows it overwrote (with how many), for the ledger.

    Raises `DataConversionError` when the chunk holds a key twice, or a key an earlier
    chunk of the same job loaded: the source holds it more than once, and only the last
    row would be kept."""
    staging = sql.Identifier(f"_migrate_stage_{table.name}"[:63])
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
            staging, ident(table)
        )
    )
    rows = copy_batches(conn, staging, table, batches)
    names = [c.name for c in table.columns]
    updates = [n for n in names if n not in table.primary_key]
    conflict = sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
    # Chunks of one job load one after another here, so each sees the keys the others loaded.
    lock(conn, f"upsert/{job_id}/{table.qualified}")
    overwritten = dict(
        conn.execute(
            sql.SQL("SELECT t.xmin::text, count(*) FROM {} t JOIN {} s USING ({}) GROUP BY 1").format(
                ident(table), staging, conflict
            )
        ).fetchall()
    )
    owners = ledger_claims.chunks_of_xids(conn, list(overwritten))
    clash = sum(n for xid, n in overwritten.items() if xid in owners and owners[xid]["job_id"] == job_id)
    if clash:
        raise DataConversionError(
            f"upsert into {table.qualified}: {clash} row(s) of chunk {chunk_id} have the same "
            f"{list(table.primary_key)} as rows chunk(s) of job {job_id} loaded before; the source "
            "holds those keys in more than one row, and an upsert would keep only the last of each. "
            "Remove the duplicates from the source, or choose a primary_key that is unique there"
        )
    overwrote = [
        {
            "job_id": o["job_id"],
            "table_name": o["table_name"],
            "chunk_id": o["chunk_id"],
            "rows": overwritten[x],
        }
        for x, o in owners.items()
        if o["job_status"] != "rolled_back" and updates  # DO NOTHING leaves their rows as they were
    ]
    action = (
        sql.SQL("DO UPDATE SET ")
        + sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updates)
        if updates
        else sql.SQL("DO NOTHING")
    )
    cols = sql.SQL(", ").join(map(sql.Identifier, names))
    statement = (
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) ").format(
            ident(table), cols, cols, staging, conflict
        )
        + action
    )
    try:
        conn.execute(statement)
    except psycopg.errors.CardinalityViolation:
        raise DataConversionError(
            f"upsert into {table.qualified}: the chunk holds the same {list(table.primary_key)} more than once"
        ) from None
    return rows, overwrote
