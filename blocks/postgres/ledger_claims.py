"""What other jobs claim in a shared target, as the ledger records it.

Jobs that share a target must know about each other: a job may not load over, or roll back,
data that another live job (any job not rolled back) loaded and still counts as its own.

- InfluxDB points: each loaded chunk's details name the target (`details.target`), its
  measurements and its time range in nanoseconds (`start_ns`, `stop_ns`; None is unbounded).
  Two chunks overlap when they share the target and a measurement, and their ranges meet.
- PostgreSQL rows: a chunk's rows carry its load transaction's id (`xmin`). An `upsert`
  records in its chunk's details which other jobs' chunks it overwrote rows of
  (`details.overwrote`), found through those ids.

When another job's data goes anyway (a forced rollback, a `replace` truncation), its chunks
are marked (`mark_removed`) and its job's counters and status follow, so the ledger never
claims data that is no longer there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from blocks.job_status import RELOADABLE, SUPERSEDED
from blocks.postgres import ledger as pg_ledger
from blocks.postgres.ledger_schema import ledger_exists

_POINT_CLAIMS = """
SELECT c.job_id, c.table_name, c.chunk_id, c.lower_bound, c.upper_bound, r.status AS job_status,
       r.migration, c.details->'measurements' AS measurements,
       (c.details->>'start_ns')::numeric AS start_ns, (c.details->>'stop_ns')::numeric AS stop_ns
FROM migration_status.migration_chunk_status c JOIN migration_status.migration_runs r USING (job_id)
WHERE c.status = 'loaded' AND r.status <> 'rolled_back' AND c.job_id <> %(job)s
  AND c.details->>'target' = %(target)s
  AND (%(any_measurement)s OR c.details->'measurements' ?| %(measurements)s::text[])
  AND EXISTS (
    SELECT 1 FROM unnest(%(starts)s::numeric[], %(stops)s::numeric[]) AS w(lo, hi)
    WHERE (c.details->>'stop_ns' IS NULL OR w.lo IS NULL OR (c.details->>'stop_ns')::numeric > w.lo)
      AND (c.details->>'start_ns' IS NULL OR w.hi IS NULL OR (c.details->>'start_ns')::numeric < w.hi))
ORDER BY c.job_id, c.table_name, c.chunk_id
"""


def point_claims(
    conn: psycopg.Connection,
    exclude_job: str,
    target: str,
    measurements: list[str] | None,
    ranges: Iterable[tuple[int | None, int | None]],
) -> list[dict[str, Any]]:
    """Other live jobs' loaded chunks in InfluxDB `target` whose measurements meet
    `measurements` (None: any) and whose time range meets one of `ranges` ([start, stop) ns)."""
    ranges = list(ranges)
    if not ranges or not ledger_exists(conn) or measurements == []:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            _POINT_CLAIMS,
            {
                "job": exclude_job,
                "target": target,
                "any_measurement": measurements is None,
                "measurements": measurements or [],
                "starts": [lo for lo, _ in ranges],
                "stops": [hi for _, hi in ranges],
            },
        )
        return cur.fetchall()


def chunks_of_xids(conn: psycopg.Connection, xids: list[str]) -> dict[str, dict[str, Any]]:
    """xid -> the ledger's chunk whose load transaction it was (loaded or removed), with its
    job's status; xids no chunk recorded (rows loaded by anything but a migration) are absent."""
    if not xids:
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT c.details->>'xid' AS xid, c.job_id, c.table_name, c.chunk_id, c.lower_bound, "
            "c.upper_bound, c.status, r.status AS job_status "
            "FROM migration_status.migration_chunk_status c JOIN migration_status.migration_runs r USING (job_id) "
            "WHERE c.details->>'xid' = ANY(%s) AND c.status IN ('loaded', 'removed')",
            (xids,),
        )
        return {row["xid"]: row for row in cur.fetchall()}


def overwritten_claims(conn: psycopg.Connection, job_id: str) -> list[dict[str, Any]]:
    """The chunks of other live jobs whose rows `job_id`'s upserts overwrote (`details.overwrote`),
    each with the rows overwritten and the chunk of `job_id` that did it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT o->>'job_id' AS job_id, o->>'table_name' AS table_name, o->>'chunk_id' AS chunk_id, "
            "(o->>'rows')::bigint AS rows, c.chunk_id AS by_chunk, c.target_table, "
            "oc.lower_bound, oc.upper_bound, r.status AS job_status "
            "FROM migration_status.migration_chunk_status c "
            "CROSS JOIN LATERAL jsonb_array_elements(c.details->'overwrote') o "
            "JOIN migration_status.migration_chunk_status oc "
            "  ON oc.job_id = o->>'job_id' AND oc.table_name = o->>'table_name' AND oc.chunk_id = o->>'chunk_id' "
            "JOIN migration_status.migration_runs r ON r.job_id = oc.job_id "
            "WHERE c.job_id = %s AND c.status = 'loaded' AND oc.status = 'loaded' AND r.status <> 'rolled_back' "
            "ORDER BY 1, 2, 3",
            (job_id,),
        )
        return cur.fetchall()


def truncated_claims(conn: psycopg.Connection, job_id: str) -> list[dict[str, Any]]:
    """Other jobs' chunks that `job_id`'s `replace` truncation removed (marked superseded by it)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT job_id, table_name, chunk_id, target_table, lower_bound, upper_bound, rows_loaded "
            "FROM migration_status.migration_chunk_status WHERE details->>'removed_by' = %s "
            "AND status = %s ORDER BY 1, 2, 3",
            (job_id, SUPERSEDED),
        )
        return cur.fetchall()


def live_chunks_for_target(conn: psycopg.Connection, exclude_job: str, target: str) -> list[dict[str, Any]]:
    """Other live jobs' loaded chunks in PostgreSQL table `target` (qualified name), with their
    bounds and their job's status."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT c.job_id, c.table_name, c.chunk_id, c.chunk_column, c.lower_bound, c.upper_bound, "
            "r.status AS job_status FROM migration_status.migration_chunk_status c "
            "JOIN migration_status.migration_runs r USING (job_id) WHERE c.target_table = %s "
            "AND c.job_id <> %s AND c.status = 'loaded' AND r.status <> 'rolled_back'",
            (target, exclude_job),
        )
        return cur.fetchall()


def mark_removed(
    conn: psycopg.Connection, chunks: Iterable[dict[str, Any]], by_job: str, reason: str, status: str
) -> list[str]:
    """Mark other jobs' chunks whose data `by_job` removed, then recount their jobs.

    `status` is `removed` (a rerun of the job with its job_id loads the chunk again) or
    `superseded` (never again: a truncation made way for other rows). A completed job becomes
    `incomplete` when any of its chunks can be loaded again, `superseded` when none of its
    chunks is left loaded or reloadable. Returns the jobs touched.
    """
    keys = sorted({(c["job_id"], c["table_name"], c["chunk_id"]) for c in chunks})
    if not keys:
        return []
    note = Jsonb({"removed_by": by_job, "removed_reason": reason})
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE migration_status.migration_chunk_status SET status = %s, "
            "details = coalesce(details, '{}'::jsonb) || %s "
            "WHERE job_id = %s AND table_name = %s AND chunk_id = %s AND status = 'loaded'",
            [(status, note, *key) for key in keys],
        )
    jobs = sorted({k[0] for k in keys})
    for job in jobs:
        counts = dict(
            conn.execute(
                "SELECT status, count(*) FROM migration_status.migration_chunk_status WHERE job_id = %s "
                "GROUP BY status",
                (job,),
            ).fetchall()
        )
        run = pg_ledger.get_run(conn, job)
        current = run["status"] if run else None
        if counts.get(RELOADABLE):
            new, error = (
                "incomplete",
                (
                    f"{reason}: {counts[RELOADABLE]} chunk(s) of this job no longer hold their data; "
                    f"run the job again with job_id={job} to load them again"
                ),
            )
        elif not counts.get("loaded"):
            new, error = SUPERSEDED, f"{reason}: none of this job's data is left in the target"
        else:
            new, error = current, run["error"] if run else None
        if current in ("running",):
            new = current  # the live run records its own end; the counters still follow
        pg_ledger.set_run_status(conn, job, new, error)
    return jobs


_JOB_POINT_CLAIMS = """
SELECT DISTINCT o.job_id, o.table_name, o.chunk_id, o.lower_bound, o.upper_bound, r.status AS job_status,
       o.details->'measurements' AS measurements
FROM migration_status.migration_chunk_status m
JOIN migration_status.migration_chunk_status o
  ON o.details->>'target' = m.details->>'target' AND o.job_id <> m.job_id AND o.status = 'loaded'
 AND o.details->'measurements' ?| ARRAY(SELECT jsonb_array_elements_text(m.details->'measurements'))
 AND (o.details->>'stop_ns' IS NULL OR m.details->>'start_ns' IS NULL
      OR (o.details->>'stop_ns')::numeric > (m.details->>'start_ns')::numeric)
 AND (o.details->>'start_ns' IS NULL OR m.details->>'stop_ns' IS NULL
      OR (o.details->>'start_ns')::numeric < (m.details->>'stop_ns')::numeric)
JOIN migration_status.migration_runs r ON r.job_id = o.job_id AND r.status <> 'rolled_back'
WHERE m.job_id = %s AND m.status IN ('loaded', 'removed')
ORDER BY 1, 2, 3
"""


def job_point_claims(conn: psycopg.Connection, job_id: str) -> list[dict[str, Any]]:
    """Other live jobs' loaded chunks that share a measurement time range with one of
    `job_id`'s InfluxDB chunks: a rollback of `job_id` would delete their points too."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_JOB_POINT_CLAIMS, (job_id,))
        return cur.fetchall()
