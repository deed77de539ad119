"""Through Prefect itself: deploy prefect.yaml, run deployments by name on a process worker
(a subprocess), cancel a running migration, and roll a job back through its deployment."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.prefect_support import (
    PREFECT,
    ROOT,
    deploy_all,
    flow_run,
    flow_runs_tagged,
    run_deployment_by_name,
    stack_env,
    wait_for_state,
    worker,
)
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations
from tests.test_automations import prefix  # noqa: F401  (fixture: automations removed afterwards)

EVENTS_JSON = {"PAYLOAD", "ATTRS", "TAGS"}


@pytest.fixture(scope="module")
def deployed(servers):
    done = deploy_all()
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def running_worker(tmp_path, servers, pg_database, deployed):
    log = tmp_path / "worker.log"
    with worker(log, stack_env(servers, pg_database, tmp_path / "staging")):
        yield log


def assert_events_exact(snowflake_kwargs, pg_connect) -> None:
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.events", names, "event_id"), names)


def test_deployment_run_by_name_completes_on_a_worker(
    running_worker, pg_connect, snowflake_kwargs, demo_source
):
    """`prefect deployment run migrate/analytics` with the repo's own migrations.yaml."""
    done = subprocess.run(
        [PREFECT, "deployment", "run", "migrate/analytics", "--param", "job_id=e2e-analytics"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = next(line.split()[-1] for line in done.stdout.splitlines() if "UUID" in line)
    run = wait_for_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=240, log=running_worker)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert "job:e2e-analytics" in run["tags"]
    assert run["name"] == "analytics job e2e-analytics"  # readable, not random words
    assert_events_exact(snowflake_kwargs, pg_connect)
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "PAGE_VIEWS", "VIEW_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)
    with pg_connect() as conn:
        before = conn.execute(
            "SELECT job_id, status, chunks_done, rows_total, finished_at FROM migration_status.migration_runs"
        ).fetchall()

    # The same migration again, as a user would after the demo: a no-op that ends Completed.
    again = subprocess.run(
        [PREFECT, "deployment", "run", "migrate/analytics"], cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    again_id = next(line.split()[-1] for line in again.stdout.splitlines() if "UUID" in line)
    rerun = wait_for_state(again_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=240, log=running_worker)
    assert rerun["state_type"] == "COMPLETED", rerun["state"]
    assert "job:e2e-analytics" in rerun["tags"]
    with pg_connect() as conn:
        after = conn.execute(
            "SELECT job_id, status, chunks_done, rows_total, finished_at FROM migration_status.migration_runs"
        ).fetchall()
    assert after == before and len(after) == 1  # no new job, not even a failed one; nothing changed
    assert_events_exact(snowflake_kwargs, pg_connect)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)


def loaded_chunks(pg_connect, job_id: str) -> list[tuple]:
    with pg_connect() as conn:
        if conn.execute("SELECT to_regclass('migration_status.migration_chunk_status')").fetchone() == (
            None,
        ):
            return []  # the job has not started yet
        return conn.execute(
            "SELECT lower_bound::bigint, upper_bound::bigint, rows_loaded FROM migration_status.migration_chunk_status "
            "WHERE job_id = %s AND status = 'loaded'",
            (job_id,),
        ).fetchall()


def test_cancel_leaves_whole_chunks_then_resume_or_rollback(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source, running_worker
):
    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "EVENTS", "chunk_column": "EVENT_ID", "chunk_size": 4_000}],
        extra={"concurrency": 1},
    )
    parameters = {"source_name": "analytics", "job_id": "e2e-cancel", "migrations_file": str(path)}
    run_id = run_deployment_by_name("migrate/analytics", parameters)
    wait_for_state(run_id, {"RUNNING"}, timeout=60, log=running_worker)
    deadline = time.monotonic() + 120
    while len(loaded_chunks(pg_connect, "e2e-cancel")) < 3:
        assert time.monotonic() < deadline, "no chunk loaded within 120 s"
        time.sleep(0.2)

    done = subprocess.run([PREFECT, "flow-run", "cancel", run_id], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    run = wait_for_state(
        run_id, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, timeout=60, log=running_worker
    )
    assert run["state_type"] == "CANCELLED", run["state"]

    # No half-loaded chunk: the target holds exactly the rows of the chunks the ledger calls loaded.
    chunks = loaded_chunks(pg_connect, "e2e-cancel")
    assert 3 <= len(chunks) < 28
    with pg_connect() as conn:
        for lower, upper, rows in chunks:
            count = conn.execute(
                "SELECT count(*) FROM analytics.events WHERE event_id >= %s AND event_id < %s", (lower, upper)
            ).fetchone()[0]
            assert count == rows
        assert conn.execute("SELECT count(*) FROM analytics.events").fetchone()[0] == sum(
            c[2] for c in chunks
        )

    rerun = run_deployment_by_name("migrate/analytics", parameters)
    run = wait_for_state(
        rerun, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=240, log=running_worker
    )
    assert run["state_type"] == "COMPLETED", run["state"]
    assert_events_exact(snowflake_kwargs, pg_connect)

    rollback = run_deployment_by_name(
        "rollback/by-job", {"job_id": "e2e-cancel", "source_name": "analytics", "migrations_file": str(path)}
    )
    run = wait_for_state(
        rollback, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=120, log=running_worker
    )
    assert run["state_type"] == "COMPLETED", run["state"]
    with pg_connect() as conn:
        assert conn.execute("SELECT to_regclass('analytics.events')").fetchone() == (None,)


def test_a_crashed_run_resumes_automatically(
    tmp_path,
    servers,
    pg_database,
    pg_connect,
    snowflake_kwargs,
    demo_source,
    running_worker,
    prefix,  # noqa: F811
):
    """The worker's flow process dies (kill -9); the auto-resume automation runs the deployment
    again with the crashed run's job, which resumes and ends with exact data."""
    import os
    import signal

    from deployments.automations import ensure_automations

    ensure_automations(name_prefix=prefix)  # only auto-resume: no notification target given
    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "EVENTS", "chunk_column": "EVENT_ID", "chunk_size": 4_000}],
        extra={"concurrency": 1},
    )
    run_id = run_deployment_by_name(
        "migrate/analytics", {"source_name": "analytics", "migrations_file": str(path)}
    )
    wait_for_state(run_id, {"RUNNING"}, timeout=60, log=running_worker)
    deadline = time.monotonic() + 120
    while True:  # the job id comes from the run's tag (no job_id parameter was given)
        job_tags = [t for t in flow_run(run_id)["tags"] if t.startswith("job:")]
        if job_tags and len(loaded_chunks(pg_connect, job_tags[0][4:])) >= 3:
            break
        assert time.monotonic() < deadline, "no chunk loaded within 120 s"
        time.sleep(0.2)
    job_id = job_tags[0][4:]
    pid = int(str(flow_run(run_id)["infrastructure_pid"]).rsplit(":", 1)[-1])
    os.kill(pid, signal.SIGKILL)
    crashed = wait_for_state(run_id, {"CRASHED", "COMPLETED", "FAILED"}, timeout=60, log=running_worker)
    assert crashed["state_type"] == "CRASHED", crashed["state"]

    deadline = time.monotonic() + 240
    while True:
        runs = [r for r in flow_runs_tagged(f"job:{job_id}") if r["id"] != run_id]
        if runs and runs[-1]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, f"no resumed run finished: {[r['state_type'] for r in runs]}"
        time.sleep(1)
    resumed = runs[-1]
    assert resumed["state_type"] == "COMPLETED", resumed["state"]
    assert resumed["parameters"]["resume_attempt"] == 1 and resumed["parameters"]["job_id"] == job_id
    assert_events_exact(snowflake_kwargs, pg_connect)
