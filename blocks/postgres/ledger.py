"""The job ledger's rows in the target database (schema `migration_status`, see
`blocks.postgres.ledger_schema`): jobs, their planned chunks, and what each job did to its tables.

Every function works inside the caller's transaction on the connection it is given: a chunk's
ledger row is written in the same transaction as its rows, so the ledger never disagrees with
the data. `blocks.postgres.ledger_store.PostgresLedger` is the component the tasks call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from blocks.errors import TargetGuardError
from blocks.job_status import SUPERSEDED
from blocks.postgres.ledger_schema import ledger_exists


def refuse_final_chunk(job_id: str, chunk: dict[str, Any]) -> None:
    """Raise `TargetGuardError` for a chunk that must never load again: its job was rolled back,
    or another job's `replace` truncated its rows away (superseded)."""
    if chunk["status"] == "rolled_back":
        raise TargetGuardError(f"job {job_id} was rolled back; its chunks are not loaded again")
    if chunk["status"] == SUPERSEDED:
        by = (chunk.get("details") or {}).get("removed_by")
        raise TargetGuardError(
            f"chunk {chunk['chunk_id']} of job {job_id} was superseded by job {by} (its replace truncated "
            "the table); it is not loaded again"
        )


def get_run(conn: psycopg.Connection, job_id: str) -> dict[str, Any] | None:
    """The job's ledger row; None when the job, or the whole ledger, is not there."""
    if not ledger_exists(conn):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM migration_status.migration_runs WHERE job_id = %s", (job_id,))
        return cur.fetchone()


def newest_run(
    conn: psycopg.Connection,
    migration: str,
    fingerprint: str,
    statuses: tuple[str, ...],
    since: datetime | None = None,
) -> dict[str, Any] | None:
    """The newest job of `migration` with this fingerprint (tables, modes, window) in one of
    `statuses`, started at `since` or later when given."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_runs WHERE migration = %s AND fingerprint = %s "
            "AND status = ANY(%s) AND (%s::timestamptz IS NULL OR started_at >= %s) "
            "ORDER BY started_at DESC LIMIT 1",
            (migration, fingerprint, list(statuses), since, since),
        )
        return cur.fetchone()


def discard_run(conn: psycopg.Connection, job_id: str) -> bool:
    """Remove every ledger row of a job that neither prepared a table nor loaded a chunk (a
    refused attempt), so it cannot later confuse status or resume. Returns False, changing
    nothing, if it did either."""
    loaded = conn.execute(
        "SELECT (SELECT count(*) FROM migration_status.migration_chunk_status WHERE job_id = %s AND status <> 'planned')"
        " + (SELECT count(*) FROM migration_status.migration_table_status WHERE job_id = %s)",
        (job_id, job_id),
    ).fetchone()[0]
    if loaded:
        return False
    has_marks = conn.execute("SELECT to_regclass('migration_status.migration_marks')").fetchone()[0]
    for table in (
        *(("migration_marks",) if has_marks else ()),
        "migration_chunk_status",
        "migration_plan_columns",
        "migration_table_status",
        "migration_runs",
    ):
        conn.execute(f"DELETE FROM migration_status.{table} WHERE job_id = %s", (job_id,))
    return True


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


_FINISHED = ("completed", "failed", "cancelled", "crashed", "rolled_back", "incomplete", "superseded")


def set_run_status(conn: psycopg.Connection, job_id: str, status: str, error: str | None = None) -> None:
    """Set the job's status and recount its chunks and rows from its chunk rows. A finished
    job that keeps its status keeps its finish time."""
    finished = status in _FINISHED
    conn.execute(
        "UPDATE migration_status.migration_runs SET error = %s, updated_at = now(), "
        "finished_at = CASE WHEN NOT %s THEN NULL WHEN status = %s AND finished_at IS NOT NULL "
        "THEN finished_at ELSE now() END, status = %s, "
        "chunks_total = (SELECT count(*) FROM migration_status.migration_chunk_status WHERE job_id = %s), "
        "chunks_done = (SELECT count(*) FROM migration_status.migration_chunk_status "
        "               WHERE job_id = %s AND status = 'loaded'), "
        "rows_total = (SELECT coalesce(sum(rows_loaded), 0) FROM migration_status.migration_chunk_status "
        "              WHERE job_id = %s AND status = 'loaded') "
        "WHERE job_id = %s",
        (error, finished, status, status, job_id, job_id, job_id, job_id),
    )


def count_chunk_loaded(conn: psycopg.Connection, job_id: str, rows: int) -> None:
    """Move the job's counters as a chunk commits, so `migration_runs` shows progress during a run."""
    conn.execute(
        "UPDATE migration_status.migration_runs SET chunks_done = chunks_done + 1, "
        "rows_total = rows_total + %s, updated_at = now() WHERE job_id = %s",
        (rows, job_id),
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
    conn.execute(
        "UPDATE migration_status.migration_runs SET chunks_total = "
        "(SELECT count(*) FROM migration_status.migration_chunk_status WHERE job_id = %s) WHERE job_id = %s",
        (job_id, job_id),
    )


def record_plan_columns(conn: psycopg.Connection, job_id: str, columns: dict[str, list[dict]]) -> None:
    """Record the source columns each table of the job was planned with; the first record of a
    table stays (a resume never overwrites it)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO migration_status.migration_plan_columns (job_id, table_name, columns) "
            "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(job_id, table, Jsonb(cols)) for table, cols in columns.items()],
        )


def plan_columns(conn: psycopg.Connection, job_id: str) -> dict[str, list[dict]]:
    """table -> the source columns the job recorded for it (see `record_plan_columns`)."""
    rows = conn.execute(
        "SELECT table_name, columns FROM migration_status.migration_plan_columns WHERE job_id = %s",
        (job_id,),
    ).fetchall()
    return dict(rows)


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
    extra: dict[str, Any] | None = None,
) -> None:
    """Mark a chunk loaded by the current transaction, whose id (`xid`) tags the rows it wrote.
    `extra` goes into the chunk's details (say, which other jobs' rows an upsert overwrote)."""
    conn.execute(
        "UPDATE migration_status.migration_chunk_status SET status = 'loaded', rows_loaded = %s, "
        "rows_before = %s, rows_after = %s, staged_uri = %s, details = %s, loaded_at = now() "
        "WHERE job_id = %s AND table_name = %s AND chunk_id = %s",
        (
            rows_loaded,
            rows_before,
            rows_after,
            staged_uri,
            Jsonb({"xid": xid, **(extra or {})}),
            job_id,
            table,
            chunk_id,
        ),
    )
    count_chunk_loaded(conn, job_id, rows_loaded)


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
    count_chunk_loaded(conn, job_id, rows_loaded)


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
    rows_truncated: int | None = None,
) -> None:
    """Record what preparing `target` did; `rows_truncated` is how many rows a truncation removed
    (None: not counted, so a rollback assumes it removed some)."""
    conn.execute(
        "INSERT INTO migration_status.migration_table_status "
        "(job_id, table_name, target_table, load_mode, created_table, truncated, target_ident, rows_truncated) "
        "VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
        (job_id, table, target, mode, created, truncated, Jsonb(list(ident)), rows_truncated),
    )


def rollback_losses(conn: psycopg.Connection, job_id: str) -> list[dict[str, Any]]:
    """The job's target tables where a rollback would lose rows that were there before the job.

    Each entry: `table`, `load_mode`, `rows_updated` (upsert: rows that existed and that the job
    overwrote; a chunk whose range gained fewer rows than it loaded updated the difference, and a
    rollback deletes them, since their old values are gone) and `truncated` with
    `rows_truncated` (replace: the rows the truncation removed; None when not counted).
    """
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT t.target_table AS table, t.load_mode, t.truncated, t.rows_truncated, "
            "coalesce(sum(c.rows_loaded - (c.rows_after - c.rows_before)) "
            "         FILTER (WHERE c.rows_after - c.rows_before < c.rows_loaded), 0) AS rows_updated "
            "FROM migration_status.migration_table_status t "
            "LEFT JOIN migration_status.migration_chunk_status c "
            "  ON c.job_id = t.job_id AND c.table_name = t.table_name AND c.status = 'loaded' "
            "WHERE t.job_id = %s GROUP BY t.target_table, t.load_mode, t.truncated, t.rows_truncated "
            "ORDER BY t.target_table",
            (job_id,),
        )
        tables = cur.fetchall()
    losses = []
    for t in tables:
        updated = t["rows_updated"] if t["load_mode"] == "upsert" else 0
        truncated = bool(t["truncated"]) and (t["rows_truncated"] is None or t["rows_truncated"] > 0)
        if updated or truncated:
            losses.append({**t, "rows_updated": int(updated), "truncated": truncated})
    return losses


def job_tables(conn: psycopg.Connection, job_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_table_status WHERE job_id = %s ORDER BY table_name",
            (job_id,),
        )
        return cur.fetchall()


def job_chunks(
    conn: psycopg.Connection, job_id: str, status: str | tuple[str, ...] = "loaded"
) -> list[dict[str, Any]]:
    """The job's chunk rows in `status` (one status, or any of several), by table and chunk."""
    statuses = [status] if isinstance(status, str) else list(status)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_chunk_status WHERE job_id = %s AND status = ANY(%s) "
            "ORDER BY table_name, chunk_id",
            (job_id, statuses),
        )
        return cur.fetchall()


def mark_job_rolled_back(conn: psycopg.Connection, job_id: str) -> None:
    conn.execute(
        "UPDATE migration_status.migration_chunk_status SET status = 'rolled_back' "
        "WHERE job_id = %s AND status IN ('loaded', 'removed')",
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


def record_report(conn: psycopg.Connection, job_id: str, report: dict[str, Any], keep_recorded: bool) -> None:
    """Record a completed job's report; nothing when the job is not completed in the ledger, and
    with `keep_recorded`, nothing when it already has one."""
    conn.execute(
        "INSERT INTO migration_status.migration_reports (job_id, report) "
        "SELECT job_id, %s FROM migration_status.migration_runs WHERE job_id = %s AND status = 'completed' "
        "ON CONFLICT (job_id) DO UPDATE SET report = EXCLUDED.report, recorded_at = now() WHERE NOT %s",
        (Jsonb(report), job_id, keep_recorded),
    )


def recorded_report(conn: psycopg.Connection, job_id: str) -> dict[str, Any] | None:
    """The job's recorded report; None when it has none, or the ledger predates recorded reports."""
    if conn.execute("SELECT to_regclass('migration_status.migration_reports')").fetchone()[0] is None:
        return None
    row = conn.execute(
        "SELECT report FROM migration_status.migration_reports WHERE job_id = %s", (job_id,)
    ).fetchone()
    return row[0] if row else None
