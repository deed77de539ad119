"""The job ledger in the target database: schema `migration_status`.

`migration_runs` has one row per job; `migration_chunk_status` one row per planned chunk;
`migration_table_status` records what a job did to each target table before loading
(created it, truncated it). A chunk's ledger row is written in the same transaction as its
rows, so the ledger never disagrees with the data.

A job has at most one live run: the run holds a session-level advisory lock on the job
(`JobRunLock`) in this database for as long as it runs.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from blocks.errors import TargetGuardError
from blocks.postgres import pool as pg_pool

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
CREATE TABLE IF NOT EXISTS migration_status.migration_plan_columns (
    job_id          text NOT NULL REFERENCES migration_status.migration_runs (job_id),
    table_name      text NOT NULL,
    columns         jsonb NOT NULL,
    PRIMARY KEY (job_id, table_name)
);
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS rows_truncated bigint;
"""

UNFINISHED = ("running", "failed", "crashed", "cancelled")
# Job statuses a later job can cause: `incomplete` (a forced rollback of another job removed
# some of its data; a run with its job_id loads those chunks again) and `superseded` (another
# job's `replace` truncated its rows away; it never loads again).
# Chunk statuses beyond planned/loaded/rolled_back: `removed` (its data was deleted by another
# job's forced rollback; a resume loads it again) and `superseded` (truncated by another job's
# `replace`; never loaded again).
RELOADABLE = "removed"
SUPERSEDED = "superseded"


def ledger_exists(conn: psycopg.Connection) -> bool:
    """Whether any migration has written a ledger into this database yet."""
    return conn.execute("SELECT to_regclass('migration_status.migration_runs')").fetchone()[0] is not None


def ensure_ledger(conn: psycopg.Connection) -> None:
    # Two jobs starting at once would race on CREATE ... IF NOT EXISTS; serialise them.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('migration_status.ddl', 0))")
    conn.execute(LEDGER_DDL)


def lock(conn: psycopg.Connection, key: str) -> None:
    """Hold a transaction-scoped advisory lock on `key` until commit or rollback."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def lock_job_loads(conn: psycopg.Connection, job_id: str, exclusive: bool = False) -> None:
    """Loads of a job hold this lock shared; a rollback holds it exclusively, so it waits for
    loads in flight and no load of the job runs while it works.

    A load first checks that this process's run still holds the job (`ensure_run_lock`):
    after a server restart it takes the run lock again, and a run that lost the job to another
    run loads nothing more."""
    if not exclusive:
        ensure_run_lock(conn, job_id)
    kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"SELECT {kind}(hashtextextended(%s, 0))", (f"job-loads/{job_id}",))


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
    for table in (
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


# One job, one live run ---------------------------------------------------------------------

RUN_LOCK_APP = "prefect-migrate run "
_HOLDER_SQL = """
SELECT a.pid, a.application_name
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid,
     (SELECT hashtextextended(%s, 0) AS key) k
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = (k.key >> 32) & 4294967295 AND l.objid::bigint = k.key & 4294967295
"""
_RUN_LOCKS: dict[tuple, JobRunLock] = {}
_RUN_LOCKS_MUTEX = threading.Lock()
_log = logging.getLogger(__name__)


def run_lock_key(job_id: str) -> str:
    return f"migrate-job-run/{job_id}"


def run_lock_holder(conn: psycopg.Connection, job_id: str) -> str | None:
    """Who holds the job's run lock: "flow run <id>" for a migrate run, "another session (pid N,
    <application>)" otherwise; None when nobody does."""
    row = conn.execute(_HOLDER_SQL, (run_lock_key(job_id),)).fetchone()
    if row is None:
        return None
    pid, application = row
    if application and application.startswith(RUN_LOCK_APP):
        return "flow run " + application.removeprefix(RUN_LOCK_APP)
    return f"another session (pid {pid}{', ' + application if application else ''})"


class JobRunLock:
    """The session-level advisory lock that says a job has a live run.

    It is held on a connection of its own, never pooled, for the whole run. The connection's
    application_name names the flow run, so a second run of the job can say who has it.
    PostgreSQL releases the lock when the session ends: a run killed with kill -9 leaves
    nothing behind and the job can resume at once. A server restart ends the session too;
    `ensure_held` (before each load, and before the run records its end) takes the lock
    again, or, if another run took it meanwhile, stops this run from loading more.
    """

    def __init__(self, settings: Any, job_id: str, flow_run_id: str | None):
        self.settings = settings
        self.job_id = job_id
        self.application = (f"{RUN_LOCK_APP}{flow_run_id}" if flow_run_id else "prefect-migrate")[:63]
        self._conn: psycopg.Connection | None = None
        self._registered: tuple | None = None
        self._lost: str | None = None
        self._mutex = threading.Lock()

    def acquire(self) -> str | None:
        """Take the lock: None when taken, else who holds it (see `run_lock_holder`). Raises
        `ConnectionError` while the server cannot be reached (`blocks.postgres.pool`)."""
        with self._mutex:
            holder = self._take()
        if holder is None:
            with _RUN_LOCKS_MUTEX:
                _RUN_LOCKS[self._registered] = self
        return holder

    def ensure_held(self) -> None:
        """Make sure this run still holds the lock; take it again if a server restart ended its session.

        Raises `TargetGuardError` when another run took the job meanwhile (this run must not
        load it any more), `ConnectionError` while the server cannot be reached (retried).
        """
        with self._mutex:
            if self._lost:
                raise TargetGuardError(self._lost)
            if self._conn is not None:
                try:
                    self._conn.execute("SELECT 1")
                    return
                except psycopg.Error:
                    self._conn.close()
                    self._conn = None
            holder = self._take()
            if holder is None:
                _log.warning("job %s: took the job's run lock again after its session ended", self.job_id)
                return
            if holder == "flow run " + self.application.removeprefix(RUN_LOCK_APP):
                raise ConnectionError(
                    f"job {self.job_id}: this run's earlier session still holds the job's run lock; "
                    "waiting for PostgreSQL to end it"
                )
            self._lost = (
                f"job {self.job_id}: this run's lock on the job ended while {pg_pool.describe(self.settings)} "
                f"was unreachable, and {holder} holds it now; this run stops loading the job and "
                "leaves it to that run"
            )
            raise TargetGuardError(self._lost)

    def release(self) -> None:
        """Give the lock back at once, so a rollback or a rerun right after finds it free."""
        with _RUN_LOCKS_MUTEX:
            if self._registered is not None and _RUN_LOCKS.get(self._registered) is self:
                del _RUN_LOCKS[self._registered]
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (run_lock_key(self.job_id),))
        except psycopg.Error:
            pass  # the session is gone, and the lock went with it
        finally:
            conn.close()

    def _take(self) -> str | None:
        conn = pg_pool.open_connection(
            self.settings,
            self.application,
            autocommit=True,
            # Keepalives notice a server gone silent, and keep idle-connection firewalls away.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            if conn.info.server_version >= 140000:  # a server-wide idle limit must not end the run's hold
                conn.execute("SET idle_session_timeout = 0")
            for _ in range(2):  # a holder that has just let go shows no holder: try once more
                taken = conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (run_lock_key(self.job_id),)
                ).fetchone()[0]
                if taken:
                    self._conn = conn
                    self._registered = (conn.info.host, conn.info.port, conn.info.dbname, self.job_id)
                    return None
                holder = run_lock_holder(conn, self.job_id)
                if holder is not None:
                    break
            conn.close()
            return holder or "another run"
        except BaseException:
            conn.close()
            raise


def ensure_run_lock(conn: psycopg.Connection, job_id: str) -> None:
    """If this process holds `job_id`'s run lock in `conn`'s database, make sure it still does
    (`JobRunLock.ensure_held`). Chunks that run in other processes (Dask workers) skip this."""
    key = (conn.info.host, conn.info.port, conn.info.dbname, job_id)
    with _RUN_LOCKS_MUTEX:
        held = _RUN_LOCKS.get(key)
    if held is not None:
        held.ensure_held()
