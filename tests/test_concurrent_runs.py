"""The same job started twice at once: the second run refuses, names the running one, and
loads nothing; the first finishes with exact data, every chunk loaded once.

A run holds a session-level advisory lock on its job in the ledger database for as long as it
runs (blocks/postgres/ledger_lock.py `JobRunLock`); PostgreSQL drops it with the session, so a run
killed with kill -9 leaves nothing to clean up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blocks.errors import DataConversionError, TargetGuardError
from blocks.postgres.ledger_lock import run_lock_holder
from blocks.postgres.target import PostgresTarget
from tests.support import assert_same_rows, source_rows, staged_files, target_rows, write_migrations

CUSTOMERS = {"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def customers_file(tmp_path, servers, pg_database, demo_source) -> Path:
    return write_migrations(
        tmp_path / "migrations.yaml", servers, pg_database, [CUSTOMERS], extra={"concurrency": 1}
    )


def wait_until(check, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def ledger_chunks(pg_connect) -> dict[str, tuple]:
    """chunk_id -> (job_id, status, loaded_at) for every chunk of every job."""
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT chunk_id, job_id, status, loaded_at FROM migration_status.migration_chunk_status"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def lock_holder(pg_connect, job_id: str) -> str | None:
    with pg_connect() as conn:
        return run_lock_holder(conn, job_id)


def assert_customers_exact(snowflake_kwargs, pg_connect) -> None:
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)


def test_a_second_run_of_a_running_job_refuses_and_loads_nothing(
    customers_file, pg_connect, snowflake_kwargs, monkeypatch
):
    """Run A (no job_id) holds inside chunk 1's load. Run B with A's job_id, and run C with no
    job_id (which would pick A's job to resume), both refuse; A then finishes exactly."""
    from flows.migrate import migrate

    real_load = PostgresTarget.load_chunk
    holding, release = threading.Event(), threading.Event()

    def load_holding_chunk_1(self, **kwargs):
        if kwargs["chunk_id"].startswith("00001") and not holding.is_set():
            holding.set()
            release.wait(180)
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", load_holding_chunk_1)
    outcome: dict = {}

    def run_a() -> None:
        try:
            outcome["state"] = migrate(
                source_name="analytics", migrations_file=str(customers_file), return_state=True
            )
        except BaseException as exc:  # surfaced below
            outcome["error"] = exc

    thread = threading.Thread(target=run_a, daemon=True)
    thread.start()
    try:
        wait_until(lambda: holding.is_set() or "error" in outcome, "run A did not reach chunk 1's load")
        assert "error" not in outcome, outcome.get("error")
        with pg_connect() as conn:
            job_id, a_flow_run = conn.execute(
                "SELECT job_id, flow_run_id FROM migration_status.migration_runs"
            ).fetchone()
        staging = customers_file.parent / "staging"
        chunks_before, files_before = ledger_chunks(pg_connect), staged_files(staging, job_id)
        assert [c for c, (_, status, _) in chunks_before.items() if status == "loaded"] == [
            min(chunks_before)
        ]
        assert lock_holder(pg_connect, job_id) == f"flow run {a_flow_run}"

        with pytest.raises(TargetGuardError) as same_id:
            migrate(source_name="analytics", job_id=job_id, migrations_file=str(customers_file))
        with pytest.raises(TargetGuardError) as no_id:
            migrate(source_name="analytics", migrations_file=str(customers_file))

        assert str(same_id.value) == (
            f"job {job_id} is already running in flow run {a_flow_run}; this run stops before loading "
            "anything. Wait for that run to finish, or cancel it, then start this one again. If that "
            "run's process is gone but PostgreSQL still keeps its session (a client that vanished "
            "without closing it), end the session: SELECT pg_terminate_backend(pid) FROM "
            "pg_stat_activity WHERE application_name LIKE 'prefect-migrate run %'"
        )
        assert str(no_id.value).startswith(
            f"job {job_id} is already running in flow run {a_flow_run} (no job_id was given, so this "
            "run picked that job to resume); this run stops before loading anything"
        )
        # Neither loaded, exported or started anything: same ledger, same staged files, one job.
        assert ledger_chunks(pg_connect) == chunks_before
        assert staged_files(staging, job_id) == files_before
        with pg_connect() as conn:
            assert conn.execute("SELECT count(*) FROM analytics.customers").fetchone() == (1000,)
            assert conn.execute("SELECT count(*) FROM migration_status.migration_runs").fetchone() == (1,)
        assert lock_holder(pg_connect, job_id) == f"flow run {a_flow_run}"
    finally:
        release.set()
        thread.join(180)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    report = outcome["state"].result()
    assert report.status == "completed" and report.job_id == job_id

    assert_customers_exact(snowflake_kwargs, pg_connect)
    after = ledger_chunks(pg_connect)
    assert len(after) == 3 and all(status == "loaded" for _, status, _ in after.values())
    first = min(after)
    assert after[first] == chunks_before[first]  # loaded once, by A, before B and C came
    assert len({loaded_at for _, _, loaded_at in after.values()}) == 3
    assert lock_holder(pg_connect, job_id) is None  # released as the run ended

    # The job is free again: a rerun takes the lock and finds every chunk done.
    monkeypatch.setattr(PostgresTarget, "load_chunk", real_load)
    again = migrate(source_name="analytics", job_id=job_id, migrations_file=str(customers_file))
    assert again.status == "completed" and again.resumed
    assert ledger_chunks(pg_connect) == after
    assert_customers_exact(snowflake_kwargs, pg_connect)


def test_a_failed_run_releases_the_job_for_the_rerun(
    customers_file, pg_connect, snowflake_kwargs, monkeypatch
):
    from flows.migrate import migrate

    real_load = PostgresTarget.load_chunk

    def load_failing_chunk_1(self, **kwargs):
        if kwargs["chunk_id"].startswith("00001"):
            raise DataConversionError("injected failure in chunk 1")
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", load_failing_chunk_1)
    with pytest.raises(RuntimeError, match="injected failure in chunk 1"):
        migrate(source_name="analytics", job_id="fails-then-resumes", migrations_file=str(customers_file))
    assert lock_holder(pg_connect, "fails-then-resumes") is None

    monkeypatch.setattr(PostgresTarget, "load_chunk", real_load)
    report = migrate(
        source_name="analytics", job_id="fails-then-resumes", migrations_file=str(customers_file)
    )
    assert report.status == "completed" and report.resumed
    assert_customers_exact(snowflake_kwargs, pg_connect)


HOLD_THE_JOB = """
import os, sys, time
from pydantic import SecretStr
from blocks.postgres.credentials import PostgresCredentials
from blocks.postgres.ledger_store import PostgresLedger

port, dbname, job_id, flow_run_id = sys.argv[1:5]
login = PostgresCredentials(host="127.0.0.1", port=int(port), dbname=dbname, password=SecretStr(os.environ["PGPASSWORD"]))
assert PostgresLedger(credentials=login).run_lock(job_id, flow_run_id).acquire() is None
print("holding", flush=True)
time.sleep(600)
"""


def test_a_run_killed_with_kill_9_leaves_the_job_free(
    customers_file, servers, pg_database, pg_connect, snowflake_kwargs
):
    """A process holding the job (as a run's flow process does) dies by SIGKILL: PostgreSQL
    sees its connection close and drops the lock, so the next run needs no cleanup."""
    from flows.migrate import migrate

    fake_run = "00000000-0000-4000-8000-00000000dead"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_JOB, str(servers["pg"].port), pg_database, "killed-1", fake_run],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(
            TargetGuardError, match=f"job killed-1 is already running in flow run {fake_run};"
        ):
            migrate(source_name="analytics", job_id="killed-1", migrations_file=str(customers_file))
        with pg_connect() as conn:  # refused before preparing any table
            assert conn.execute("SELECT to_regclass('analytics.customers')").fetchone() == (None,)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    wait_until(
        lambda: lock_holder(pg_connect, "killed-1") is None, "the killed process's lock was not dropped", 30
    )

    report = migrate(source_name="analytics", job_id="killed-1", migrations_file=str(customers_file))
    assert report.status == "completed"
    assert_customers_exact(snowflake_kwargs, pg_connect)
