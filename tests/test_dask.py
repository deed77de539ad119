"""Scale-out: chunks fan out over a Dask cluster of worker processes, exact and resumable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import assert_same_rows, events_migrations, source_rows, target_rows
from tests.test_resume import ledger

EVENTS_JSON = {"PAYLOAD", "ATTRS", "TAGS"}


@pytest.fixture(scope="module")
def cluster(servers):
    """Two single-threaded worker processes; they inherit the test servers' env vars
    (PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, secrets) from this process."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster
        with Client(cluster) as client:
            client.run(send_queued_prefect_logs_and_events)


def send_queued_prefect_logs_and_events() -> None:
    """Run in each worker before it stops, so no task run's logs or events are lost."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10)


@pytest.fixture
def events_file(tmp_path, servers, pg_database, demo_source):
    return events_migrations(tmp_path / "migrations.yaml", servers, pg_database, concurrency=4)


def test_chunks_fan_out_over_dask_workers_and_resume(
    cluster, events_file, pg_connect, snowflake_kwargs, monkeypatch
):
    from flows.migrate import migrate

    report = migrate(
        source_name="analytics",
        job_id="dask-fan-out",
        migrations_file=str(events_file),
        dask_address=cluster.scheduler_address,
    )

    assert report.status == "completed" and len(report.chunks) == 11
    pids = {c.pid for c in report.chunks}
    assert len(pids) >= 2, pids  # both worker processes ran chunks
    assert os.getpid() not in pids
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.events", names, "event_id"), names)

    # Two chunks as after a worker died between committing and persisting its results (so the
    # run failed, and the job is not completed): a rerun must resume them on the cluster (the
    # address now from the environment) without loading twice.
    with pg_connect() as conn:
        conn.execute(
            "UPDATE migration_status.migration_runs SET status = 'failed' WHERE job_id = 'dask-fan-out'"
        )
    first = ledger(pg_connect, "dask-fan-out")
    lost = {c.chunk_id for c in report.chunks[2:4]}
    results = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]) / "migrate" / "dask-fan-out"
    for chunk_id in lost:
        (path,) = results.glob(f"*/*/{chunk_id}/*/*/chunk")  # <where>/<table>/<chunk>/<lower>/<upper>/chunk
        path.unlink()
    monkeypatch.setenv("MIGRATE_DASK_ADDRESS", cluster.scheduler_address)
    again = migrate(source_name="analytics", job_id="dask-fan-out", migrations_file=str(events_file))

    assert again.status == "completed" and again.resumed
    for before, after in zip(report.chunks, again.chunks, strict=True):
        if after.chunk_id in lost:  # rerun by a worker, which found the chunk in the ledger
            assert after.already_loaded and after.pid != os.getpid() and after.rows == before.rows
        else:  # the report the first run persisted, to the timings: nothing ran again
            assert after == before
    assert ledger(pg_connect, "dask-fan-out") == first  # no chunk was loaded twice
    assert all(status == "loaded" for status, *_ in first.values()) and len(first) == 11
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.events").fetchone() == (110_000,)
    shutil.rmtree(results, ignore_errors=True)
