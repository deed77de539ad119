"""`python -m flows.status`: a job's state, stage, percent, rows and errors, read back from the Prefect API."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from blocks.errors import DataConversionError, ValidationFailed
from blocks.postgres import PostgresTarget
from flows.status import job_status, main, render
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
