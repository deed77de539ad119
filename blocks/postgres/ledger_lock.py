"""One job, one live run: the session-level advisory lock a run holds on its job in the
ledger's database (`JobRunLock`), and who holds it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from blocks.errors import TargetGuardError
from blocks.postgres import pool as pg_pool

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
        """`settings`: the ledger database's `PostgresCredentials`."""
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

    @staticmethod
    def how_to_free() -> str:
        """What to do when a holder's process is gone but PostgreSQL still keeps its session."""
        return (
            "If that run's process is gone but PostgreSQL still keeps its session (a client that "
            "vanished without closing it), end the session: SELECT pg_terminate_backend(pid) FROM "
            f"pg_stat_activity WHERE application_name LIKE '{RUN_LOCK_APP}%'"
        )

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
