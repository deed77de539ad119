"""The job ledger in the target database: schema `migration_status`.

`migration_runs` has one row per job; `migration_chunk_status` one row per planned chunk;
`migration_table_status` records what a job did to each target table before loading
(created it, truncated it). A chunk's ledger row is written in the same transaction as its
rows, so the ledger never disagrees with the data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

LEDGER_DDL = """
CREATE SCHEMA IF NOT EXISTS migration_status;
CREATE TABLE IF NOT EXISTS migration_status.migration_runs (
    job_id          text PRIMARY KEY,
    migration       text NOT NULL,
    job_name        text,
    status          text NOT NULL,
    fingerprint     text NOT NULL,
    parameters      jsonb NOT NULL DEFAULT '{}'::jsonb,
    flow_run_id     text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    chunks_total    integer NOT NULL DEFAULT 0,
    chunks_done     integer NOT NULL DEFAULT 0,
    rows_total      bigint NOT NULL DEFAULT 0,
    error           text
);
CREATE TABLE IF NOT EXISTS migration_status.migration_chunk_status (
    job_id          text NOT NULL REFERENCES migration_status.migration_runs (job_id),
    table_name      text NOT NULL,
    chunk_id        text NOT NULL,
    target_table    text NOT NULL,
    chunk_column    text NOT NULL,
    lower_bound     text,
    upper_bound     text,
    status          text NOT NULL,
    rows_loaded     bigint,
    rows_before     bigint,
    rows_after      bigint,
    staged_uri      text,
    loaded_at       timestamptz,
    PRIMARY KEY (job_id, table_name, chunk_id)
);
ALTER TABLE migration_status.migration_chunk_status ADD COLUMN IF NOT EXISTS details jsonb;
CREATE TABLE IF NOT EXISTS migration_status.migration_table_status (
    job_id          text NOT NULL REFERENCES migration_status.migration_runs (job_id),
    table_name      text NOT NULL,
    target_table    text NOT NULL,
    load_mode       text NOT NULL,
    created_table   boolean NOT NULL DEFAULT false,
    truncated       boolean NOT NULL DEFAULT false,
    prepared_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, table_name)
);
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS target_ident jsonb;
"""

UNFINISHED = ("running", "failed", "crashed", "cancelled")


def ensure_ledger(conn: psycopg.Connection) -> None:
    # Two jobs starting at once would race on CREATE ... IF NOT EXISTS; serialise them.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('migration_status.ddl', 0))")
    conn.execute(LEDGER_DDL)


def lock(conn: psycopg.Connection, key: str) -> None:
    """Hold a transaction-scoped advisory lock on `key` until commit or rollback."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def lock_job_loads(conn: psycopg.Connection, job_id: str, exclusive: bool = False) -> None:
    """Loads of a job hold this lock shared; a rollback holds it exclusively, so it waits for
    loads in flight and no load of the job runs while it works."""
    kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"SELECT {kind}(hashtextextended(%s, 0))", (f"job-loads/{job_id}",))


def get_run(conn: psycopg.Connection, job_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM migration_status.migration_runs WHERE job_id = %s", (job_id,))
        return cur.fetchone()


def newest_unfinished_run(
    conn: psycopg.Connection, migration: str, fingerprint: str, since: datetime
) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_runs WHERE migration = %s AND fingerprint = %s "
            "AND status = ANY(%s) AND started_at >= %s ORDER BY started_at DESC LIMIT 1",
            (migration, fingerprint, list(UNFINISHED), since),
        )
        return cur.fetchone()


def insert_run(
    conn: psycopg.Connection,
    job_id: str,
    migration: str,
    job_name: str | None,
    fingerprint: str,
    parameters: dict[str, Any],
    flow_run_id: str | None,
) -> None:
    conn.execute(
        "INSERT INTO migration_status.migration_runs "
        "(job_id, migration, job_name, status, fingerprint, parameters, flow_run_id) "
        "VALUES (%s, %s, %s, 'running', %s, %s, %s)",
        (job_id, migration, job_name, fingerprint, Jsonb(parameters), flow_run_id),
    )


def set_run_status(conn: psycopg.Connection, job_id: str, status: str, error: str | None = None) -> None:
    finished = status in ("completed", "failed", "cancelled", "crashed", "rolled_back")
    conn.execute(
        "UPDATE migration_status.migration_runs SET status = %s, error = %s, updated_at = now(), "
        "finished_at = CASE WHEN %s THEN now() ELSE NULL END, "
        "chunks_total = (SELECT count(*) FROM migration_status.migration_chunk_status WHERE job_id = %s), "
        "chunks_done = (SELECT count(*) FROM migration_status.migration_chunk_status "
        "               WHERE job_id = %s AND status = 'loaded'), "
        "rows_total = (SELECT coalesce(sum(rows_loaded), 0) FROM migration_status.migration_chunk_status "
        "              WHERE job_id = %s AND status = 'loaded') "
        "WHERE job_id = %s",
        (status, error, finished, job_id, job_id, job_id, job_id),
    )


def plan_chunks(conn: psycopg.Connection, job_id: str, rows: list[tuple]) -> None:
    """Record planned chunks (table, chunk_id, target, column, lower, upper); existing rows stay."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO migration_status.migration_chunk_status "
            "(job_id, table_name, chunk_id, target_table, chunk_column, lower_bound, upper_bound, status) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, 'planned') ON CONFLICT DO NOTHING",
            [(job_id, *row) for row in rows],
        )


def get_chunk(conn: psycopg.Connection, job_id: str, table: str, chunk_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_chunk_status "
            "WHERE job_id = %s AND table_name = %s AND chunk_id = %s",
            (job_id, table, chunk_id),
        )
        return cur.fetchone()


def mark_chunk_loaded(
    conn: psycopg.Connection,
    job_id: str,
    table: str,
    chunk_id: str,
    rows_loaded: int,
    rows_before: int,
    rows_after: int,
    staged_uri: str,
    xid: int,
) -> None:
    """Mark a chunk loaded by the current transaction, whose id (`xid`) tags the rows it wrote."""
    conn.execute(
        "UPDATE migration_status.migration_chunk_status SET status = 'loaded', rows_loaded = %s, "
        "rows_before = %s, rows_after = %s, staged_uri = %s, details = %s, loaded_at = now() "
        "WHERE job_id = %s AND table_name = %s AND chunk_id = %s",
        (rows_loaded, rows_before, rows_after, staged_uri, Jsonb({"xid": xid}), job_id, table, chunk_id),
    )


def current_xid(conn: psycopg.Connection) -> int:
    """The current transaction's id as rows' `xmin` holds it (32 bits, without the epoch)."""
    return conn.execute("SELECT txid_current() % 4294967296").fetchone()[0]


def mark_chunk_written(
    conn: psycopg.Connection,
    job_id: str,
    table: str,
    chunk_id: str,
    rows_loaded: int,
    staged_uri: str,
    details: dict[str, Any],
) -> None:
    """Record a chunk loaded into a target outside this database (InfluxDB), with what it wrote."""
    conn.execute(
        "UPDATE migration_status.migration_chunk_status SET status = 'loaded', rows_loaded = %s, "
        "rows_before = NULL, rows_after = %s, staged_uri = %s, details = %s, loaded_at = now() "
        "WHERE job_id = %s AND table_name = %s AND chunk_id = %s",
        (rows_loaded, rows_loaded, staged_uri, Jsonb(details), job_id, table, chunk_id),
    )


def get_table_status(conn: psycopg.Connection, job_id: str, table: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_table_status WHERE job_id = %s AND table_name = %s",
            (job_id, table),
        )
        return cur.fetchone()


def record_table_prepared(
    conn: psycopg.Connection,
    job_id: str,
    table: str,
    target: str,
    mode: str,
    created: bool,
    truncated: bool,
    ident: tuple[str, str],
) -> None:
    conn.execute(
        "INSERT INTO migration_status.migration_table_status "
        "(job_id, table_name, target_table, load_mode, created_table, truncated, target_ident) "
        "VALUES (%s,%s,%s,%s,%s,%s,%s)",
        (job_id, table, target, mode, created, truncated, Jsonb(list(ident))),
    )


def job_tables(conn: psycopg.Connection, job_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_table_status WHERE job_id = %s ORDER BY table_name",
            (job_id,),
        )
        return cur.fetchall()


def job_chunks(conn: psycopg.Connection, job_id: str, status: str = "loaded") -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_chunk_status WHERE job_id = %s AND status = %s "
            "ORDER BY table_name, chunk_id",
            (job_id, status),
        )
        return cur.fetchall()


def mark_job_rolled_back(conn: psycopg.Connection, job_id: str) -> None:
    conn.execute(
        "UPDATE migration_status.migration_chunk_status SET status = 'rolled_back' "
        "WHERE job_id = %s AND status = 'loaded'",
        (job_id,),
    )
    set_run_status(conn, job_id, "rolled_back")


def other_jobs_for_target(conn: psycopg.Connection, job_id: str, target: str) -> list[dict[str, Any]]:
    """Every other job that prepared `target` (qualified name), newest first, with its run status."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT t.job_id, t.load_mode, t.truncated, r.status, r.started_at, r.migration "
            "FROM migration_status.migration_table_status t JOIN migration_status.migration_runs r USING (job_id) "
            "WHERE t.target_table = %s AND t.job_id <> %s ORDER BY t.prepared_at DESC",
            (target, job_id),
        )
        return cur.fetchall()


def loaded_chunks_for_target(
    conn: psycopg.Connection, job_ids: list[str], target: str
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT job_id, chunk_id, lower_bound, upper_bound, rows_loaded, rows_before, rows_after "
            "FROM migration_status.migration_chunk_status "
            "WHERE target_table = %s AND job_id = ANY(%s) AND status = 'loaded'",
            (target, job_ids),
        )
        return cur.fetchall()
