"""`PostgresLedger`: the job ledger kept in a PostgreSQL database, as the tasks call it.

It implements `blocks.seam.Ledger` for a PostgreSQL target's own database and for the
`ledger:` a point target names. Each method runs in a transaction of its own; a PostgreSQL
target's load writes its chunk's ledger row itself, in the load's transaction (see
`PostgresTarget.load_chunk`). The SQL lives in `ledger_schema`, `ledger` (the rows),
`ledger_claims` (what jobs sharing a target claim) and `ledger_lock` (one live run per job).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel

from blocks.errors import ConnectionCheckError, TargetGuardError, ValidationFailed
from blocks.job_status import RELOADABLE, SUPERSEDED, UNFINISHED
from blocks.postgres import ledger as pg_ledger
from blocks.postgres import ledger_claims, ledger_marks
from blocks.postgres import pool as pg_pool
from blocks.postgres.credentials import PostgresCredentials
from blocks.postgres.ledger_lock import JobRunLock, ensure_run_lock, run_lock_holder
from blocks.postgres.ledger_schema import ensure_ledger, ledger_exists, lock, lock_job_loads
from blocks.postgres.privileges import ledger_needs, refuse_missing
from blocks.seam import JobStart


@contextmanager
def transaction(credentials: PostgresCredentials) -> Iterator[psycopg.Connection]:
    """A pooled connection in one transaction: committed on success, rolled back on any error.

    Connections are reused within the process (`blocks.postgres.pool`); a fresh one is opened
    when none is idle. A target and a ledger with the same login share them."""
    with pg_pool.pooled(credentials.pool_key("target"), lambda: _open(credentials)) as conn:
        try:
            yield conn
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise


@contextmanager
def read_only(credentials: PostgresCredentials) -> Iterator[psycopg.Connection]:
    """A pooled connection in one READ ONLY transaction (see `transaction`): anything that
    would write raises, so checks, previews and read-backs cannot change the database."""
    with transaction(credentials) as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        yield conn


def _open(credentials: PostgresCredentials) -> psycopg.Connection:
    return credentials.get_connection("prefect-migrate")


class PostgresLedger(BaseModel):
    """The job ledger in the database `credentials` log in to (schema `migration_status`)."""

    credentials: PostgresCredentials

    def describe_target(self) -> str:
        return self.credentials.describe_server()

    def connect(self) -> Any:
        """A connection in one transaction (see `transaction`)."""
        return transaction(self.credentials)

    def check(self) -> None:
        """Log in once; any failure, even a server only down for now, raises `ConnectionCheckError`.

        Also check, reading only, that the role may create or use the ledger (schema
        `migration_status`, `blocks.postgres.privileges.ledger_needs`): a missing privilege
        raises `ConnectionCheckError` naming the role, the schema or database, the privilege
        and the GRANT that fixes it."""
        try:
            with read_only(self.credentials) as conn:
                refuse_missing(conn, f"ledger in {self.describe_target()}", ledger_needs(conn))
        except ConnectionError as exc:
            raise ConnectionCheckError(str(exc)) from None

    # Jobs ----------------------------------------------------------------------------------

    def start_job(
        self,
        *,
        job_id: str | None,
        migration: str,
        job_name: str | None,
        fingerprint: str,
        parameters: dict[str, Any],
        flow_run_id: str | None,
        no_resume: bool,
        resumable_within: timedelta,
    ) -> tuple[str, JobStart]:
        """Create the job's ledger row, or pick up the job to resume. Returns (job_id, how).

        With a job_id that exists, that job runs again (a different fingerprint, meaning other
        tables, modes or window, raises `TargetGuardError`, and so does a rolled-back or
        superseded job). Without one, unless `no_resume`: the newest unfinished job of this
        migration with the same fingerprint, started within `resumable_within`, resumes; else
        the newest completed one with the same fingerprint is reported as done.
        """
        with self.connect() as conn:
            ensure_ledger(conn)
            lock(conn, f"job/{migration}")
            run = _pick_run(conn, job_id, migration, fingerprint, no_resume, resumable_within)
            if run:
                if run["status"] == "completed":
                    return run["job_id"], JobStart.COMPLETED
                pg_ledger.set_run_status(conn, run["job_id"], "running")
                return run["job_id"], JobStart.RESUMED
            new_id = job_id or f"{migration}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
            pg_ledger.insert_run(conn, new_id, migration, job_name, fingerprint, parameters, flow_run_id)
            return new_id, JobStart.NEW

    def completed_job(
        self,
        *,
        job_id: str | None,
        migration: str,
        fingerprint: str,
        no_resume: bool,
        resumable_within: timedelta,
    ) -> dict[str, Any] | None:
        """The job's ledger row, with its recorded `report` (None when it has none), when
        `start_job` with these arguments would take up a completed job; else None, also where
        `start_job` would refuse. Reads only: creates no ledger and no job."""
        with self.connect() as conn:
            if not ledger_exists(conn):
                return None
            try:
                run = _pick_run(conn, job_id, migration, fingerprint, no_resume, resumable_within)
            except TargetGuardError:
                return None
            if run is None or run["status"] != "completed":
                return None
            return {**run, "report": pg_ledger.recorded_report(conn, run["job_id"])}

    def record_report(self, job_id: str, report: dict[str, Any], keep_recorded: bool = False) -> None:
        """Record the report of a job the ledger shows completed (`ledger.record_report`)."""
        with self.connect() as conn:
            pg_ledger.record_report(conn, job_id, report, keep_recorded)

    def discard_job(self, job_id: str) -> bool:
        """Forget a job that never loaded a chunk (a refused attempt); False if it loaded any."""
        with self.connect() as conn:
            return pg_ledger.discard_run(conn, job_id)

    def set_job_status(self, job_id: str, status: str, error: str | None = None) -> None:
        with self.connect() as conn:
            pg_ledger.set_run_status(conn, job_id, status, error)

    def job_run(self, job_id: str) -> dict[str, Any] | None:
        """The job's ledger row; None when the job, or the whole ledger, is not there."""
        with self.connect() as conn:
            return pg_ledger.get_run(conn, job_id)

    def job_runs(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """job id -> its ledger row, for those of `job_ids` the ledger holds (one query)."""
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            if not ledger_exists(conn):
                return {}
            cur.execute("SELECT * FROM migration_status.migration_runs WHERE job_id = ANY(%s)", (job_ids,))
            return {row["job_id"]: row for row in cur.fetchall()}

    # One live run per job ------------------------------------------------------------------

    def run_lock(self, job_id: str, flow_run_id: str | None) -> JobRunLock:
        """The job's run lock for this flow run, not yet taken (`acquire`, `release`)."""
        return JobRunLock(self.credentials, job_id, flow_run_id)

    def run_lock_holder(self, job_id: str) -> str | None:
        """Who holds the job's run lock ("flow run <id>", or another session); None when nobody does."""
        with self.connect() as conn:
            return run_lock_holder(conn, job_id)

    def ensure_run_lock(self, job_id: str) -> None:
        """If this process's run holds the job, make sure it still does; raises
        `TargetGuardError` when another run took the job while the server was down."""
        with self.connect() as conn:
            ensure_run_lock(conn, job_id)

    # The plan and the chunks ---------------------------------------------------------------

    def record_plan(
        self,
        job_id: str,
        rows: list[tuple],
        columns: dict[str, list[dict]] | None = None,
        marks: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record planned chunks, the source columns each table was planned with, and the
        tables' high-water marks (`ledger_marks`), in one transaction."""
        with self.connect() as conn:
            pg_ledger.plan_chunks(conn, job_id, rows)
            if columns:
                pg_ledger.record_plan_columns(conn, job_id, columns)
            if marks:
                ledger_marks.record_marks(conn, job_id, marks)

    def migration_jobs(self, migration: str) -> list[dict[str, Any]]:
        """The jobs of the migration's chain, newest first, each with its high-water `marks`
        (`ledger_marks.migration_jobs`); [] before any ledger exists. Reads only."""
        with self.connect() as conn:
            if not ledger_exists(conn):
                return []
            return ledger_marks.migration_jobs(conn, migration)

    def planned_columns(self, job_id: str) -> dict[str, list[dict]]:
        """table -> source columns (`Column.model_dump`) the job planned it with."""
        with self.connect() as conn:
            return pg_ledger.plan_columns(conn, job_id)

    def planned_chunks(self, job_id: str) -> list[dict[str, Any]]:
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM migration_status.migration_chunk_status WHERE job_id = %s ORDER BY table_name, chunk_id",
                (job_id,),
            )
            return cur.fetchall()

    def chunk_states(self, job_id: str) -> dict[tuple[str, str], str]:
        """(table, chunk_id) -> ledger status of each of the job's chunks, in one query."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT table_name, chunk_id, status FROM migration_status.migration_chunk_status WHERE job_id = %s",
                (job_id,),
            ).fetchall()
        return {(t, c): s for t, c, s in rows}

    def chunk_status(self, job_id: str, table: str, chunk_id: str) -> dict[str, Any] | None:
        """The chunk's ledger row (status, rows_loaded, details...), or None if it is not planned."""
        with self.connect() as conn:
            return pg_ledger.get_chunk(conn, job_id, table, chunk_id)

    def chunk_to_load(self, job_id: str, table: str, chunk_id: str) -> dict[str, Any]:
        """The chunk's ledger row, before a load. Raises `ValidationFailed` when the chunk is not
        in the job's plan, `TargetGuardError` when it must never load again (its job was rolled
        back, or another job's `replace` superseded it)."""
        prior = self.chunk_status(job_id, table, chunk_id)
        if prior is None:
            raise ValidationFailed(f"chunk {chunk_id} of {table} is not in job {job_id}'s plan")
        pg_ledger.refuse_final_chunk(job_id, prior)
        return prior

    def mark_chunk_written(
        self, job_id: str, table: str, chunk_id: str, rows: int, staged_uri: str, details: dict[str, Any]
    ) -> None:
        """Mark a chunk loaded after its write to another store (InfluxDB) was verified."""
        with self.connect() as conn:
            lock_job_loads(conn, job_id)
            lock(conn, f"chunk/{job_id}/{table}/{chunk_id}")
            prior = pg_ledger.get_chunk(conn, job_id, table, chunk_id)
            if prior:
                pg_ledger.refuse_final_chunk(job_id, prior)
            pg_ledger.mark_chunk_written(conn, job_id, table, chunk_id, rows, staged_uri, details)

    def loaded_chunks(self, job_id: str, with_removed: bool = False) -> list[dict[str, Any]]:
        """The job's chunks marked loaded (and, `with_removed`, those another job's forced
        rollback took data from), with their ledger details."""
        with self.connect() as conn:
            return pg_ledger.job_chunks(conn, job_id, ("loaded", RELOADABLE) if with_removed else "loaded")

    def verification_counts(self, job_ids: list[str]) -> dict[str, dict[str, int]]:
        """job id -> {"content": n, "counts": m}: how its loaded chunks were verified (one query)."""
        with self.connect() as conn:
            if not ledger_exists(conn):
                return {}
            rows = conn.execute(
                "SELECT job_id, coalesce(details->>'verified', 'counts'), count(*) "
                "FROM migration_status.migration_chunk_status WHERE job_id = ANY(%s) AND status = 'loaded' "
                "GROUP BY 1, 2",
                (job_ids,),
            ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for job, kind, n in rows:
            counts.setdefault(job, {})[kind] = n
        return counts

    # What other jobs claim, and rollbacks --------------------------------------------------

    def point_claims(
        self,
        job_id: str,
        target: str,
        measurements: list[str] | None,
        ranges: list[tuple[int | None, int | None]],
    ) -> list[dict[str, Any]]:
        """Other live jobs' loaded chunks overlapping these InfluxDB measurement time ranges
        (`blocks.postgres.ledger_claims.point_claims`)."""
        with self.connect() as conn:
            return ledger_claims.point_claims(conn, job_id, target, measurements, ranges)

    @contextmanager
    def _current(self) -> Iterator[psycopg.Connection]:
        """A transaction on a ledger brought up to date (one an older version wrote gains its new columns)."""
        with self.connect() as conn:
            ensure_ledger(conn)
            yield conn

    def job_point_claims(self, job_id: str) -> list[dict[str, Any]]:
        """Other live jobs' loaded chunks sharing a measurement time range with one of the job's
        InfluxDB chunks: a rollback of the job would delete their points too."""
        with self._current() as conn:
            return ledger_claims.job_point_claims(conn, job_id)

    def overwritten_claims(self, job_id: str) -> list[dict[str, Any]]:
        """Other live jobs' chunks whose rows the job's upserts overwrote, with the rows overwritten."""
        with self._current() as conn:
            return ledger_claims.overwritten_claims(conn, job_id)

    def truncated_claims(self, job_id: str) -> list[dict[str, Any]]:
        """Other jobs' chunks that the job's `replace` truncation removed (superseded by it)."""
        with self._current() as conn:
            return ledger_claims.truncated_claims(conn, job_id)

    def rollback_losses(self, job_id: str) -> list[dict[str, Any]]:
        """The job's target tables where a rollback would lose rows that were there before the
        job (`blocks.postgres.ledger.rollback_losses`)."""
        with self._current() as conn:
            return pg_ledger.rollback_losses(conn, job_id)

    def mark_rolled_back(
        self, job_id: str, removed: Iterable[dict[str, Any]] = (), reason: str = ""
    ) -> list[str]:
        """Record the job and its loaded chunks as rolled back (after their data was removed),
        waiting for its loads in flight. Other jobs' chunks in `removed` (their data went with it,
        a forced rollback) are marked removed for `reason`, in the same transaction; returns the
        jobs so marked."""
        with self.connect() as conn:
            lock_job_loads(conn, job_id, exclusive=True)
            touched = ledger_claims.mark_removed(conn, removed, job_id, reason, RELOADABLE)
            pg_ledger.mark_job_rolled_back(conn, job_id)
            return touched

    def job_to_take_up(
        self,
        *,
        job_id: str | None,
        migration: str,
        fingerprint: str,
        no_resume: bool,
        resumable_within: timedelta,
    ) -> dict[str, Any] | None:
        """The job's row that `start_job` with these arguments would take up (to resume, or
        completed), or None for a new job; raises `TargetGuardError` where `start_job` would
        refuse (`_pick_run`). Reads in a READ ONLY transaction; creates no ledger."""
        with read_only(self.credentials) as conn:
            if not ledger_exists(conn):
                return None
            return _pick_run(conn, job_id, migration, fingerprint, no_resume, resumable_within)


def _pick_run(
    conn: psycopg.Connection,
    job_id: str | None,
    migration: str,
    fingerprint: str,
    no_resume: bool,
    resumable_within: timedelta,
) -> dict[str, Any] | None:
    """The job a run with these arguments takes up (see `PostgresLedger.start_job`), or None
    for a new one. Raises `TargetGuardError` for a job of another migration or fingerprint,
    and for a rolled-back or superseded one."""
    run = None
    if job_id:
        run = pg_ledger.get_run(conn, job_id)
        if run and run["migration"] != migration:
            raise TargetGuardError(
                f"job {job_id} belongs to migration {run['migration']!r}, not {migration!r}"
            )
        if run and run["fingerprint"] != fingerprint:
            raise TargetGuardError(
                f"job {job_id} was started with other tables, modes or target settings in its "
                "migrations file; restore them to run it again, or start a new job"
            )
    elif not no_resume:
        since = datetime.now(UTC) - resumable_within
        run = pg_ledger.newest_run(conn, migration, fingerprint, UNFINISHED, since)
        run = run or pg_ledger.newest_run(conn, migration, fingerprint, ("completed",))
    if run:
        if run["status"] == "rolled_back":
            raise TargetGuardError(f"job {run['job_id']} was rolled back; start a new job")
        if run["status"] == SUPERSEDED:
            raise TargetGuardError(f"job {run['job_id']} was superseded ({run['error']}); start a new job")
    return run
