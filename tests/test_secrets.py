"""Secrets never reach logs, artifacts, persisted results, the ledger, parameters or exceptions."""

from __future__ import annotations

import os
import secrets
import time
import traceback
from pathlib import Path

import boto3
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


def assert_no_secret(texts: list[str], where: str) -> None:
    for secret in secret_values():
        for text in texts:
            assert secret not in text, f"a secret value appears in {where}: ...{text[:200]}"


def test_no_secret_in_logs_artifacts_results_or_ledger(
    tmp_path, servers, pg_database, pg_connect, demo_source
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
    assert_no_secret(flow_run_texts(state.state_details.flow_run_id), "the Prefect API")

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


def test_no_secret_in_a_failure(tmp_path, servers, pg_database, demo_source, monkeypatch):
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
    texts = flow_run_texts(state.state_details.flow_run_id) + [text, state.message or ""]
    assert_no_secret(texts, "a failed run")
    assert not [t for t in texts if os.environ["WRONG_PGPASSWORD"] in t], "the wrong password leaked"
