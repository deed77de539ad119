"""High-water marks in the ledger: per job and table, how far a catch-up run's cursor got.

A job of a table with `incremental` records, with its plan, the source's maximum cursor value
when it planned (`high_water`), where the next catch-up starts reading (`window_start`: the
mark less the lookback) and how many source rows that window held then (`window_rows`). A
mark counts once its job completed; a rolled-back job's mark no longer does.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from blocks.job_status import SUPERSEDED

MARKS_DDL = """
CREATE TABLE IF NOT EXISTS migration_status.migration_marks (
    job_id          text NOT NULL REFERENCES migration_status.migration_runs (job_id),
    table_name      text NOT NULL,
    cursor_column   text NOT NULL,
    high_water      text,
    window_start    text,
    window_rows     bigint NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, table_name)
);
"""


def record_marks(conn: psycopg.Connection, job_id: str, marks: list[dict[str, Any]]) -> None:
    """Record the job's marks; a table's first mark stays (a resumed job never moves it)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO migration_status.migration_marks "
            "(job_id, table_name, cursor_column, high_water, window_start, window_rows) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (job_id, m["table"], m["cursor_column"], m["high_water"], m["window_start"], m["window_rows"])
                for m in marks
            ],
        )


def migration_jobs(conn: psycopg.Connection, migration: str) -> list[dict[str, Any]]:
    """The jobs of the migration's chain, newest first, each with its marks (`marks`: a list,
    maybe empty): its newest full job (not a catch-up) that is neither rolled back nor
    superseded, and every job started after it; [] when it has no such full job. However many
    catch-ups ran, the backfill is always there."""
    has_marks = conn.execute("SELECT to_regclass('migration_status.migration_marks')").fetchone()[0]
    marks = (
        "COALESCE((SELECT jsonb_agg(jsonb_build_object('table', m.table_name, 'cursor_column', "
        "m.cursor_column, 'high_water', m.high_water, 'window_start', m.window_start, 'window_rows', "
        "m.window_rows)) FROM migration_status.migration_marks m WHERE m.job_id = r.job_id), '[]'::jsonb)"
        if has_marks
        else "%s::jsonb"
    )
    params: list[Any] = [] if has_marks else [Jsonb([])]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "WITH base AS (SELECT started_at, job_id FROM migration_status.migration_runs "
            "WHERE migration = %s AND NOT parameters ? 'catch_up' AND status <> ALL(%s) "
            "ORDER BY started_at DESC, job_id DESC LIMIT 1) "
            f"SELECT r.job_id, r.status, r.parameters, r.started_at, r.finished_at, r.chunks_total, "
            f"r.chunks_done, r.error, {marks} AS marks FROM migration_status.migration_runs r, base "
            "WHERE r.migration = %s AND (r.started_at, r.job_id) >= (base.started_at, base.job_id) "
            "ORDER BY r.started_at DESC, r.job_id DESC",
            [migration, ["rolled_back", SUPERSEDED], *params, migration],
        )
        return cur.fetchall()
