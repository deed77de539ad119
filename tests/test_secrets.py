"""Secrets never reach logs, artifacts, events, persisted results, the ledger, parameters,
exceptions, or what the run prints to the console and its loggers."""

from __future__ import annotations

import json
import os
import secrets
import time
import traceback
from pathlib import Path

import boto3

# Setting up Prefect's logging (importing prefect.main) binds its console handler to the
# sys.stderr of that moment: here pytest's session-long capture, not the stream of a test's
# capfd, which is closed when that test ends.
import prefect.main  # noqa: F401
import pytest

from tests.support import write_migrations


def secret_values() -> list[str]:
    names = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "SNOWFLAKE_PASSWORD", "INFLUX_PASSWORD", "INFLUX_TOKEN")
    return [os.environ[name] for name in names]


def flow_run_texts(flow_run_id) -> list[str]:
    """Every log line, artifact and parameter the Prefect API holds for a flow run."""
    import httpx

    api = os.environ["PREFECT_API_URL"]
    run_filter = {"flow_run_id": {"any_": [str(flow_run_id)]}}
    deadline = time.monotonic() + 20
    while True:  # logs arrive in batches; wait for the final "Finished in state" line
        logs = httpx.post(f"{api}/logs/filter", json={"logs": run_filter, "limit": 200}).json()
        if any("Finished in state" in log["message"] for log in logs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": run_filter, "limit": 200}).json()
    run = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
    assert logs and artifacts, "expected logs and artifacts to scan"
    return [log["message"] for log in logs] + [repr(a) for a in artifacts] + [repr(run["parameters"])]


FINAL_FLOW_RUN_EVENTS = {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed"}


def flow_run_events(flow_run_id, job_id: str | None = None, expect: str | None = None) -> list[str]:
    """Every event the Prefect API holds about a flow run (its own and its task runs') and,
    given `job_id`, about the migration job (`migration.job.<id>`), as JSON text. Events are
    sent in the background: waits until the flow run's final state event (and an event named
    `expect`) has arrived."""
    import httpx

    api = os.environ["PREFECT_API_URL"]
    ids = [f"prefect.flow-run.{flow_run_id}", *([f"migration.job.{job_id}"] if job_id else [])]
    body = {"filter": {"any_resource": {"id": ids}}, "limit": 50}
    deadline = time.monotonic() + 20
    while True:
        page = httpx.post(f"{api}/events/filter", json=body).json()
        events = page["events"]
        while page.get("next_page"):
            page = httpx.get(page["next_page"]).json()
            events += page["events"]
        names = {event["event"] for event in events}
        if (
            names & FINAL_FLOW_RUN_EVENTS and (expect is None or expect in names)
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert names & FINAL_FLOW_RUN_EVENTS, f"no final flow-run event among {sorted(names)}"
    assert expect is None or expect in names, f"no {expect} event among {sorted(names)}"
    return [json.dumps(event) for event in events]


def captured_locally(capfd, caplog) -> list[str]:
    """What reached the process's stdout and stderr during the test, and every record the run's
    loggers emitted (Prefect's console lines are these records), with tracebacks."""
    out, err = capfd.readouterr()
    assert "Finished in state" in caplog.text, "expected the run's log records to scan"
    return [out, err, caplog.text]


def assert_no_secret(texts: list[str], where: str, extra: tuple[str, ...] = ()) -> None:
    for secret in (*secret_values(), *extra):
        for text in texts:
            assert secret not in text, f"a secret value appears in {where}: ...{text[:200]}"


def test_no_secret_in_logs_artifacts_events_results_or_ledger(
    tmp_path, servers, pg_database, pg_connect, demo_source, capfd, caplog
):
    from flows.migrate import migrate

    bucket = "secrets-" + secrets.token_hex(4)
    endpoint = f"http://127.0.0.1:{servers['moto'].port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000}],
        staging={
            "type": "s3",
            "bucket": bucket,
            "region": "us-east-1",
            "endpoint_url": endpoint,
            "access_key_id_env": "AWS_ACCESS_KEY_ID",
            "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
        },
    )
    state = migrate(
        source_name="analytics", migrations_file=str(path), job_id="secrets-ok", return_state=True
    )
    assert state.is_completed()
    run_id = state.state_details.flow_run_id
    assert_no_secret(flow_run_texts(run_id), "the Prefect API")
    assert_no_secret(flow_run_events(run_id, "secrets-ok", "migration.chunk.migration.finished"), "events")
    assert_no_secret(captured_locally(capfd, caplog), "the local console or logs")

    assert_no_secret_in_results()
    assert_no_secret_in_ledger(pg_connect)


def assert_no_secret_in_results() -> None:
    results = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    files = [p for p in results.rglob("*") if p.is_file()]
    assert files, "expected persisted results to scan"
    for file in files:
        data = file.read_bytes()
        for secret in secret_values():
            assert secret.encode() not in data, f"a secret value appears in persisted result {file}"


def assert_no_secret_in_ledger(pg_connect) -> None:
    with pg_connect() as conn:
        ledger = conn.execute("SELECT r::text FROM migration_status.migration_runs r").fetchall()
        ledger += conn.execute("SELECT c::text FROM migration_status.migration_chunk_status c").fetchall()
    assert_no_secret([row[0] for row in ledger], "the ledger")


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_no_secret_in_an_influxdb_migration_from_s3(
    tmp_path, servers, pg_database, pg_connect, influx_database, api
):
    from flows.migrate import migrate
    from tests.energy_support import influx_migrations, single_measure_records, write_files

    bucket = "secrets-" + secrets.token_hex(4)
    endpoint = f"http://127.0.0.1:{servers['moto'].port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    write_files(tmp_path / "files" / "generation_data", single_measure_records(500, days=1))
    for file in (tmp_path / "files" / "generation_data").iterdir():
        s3.upload_file(str(file), bucket, f"unload/generation_data/{file.name}")
    source = {
        "type": "parquet",
        "location": f"s3://{bucket}/unload",
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "access_key_id_env": "AWS_ACCESS_KEY_ID",
        "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
    }
    table = {"name": "generation_data", "chunk_column": "time", "chunk_interval": "1d"}
    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [table], source=source, api=api
    )
    state = migrate(source_name="energy", migrations_file=str(path), return_state=True)
    assert state.is_completed() and state.result().rows == 500
    assert_no_secret(flow_run_texts(state.state_details.flow_run_id), "the Prefect API")
    assert_no_secret_in_results()
    assert_no_secret_in_ledger(pg_connect)


def test_no_secret_in_a_failure(tmp_path, servers, pg_database, demo_source, monkeypatch, capfd, caplog):
    from flows.migrate import migrate

    monkeypatch.setenv("WRONG_PGPASSWORD", "wrong-" + secrets.token_hex(8))
    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID"}],
        target={"password_env": "WRONG_PGPASSWORD"},
    )
    state = migrate(source_name="analytics", migrations_file=str(path), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as caught:
        state.result()
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert "password authentication failed" in text
    run_id = state.state_details.flow_run_id
    texts = flow_run_texts(run_id) + [text, state.message or ""]
    texts += flow_run_events(run_id) + captured_locally(capfd, caplog)
    assert_no_secret(texts, "a failed run", (os.environ["WRONG_PGPASSWORD"],))


def test_no_secret_when_influxdb_refuses_the_password_mid_run(
    tmp_path, servers, pg_database, pg_connect, influx_database, monkeypatch, capfd, caplog
):
    """The password passes the connection check, then changes before the first write: a 401 in
    the middle of the run, reported with the user's name and the setting, never the password."""
    from blocks.influxdb.target import InfluxDBTarget
    from devstack.servers import influxql
    from flows.migrate import migrate
    from tests.energy_support import influx_migrations, single_measure_records, write_files

    user, first, second = (
        "mig_" + secrets.token_hex(4),
        "pw-" + secrets.token_hex(10),
        "pw-" + secrets.token_hex(10),
    )
    influxql(servers["influx"], f"CREATE USER \"{user}\" WITH PASSWORD '{first}'")
    influxql(servers["influx"], f'GRANT ALL ON "{influx_database}" TO "{user}"')
    monkeypatch.setenv("MIG_INFLUX_PASSWORD", first)
    real_write = InfluxDBTarget.write_chunk

    def write_after_a_password_change(self, *args, **kwargs):
        influxql(servers["influx"], f"SET PASSWORD FOR \"{user}\" = '{second}'")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(InfluxDBTarget, "write_chunk", write_after_a_password_change)
    write_files(tmp_path / "files" / "generation_data", single_measure_records(200, days=1), files=1)
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [{"name": "generation_data", "chunk_column": "time", "chunk_interval": "1d"}],
        source={"type": "parquet", "location": str(tmp_path / "files")},
        target={"username": user, "password_env": "MIG_INFLUX_PASSWORD"},
    )
    try:
        state = migrate(
            source_name="energy", migrations_file=str(path), job_id="secrets-401", return_state=True
        )
    finally:
        influxql(servers["influx"], f'DROP USER "{user}"')
    assert state.is_failed()
    with pytest.raises(Exception) as caught:
        state.result()
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert f"unauthorized: InfluxDB at {servers['influx'].extra['url']} refused user {user!r}" in text
    run_id = state.state_details.flow_run_id
    texts = flow_run_texts(run_id) + [text, state.message or ""]
    texts += flow_run_events(run_id, "secrets-401", "migration.chunk.migration.started")
    texts += captured_locally(capfd, caplog)
    assert_no_secret(texts, "a run refused by InfluxDB", (first, second))
    assert_no_secret_in_results()
    assert_no_secret_in_ledger(pg_connect)
