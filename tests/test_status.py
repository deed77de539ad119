"""`python -m flows.status`: a job's state, stage, percent, rows and errors, read back from the Prefect API."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from blocks.errors import DataConversionError, ValidationFailed
from blocks.postgres.target import PostgresTarget
from flows.job_list import recent_jobs
from flows.status import flow_run_status, job_status, main, render
from tests.support import write_migrations


@pytest.fixture
def customers_file(tmp_path, servers, pg_database, demo_source):
    """CUSTOMERS (3,000 rows) in three chunks, one at a time so a failure stops at a known chunk."""
    return write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        tables=[
            {
                "name": "CUSTOMERS",
                "chunk_column": "CUSTOMER_ID",
                "chunk_size": 1000,
                "primary_key": ["CUSTOMER_ID"],
            }
        ],
        extra={"concurrency": 1},
    )


def new_job_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def status_when(job_id: str, done, timeout: float = 20.0):
    """job_status(job_id) once `done(status)` holds; states, artifacts and events reach the API
    a moment after the flow returns. Returns the last status seen, done or not."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(job_id)
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def status_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m flows.status ...` in a child process, against the session's Prefect server.

    A child process rather than main() under capsys: Prefect's console log handler would keep
    capsys's stream and fail on it, closed, in later tests that run flows."""
    return subprocess.run(
        [sys.executable, "-m", "flows.status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def test_completed_job_shows_every_row_and_no_errors(customers_file):
    from flows.migrate import migrate

    job_id = new_job_id("status-done")
    report = migrate(source_name="analytics", job_id=job_id, migrations_file=str(customers_file))
    assert report.status == "completed" and report.rows == 3000

    status = status_when(job_id, lambda s: s.state == "completed" and s.report is not None)
    assert status.state == "completed" and status.prefect_state == "Completed"
    assert status.migration == "analytics" and status.runs == 1
    assert status.percent == 100.0
    assert status.rows == report.rows
    assert (status.chunks_done, status.chunks_total) == (len(report.chunks), len(report.chunks))
    assert status.stage is None and status.errors == []
    assert status.report.startswith(f"Migration 'analytics', job {job_id}: completed")

    text = render(status)
    assert "state:      completed" in text
    assert "percent:    100.0 %" in text
    assert "rows moved: 3,000" in text
    assert "errors:     none" in text

    cli = status_cli(job_id, "--json")
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    assert (printed["state"], printed["percent"], printed["rows"]) == ("completed", 100.0, 3000)


def test_failed_chunk_shows_failed_with_its_error_then_resume_completes(customers_file, monkeypatch):
    from flows.migrate import migrate

    real_load = PostgresTarget.load_chunk

    def load_failing_second_chunk(self, **kwargs):
        if kwargs["chunk_id"].startswith("00001"):
            raise DataConversionError("injected failure in chunk 1")
        return real_load(self, **kwargs)

    job_id = new_job_id("status-failed")
    monkeypatch.setattr(PostgresTarget, "load_chunk", load_failing_second_chunk)
    with pytest.raises(RuntimeError, match="injected failure"):
        migrate(source_name="analytics", job_id=job_id, migrations_file=str(customers_file))

    status = status_when(job_id, lambda s: s.state == "failed" and s.rows is not None)
    first_run = status.flow_run_id
    assert status.state == "failed" and status.prefect_state == "Failed"
    assert len(status.errors) == 1 and "injected failure in chunk 1" in status.errors[0]
    assert (status.chunks_done, status.chunks_total, status.rows) == (1, 3, 1000)
    assert status.percent == 33.3
    text = render(status)
    assert "state:      failed" in text and "33.3 % (1/3 chunks)" in text and "rows moved: 1,000" in text
    assert "injected failure in chunk 1" in text

    monkeypatch.setattr(PostgresTarget, "load_chunk", real_load)
    migrate(source_name="analytics", job_id=job_id, migrations_file=str(customers_file))
    # The resumed run is the newest: its state, its progress (cached chunks count), no old errors.
    status = status_when(job_id, lambda s: s.runs == 2 and s.state == "completed" and s.percent == 100.0)
    assert (status.state, status.runs, status.percent, status.rows) == ("completed", 2, 100.0, 3000)
    assert status.errors == []
    assert "newest of 2 runs" in render(status)

    # The first run's id stands for its job, which the newest run describes.
    by_run, asked = flow_run_status(UUID(first_run))
    assert str(asked.id) == first_run
    assert (by_run.job_id, by_run.flow_run_id, by_run.runs) == (job_id, status.flow_run_id, 2)
    assert (by_run.state, by_run.rows) == ("completed", 3000)
    cli = status_cli(first_run)
    assert cli.returncode == 0, cli.stderr
    assert f"job:        {job_id} (migration 'analytics')" in cli.stdout
    assert "state:      completed" in cli.stdout and f"({status.flow_run_id})" in cli.stdout
    assert f"({first_run}) is an earlier run of job {job_id}; its newest run decides" in cli.stderr


def test_failed_validation_is_listed_as_an_error(customers_file, monkeypatch):
    import tasks.pipeline
    import tasks.validate
    from flows.migrate import migrate

    real_validate = tasks.validate.validate_staged_chunk

    def validate_failing_first_chunk(spec, job_id, plan, chunk, staged):
        if chunk.chunk_id.startswith("00000"):
            raise ValidationFailed("staged checksum does not match the source")
        return real_validate(spec, job_id, plan, chunk, staged)

    monkeypatch.setattr(tasks.pipeline, "validate_staged_chunk", validate_failing_first_chunk)
    job_id = new_job_id("status-invalid")
    with pytest.raises(RuntimeError, match="checksum"):
        migrate(source_name="analytics", job_id=job_id, migrations_file=str(customers_file))

    status = status_when(job_id, lambda s: s.state == "failed" and len(s.errors) == 2)
    assert status.state == "failed"
    assert len(status.errors) == 2, status.errors
    assert "checksum does not match" in status.errors[0]
    assert status.errors[1].startswith("validation failed, CUSTOMERS chunk 00000")
    assert status.errors[1].endswith("staged checksum does not match the source")
    assert (status.percent, status.rows) == (0.0, 0)


def test_running_job_shows_the_stage_of_the_chunk_in_flight(customers_file, monkeypatch):
    import threading

    from flows.migrate import migrate

    real_load = PostgresTarget.load_chunk
    loading, release = threading.Event(), threading.Event()

    def load_waiting_at_second_chunk(self, **kwargs):
        if kwargs["chunk_id"].startswith("00001"):
            loading.set()
            release.wait(60)
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", load_waiting_at_second_chunk)
    job_id = new_job_id("status-running")
    outcome: dict = {}
    run = threading.Thread(
        target=lambda: outcome.update(
            report=migrate(source_name="analytics", job_id=job_id, migrations_file=str(customers_file))
        ),
        daemon=True,
    )
    run.start()
    try:
        assert loading.wait(60), "the second chunk never started loading"
        status = status_when(job_id, lambda s: s.stage == "migration" and s.rows == 1000)
    finally:
        release.set()
        run.join(60)
    assert (status.state, status.prefect_state, status.stage) == ("running", "Running", "migration")
    assert (status.chunks_done, status.chunks_total, status.rows, status.percent) == (1, 3, 1000, 33.3)
    assert status.errors == []
    assert "state:      running (stage: migration)" in render(status)
    assert outcome["report"].status == "completed"


def test_scheduled_run_is_pending():
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from flows.migrate import migrate

    job_id = new_job_id("status-pending")
    with get_client(sync_client=True) as client:
        client.create_flow_run(migrate, tags=[f"job:{job_id}", "migration:analytics"], state=Scheduled())

    status = job_status(job_id)
    assert (status.state, status.prefect_state, status.percent, status.rows) == (
        "pending",
        "Scheduled",
        None,
        None,
    )
    text = render(status)
    assert "state:      pending" in text and "percent:    unknown" in text and "rows moved: unknown" in text


def test_unknown_job_exits_2_with_a_message():
    job_id = "no-such-job-" + secrets.token_hex(4)
    cli = status_cli(job_id)
    assert cli.returncode == 2, (cli.stdout, cli.stderr)
    assert f"no migration job {job_id!r}" in cli.stderr and f"tagged job:{job_id}" in cli.stderr
    assert cli.stdout == ""


def test_main_returns_0_for_a_known_job_and_2_for_an_unknown_one():
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    from flows.migrate import migrate

    job_id = new_job_id("status-main")
    with get_client(sync_client=True) as client:
        client.create_flow_run(migrate, tags=[f"job:{job_id}"], state=Failed(message="boom"))
    assert main([job_id]) == 0
    assert main([job_id + "-other"]) == 2
    status = job_status(job_id)
    assert (status.state, status.errors, status.migration) == ("failed", ["boom"], None)


def create_run(job_id: str | None, migration: str, *states, progress: tuple[int, int, int] | None = None):
    """A `migrate` flow run made through the API (no flow runs): tagged with `job_id` and
    `migration` unless `job_id` is None, taken through `states`, with a progress artifact
    saying (chunks done, chunks total, rows) when given. Returns the run as read back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    from flows.migrate import migrate

    tags = [f"job:{job_id}", f"migration:{migration}"] if job_id else []
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(
            migrate, parameters={"source_name": migration}, tags=tags, state=states[0]
        )
        for state in states[1:]:
            client.set_flow_run_state(run.id, state, force=True)
        if progress:
            done, total, rows = progress
            client.create_artifact(
                ArtifactCreate(
                    type="progress",
                    key=f"migration-progress-{migration}",
                    data=round(100.0 * done / total, 1),
                    description=f"Job `{job_id}`: {done}/{total} chunks done, {rows:,} rows moved. "
                    "Current stage: idle.",
                    flow_run_id=run.id,
                )
            )
        time.sleep(0.05)  # distinct start times, so "newest first" is well defined
        return client.read_flow_run(run.id)


def test_flow_run_id_of_a_run_without_a_job_shows_that_run():
    """A run that failed before its job started carries no job tag; its id still finds it."""
    from prefect.states import Failed, Running

    run = create_run(
        None,
        "analytics",
        Running(),
        Failed(
            message="migrations.yaml is not valid YAML at line 3, column 1: mapping values are not allowed here"
        ),
    )
    status, asked = flow_run_status(run.id)
    assert asked.id == run.id
    assert (status.job_id, status.migration, status.state, status.runs) == (None, "analytics", "failed", 1)
    assert status.errors == [
        "migrations.yaml is not valid YAML at line 3, column 1: mapping values are not allowed here"
    ]

    cli = status_cli(str(run.id))
    assert cli.returncode == 0, cli.stderr
    assert "job:        none yet (migration 'analytics'): the flow run has not started its job" in cli.stdout
    assert "state:      failed" in cli.stdout
    assert f"flow run:   {run.name} ({run.id}), Failed, started " in cli.stdout and ", ended " in cli.stdout
    assert "  - migrations.yaml is not valid YAML at line 3, column 1: mapping values" in cli.stdout
    printed = json.loads(status_cli(str(run.id), "--json").stdout)
    assert (printed["job_id"], printed["state"], printed["flow_run_id"]) == (None, "failed", str(run.id))


def test_unknown_flow_run_or_a_run_of_another_flow_exits_2():
    from prefect import flow
    from prefect.client.orchestration import get_client

    missing = uuid4()
    cli = status_cli(str(missing))
    assert cli.returncode == 2 and cli.stdout == ""
    assert f"no flow run {missing}, and no migration job '{missing}'" in cli.stderr

    @flow(name="not-a-migration")
    def other() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(other)
    cli = status_cli(str(run.id))
    assert cli.returncode == 2 and cli.stdout == ""
    assert f"flow run {run.id} is a run of flow 'not-a-migration', not of 'migrate'" in cli.stderr


def test_list_shows_each_job_once_newest_first():
    from prefect.states import Completed, Failed, Running, Scheduled

    migration = "listed-" + secrets.token_hex(3)
    job_a, job_b, job_c, job_d = (new_job_id(f"{migration}-{n}") for n in "abcd")
    a1 = create_run(job_a, migration, Running(), Failed(message="boom"), progress=(1, 3, 1000))
    a2 = create_run(job_a, migration, Running(), Completed(), progress=(3, 3, 3000))
    create_run(job_b, migration, Running(), progress=(1, 4, 250))
    create_run(job_c, migration, Scheduled())
    create_run(job_d, migration, Running())  # checking connections, planning: no progress yet
    create_run(new_job_id("other"), "analytics", Running(), Completed())  # another migration

    found = recent_jobs(migration)
    assert [j.job_id for j in found.jobs] == [job_d, job_c, job_b, job_a]
    assert found.runs_without_job == 0
    d, c, b, a = found.jobs
    assert (d.state, d.percent, d.rows, d.runs) == ("pending", None, None, 1)
    assert (c.state, c.started, c.ended) == ("pending", None, None)
    assert (b.state, b.percent, b.chunks_done, b.chunks_total, b.rows, b.ended) == (
        "running",
        25.0,
        1,
        4,
        250,
        None,
    )
    assert (a.state, a.percent, a.chunks_done, a.chunks_total, a.rows) == ("completed", 100.0, 3, 3, 3000)
    # The job started with its first run and ended with its newest.
    assert (a.runs, a.flow_run_id, a.started, a.ended) == (2, str(a2.id), a1.start_time, a2.end_time)
    assert all(j.migration == migration for j in found.jobs)
    assert [j.job_id for j in recent_jobs(migration, limit=2).jobs] == [job_d, job_c]

    cli = status_cli("--list", migration)
    assert cli.returncode == 0, cli.stderr
    header, *lines = cli.stdout.splitlines()
    assert header.split() == [
        "JOB",
        "MIGRATION",
        "STATE",
        "PROGRESS",
        "ROWS",
        "STARTED",
        "(UTC)",
        "ENDED",
        "(UTC)",
        "RUNS",
    ]
    assert [line.split()[0] for line in lines] == [job_d, job_c, job_b, job_a]
    started = a1.start_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    ended = a2.end_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert lines[3].split() == [
        job_a,
        migration,
        "completed",
        "100.0",
        "%",
        "(3/3)",
        "3,000",
        *started.split(),
        *ended.split(),
        "2",
    ]
    assert lines[2].split()[2:7] == ["running", "25.0", "%", "(1/4)", "250"]
    assert lines[1].split()[1:] == [migration, "pending", "-", "-", "-", "-", "1"]
    printed = json.loads(status_cli("--list", migration, "--limit", "1", "--json").stdout)
    assert [j["job_id"] for j in printed["jobs"]] == [job_d]

    cli = status_cli("--list", "no-such-migration-" + secrets.token_hex(3))
    assert (cli.returncode, cli.stdout.strip()) == (0, "no migration jobs found")


def test_list_without_an_argument_counts_newer_runs_without_a_job():
    from prefect.client.orchestration import get_client
    from prefect.states import Running, Scheduled

    job_id = new_job_id("status-list")
    create_run(job_id, "analytics", Running(), progress=(0, 2, 0))
    # Scheduled far ahead: the newest run of all, and no job yet.
    later = create_run(None, "analytics", Scheduled(scheduled_time=datetime(2100, 1, 1, tzinfo=UTC)))
    try:
        found = recent_jobs(limit=1)
        assert [j.job_id for j in found.jobs] == [job_id] and found.runs_without_job >= 1
        cli = status_cli()
        assert cli.returncode == 0, cli.stderr
        lines = cli.stdout.splitlines()
        assert lines[0].startswith("JOB ") and any(line.startswith(f"{job_id} ") for line in lines)
        assert "newer `migrate` flow run(s) with no job: not started" in lines[-1]
        cli = status_cli(job_id, "--list")
        assert cli.returncode == 2 and "not both" in cli.stderr
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(later.id)
