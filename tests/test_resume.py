"""Resume and exactly-once: a failed job resumes without redoing finished chunks."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from blocks.errors import DataConversionError
from blocks.postgres.target import PostgresTarget
from tests.support import (
    assert_same_rows,
    events_migrations,
    source_rows,
    staged_files,
    target_rows,
    write_migrations,
)

EVENTS_JSON = {"PAYLOAD", "ATTRS", "TAGS"}


@pytest.fixture
def events_file(tmp_path, servers, pg_database, demo_source):
    return events_migrations(tmp_path / "migrations.yaml", servers, pg_database, concurrency=2)


def ledger(connect, job_id: str) -> dict[str, tuple]:
    with connect() as conn:
        rows = conn.execute(
            "SELECT chunk_id, status, loaded_at, rows_loaded FROM migration_status.migration_chunk_status "
            "WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def task_states(flow_run_id, step: str, expected: int) -> dict[str, str]:
    """chunk_id -> final state of a flow run's `step` task runs ("chunk", "export"...), from the API.

    Task runs reach the API through events, a moment after they finish: poll until all are there.
    """
    deadline = time.monotonic() + 30
    while True:
        states = _task_states(flow_run_id, step)
        if (len(states) >= expected and all(s in ("Cached", "Completed") for s in states.values())) or (
            time.monotonic() > deadline
        ):
            return states
        time.sleep(0.5)


def _task_states(flow_run_id, step: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=200,
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    # A task run can reach the API before its state does: it counts as Pending until then.
    return {
        run.name.rsplit("/", 1)[1]: run.state.name if run.state else "Pending"
        for run in runs
        if run.name.startswith(f"{step} ")
    }


def test_failure_in_chunk_k_then_rerun_resumes(events_file, pg_connect, snowflake_kwargs, monkeypatch):
    from flows.migrate import migrate

    real_load = PostgresTarget.load_chunk
    failing = "00004"

    def load_failing_at_k(self, **kwargs):
        if kwargs["chunk_id"].startswith(failing):
            raise DataConversionError("injected failure in chunk 4")
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", load_failing_at_k)
    with pytest.raises(RuntimeError, match="injected failure"):
        migrate(source_name="analytics", job_id="resume-k", migrations_file=str(events_file))
    first = ledger(pg_connect, "resume-k")
    files_before = staged_files(events_file.parent / "staging", "resume-k")
    done_first = {cid for cid, (status, _, _) in first.items() if status == "loaded"}
    assert {f"0000{i}" for i in range(4)} <= {cid[:5] for cid in done_first}
    assert not any(cid.startswith(failing) for cid in done_first)
    with pg_connect() as conn:
        assert conn.execute(
            "SELECT status FROM migration_status.migration_runs WHERE job_id = 'resume-k'"
        ).fetchone() == ("failed",)

    monkeypatch.setattr(PostgresTarget, "load_chunk", real_load)
    state = migrate(
        source_name="analytics", job_id="resume-k", migrations_file=str(events_file), return_state=True
    )
    report = state.result()
    assert report.status == "completed" and report.resumed

    second = ledger(pg_connect, "resume-k")
    assert all(status == "loaded" for status, _, _ in second.values()) and len(second) == 11
    for cid in done_first:  # loaded once, in the first run, never again
        assert second[cid][1] == first[cid][1]
    rerun = state.state_details.flow_run_id
    chunk_states = task_states(rerun, "chunk", expected=len(second))
    files_after = staged_files(events_file.parent / "staging", "resume-k")
    for cid in done_first:  # the whole chunk came from its persisted result: not exported again
        assert chunk_states[cid] == "Cached", (cid, chunk_states[cid])
        assert files_after[cid] == files_before[cid], cid
    failed_chunk = next(c for c in second if c.startswith(failing))
    assert chunk_states[failed_chunk] == "Completed"

    assert progress_of(rerun) == 100  # cached chunks count as done too

    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.events", names, "event_id"), names)


def progress_of(flow_run_id) -> float:
    """The final value of a flow run's progress artifact, read from the Prefect API."""
    import httpx

    response = httpx.post(
        f"{os.environ['PREFECT_API_URL']}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}, "type": {"any_": ["progress"]}}},
    )
    (artifact,) = response.json()
    return artifact["data"]


def test_rerun_without_job_id_resumes_newest_unfinished_job(
    events_file, pg_connect, snowflake_kwargs, monkeypatch
):
    from flows.migrate import migrate

    real_load = PostgresTarget.load_chunk

    def load_failing(self, **kwargs):
        if kwargs["chunk_id"].startswith("00002"):
            raise DataConversionError("injected")
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", load_failing)
    with pytest.raises(RuntimeError):
        migrate(source_name="analytics", migrations_file=str(events_file))
    monkeypatch.setattr(PostgresTarget, "load_chunk", real_load)
    report = migrate(source_name="analytics", migrations_file=str(events_file))
    assert report.resumed and report.status == "completed"
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM migration_status.migration_runs").fetchone() == (1,)
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.events", names, "event_id"), names)

    fresh = migrate(
        source_name="analytics", migrations_file=str(events_file), no_resume=True, return_state=True
    )
    assert fresh.is_failed()  # a fresh append job over the same keys is refused
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.events").fetchone() == (110_000,)


def test_commit_without_persisted_result_is_not_loaded_twice(events_file, pg_connect, snowflake_kwargs):
    """A crash after a chunk commits but before Prefect persists its result: the ledger skips it."""
    import os

    from flows.migrate import migrate

    first = migrate(source_name="analytics", job_id="crash-after-commit", migrations_file=str(events_file))
    assert not any(c.already_loaded for c in first.chunks)
    results = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]) / "migrate" / "crash-after-commit"
    removed = 0
    for path in results.glob("*/*/*/*/*/chunk"):  # <where>/<table>/<chunk>/<lower>/<upper>/chunk
        path.unlink()  # as if the process died after the load committed, before the result was saved
        removed += 1
    assert removed == len(first.chunks)

    again = migrate(source_name="analytics", job_id="crash-after-commit", migrations_file=str(events_file))
    assert again.status == "completed"
    assert all(c.already_loaded for c in again.chunks)
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.events", names, "event_id"), names)
    shutil.rmtree(results, ignore_errors=True)


def test_loading_the_same_chunk_twice_changes_nothing(events_file, pg_connect, snowflake_kwargs):
    from flows.migrate import migrate
    from tasks.config import load_migration
    from tasks.load import load_manifest
    from tasks.plan import Chunk

    report = migrate(source_name="analytics", job_id="twice", migrations_file=str(events_file))
    spec = load_migration("analytics", events_file)
    with pg_connect() as conn:
        before = conn.execute("SELECT count(*), sum(hashtext(t::text)) FROM analytics.events t").fetchone()

    from tasks.config import RunWindow
    from tasks.plan import inspect_source, plan_chunks

    plans = plan_chunks.fn(spec, inspect_source.fn(spec), RunWindow())
    plan = plans[0]
    chunk: Chunk = plan.chunks[1]
    from tasks.export import export_chunk_to_staging
    from tasks.validate import validate_staged_chunk

    manifest = validate_staged_chunk(
        spec, "twice", plan, chunk, export_chunk_to_staging(spec, "twice", plan, chunk)
    )
    for _ in range(2):
        loaded = load_manifest(spec, "twice", plan, chunk, manifest)
        assert loaded.already_loaded and loaded.rows_loaded == manifest.rows
    with pg_connect() as conn:
        after = conn.execute("SELECT count(*), sum(hashtext(t::text)) FROM analytics.events t").fetchone()
    assert after == before and after[0] == report.rows
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.events", names, "event_id"), names)


def test_the_same_job_id_against_another_database_is_another_job(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    """Persisted chunk results are keyed by the destination too: reusing a job id for another
    target database loads every chunk there, instead of skipping them as done."""
    from flows.migrate import migrate

    other = pg_database + "_b"
    with servers["pg"].connect() as conn:
        conn.execute(f'CREATE DATABASE "{other}"')
    try:
        tables = [{"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1_000}]
        first = write_migrations(tmp_path / "a.yaml", servers, pg_database, tables)
        second = write_migrations(tmp_path / "b.yaml", servers, other, tables)
        migrate(source_name="analytics", job_id="one-id", migrations_file=str(first))
        report = migrate(source_name="analytics", job_id="one-id", migrations_file=str(second))
        assert report.status == "completed" and not any(c.already_loaded for c in report.chunks)
        names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
        for connect in (pg_connect, lambda: servers["pg"].connect(other)):
            assert_same_rows(
                expected, target_rows(connect, "analytics.customers", names, "customer_id"), names
            )
    finally:
        with servers["pg"].connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


def test_job_counters_move_as_chunks_commit(
    tmp_path, servers, pg_database, pg_connect, demo_source, monkeypatch
):
    """`migration_runs` shows chunks done and rows during a run, not only at its end."""
    import tasks.load
    from flows.migrate import migrate

    path = events_migrations(tmp_path / "one.yaml", servers, pg_database, concurrency=1)
    seen: list[tuple] = []
    load = tasks.load.load_manifest

    def load_and_look(spec, job_id, plan, chunk, manifest):
        with pg_connect() as conn:  # before this chunk loads: the chunks before it are counted
            seen.append(
                conn.execute(
                    "SELECT status, chunks_done, chunks_total, rows_total FROM migration_status.migration_runs "
                    "WHERE job_id = %s",
                    (job_id,),
                ).fetchone()
            )
        return load(spec, job_id, plan, chunk, manifest)

    monkeypatch.setattr(tasks.load, "load_manifest", load_and_look)
    report = migrate(source_name="analytics", migrations_file=str(path))
    rows = [c.rows for c in sorted(report.chunks, key=lambda c: c.chunk_id)]
    total = len(rows)
    assert seen == [("running", k, total, sum(rows[:k])) for k in range(total)]
