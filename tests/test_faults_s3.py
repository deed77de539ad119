"""S3 staging failing in the middle of a migration, against a private moto server: moto stopped
and restarted (its buckets and files are gone after a restart, as on a fresh server), and moto
behind a `FaultProxy` that answers 503 or goes away. The retries recover, or the run fails
naming the staging location and a rerun finishes; either way InfluxDB ends up holding exactly
the source's points. No error message holds a secret.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

import boto3
import psycopg
import pytest

from blocks.staging.s3 import S3Staging
from devstack.servers import start_moto
from tests.energy_support import (
    FIELDS,
    FLOAT_KEYS,
    TAGS,
    assert_same_points,
    expected_points,
    influx_migrations,
    single_measure_records,
    stored,
    write_files,
)
from tests.fault_proxy import FaultProxy
from tests.test_resume import ledger

DAYS = 5


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A moto server of this module's own (the session's keeps Timestream fakes that a restart
    would lose): {"service", "log"}; a test that restarts it puts the new service here."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    box = {"service": start_moto(log), "log": log}
    yield box
    box["service"].stop()


@pytest.fixture
def aws_keys(monkeypatch) -> list[str]:
    """Keys of this test's own, so that a message holding one would be caught."""
    keys = ["AKIA" + secrets.token_hex(8).upper(), "fault-secret-" + secrets.token_hex(12)]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[1])
    return keys


def s3_client(port: int):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")


def energy_job(tmp_path, servers, pg_database, influx_database, staging: dict, retries: dict):
    """(migrations file, source records): five daily chunks, one at a time, S3 staging."""
    records = single_measure_records(2_500, days=DAYS)
    write_files(tmp_path / "unload" / "generation_data", records)
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [
            {
                "name": "generation_data",
                "chunk_column": "time",
                "chunk_interval": "1d",
                "mapping": {"tags": TAGS},
            }
        ],
        # copied into staging (read in place, the files would never reach S3 staging)
        source={"type": "parquet", "location": str(tmp_path / "unload"), "read_in_place": False},
        extra={"concurrency": 1, "retries": retries, "staging": staging},
    )
    return path, records


def s3_staging(bucket: str, endpoint_url: str) -> dict:
    return {
        "type": "s3",
        "bucket": bucket,
        "prefix": "runs/",
        "region": "us-east-1",
        "endpoint_url": endpoint_url,
        "access_key_id_env": "AWS_ACCESS_KEY_ID",
        "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
    }


def secrets_in(text: str, aws_keys: list[str]) -> list[str]:
    values = [*aws_keys, os.environ["INFLUX_PASSWORD"], os.environ["PGPASSWORD"]]
    return [v for v in values if v in text]


def loaded_chunks(pg_connect, job_id: str) -> list[str]:
    try:
        return sorted(cid for cid, (status, *_) in ledger(pg_connect, job_id).items() if status == "loaded")
    except psycopg.errors.UndefinedTable:
        return []


def assert_exact(servers, influx_database, records) -> None:
    got, _ = stored(servers, influx_database)
    assert len(got) == records.num_rows  # one point per source row: nothing lost or doubled
    assert_same_points(got, expected_points(records, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)


def test_moto_restarted_mid_run_the_retries_recover_with_exact_data(
    tmp_path, servers, pg_database, pg_connect, influx_database, moto, aws_keys, monkeypatch
):
    """moto stops as chunk 2's file is about to be uploaded (chunks 0 and 1 are loaded), and
    comes back on the same port once an upload has failed; the bucket is made again, because a
    restarted moto has none. The export's retries span the outage and the run completes."""
    from flows.migrate import migrate

    port = moto["service"].port
    bucket = "fault-restart-" + secrets.token_hex(4)
    s3_client(port).create_bucket(Bucket=bucket)
    retries = {"attempts": 6, "delay_seconds": 0.5, "jitter": 0.1}  # about 30 s of backoff in all
    path, records = energy_job(
        tmp_path,
        servers,
        pg_database,
        influx_database,
        s3_staging(bucket, f"http://127.0.0.1:{port}"),
        retries,
    )
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # boto3's own retries: one, so the test is quick
    job_id = "s3-restart-" + secrets.token_hex(3)
    real_write = S3Staging.write
    failures: list[str] = []
    upload_failed = threading.Event()
    seen = {}

    def write_with_outage(self, key, schema, batches):
        if key.split("/")[-1].startswith("00002-") and not seen:
            seen["loaded"] = loaded_chunks(pg_connect, job_id)
            moto["service"].stop()
        try:
            return real_write(self, key, schema, batches)
        except Exception as exc:
            failures.append(str(exc))
            upload_failed.set()
            raise

    def restart_after_a_failed_upload():
        if upload_failed.wait(timeout=120):
            moto["service"] = start_moto(moto["log"], port=port)
            s3_client(port).create_bucket(Bucket=bucket)

    restarter = threading.Thread(target=restart_after_a_failed_upload, daemon=True)
    restarter.start()
    monkeypatch.setattr(S3Staging, "write", write_with_outage)
    try:
        report = migrate(source_name="energy", job_id=job_id, migrations_file=str(path))
    finally:
        upload_failed.set()
        restarter.join(timeout=120)

    assert len(seen["loaded"]) == 2  # the outage began after two chunks were loaded
    assert failures, "the outage did not hit an upload"
    for failure in failures:
        assert (
            f"cannot reach S3 staging bucket s3://{bucket}/runs/ while uploading s3://{bucket}/runs/"
            in failure
        )
        assert not secrets_in(failure, aws_keys)
    assert report.status == "completed" and len(report.chunks) == DAYS
    assert report.rows == records.num_rows and not report.resumed
    assert len(loaded_chunks(pg_connect, job_id)) == DAYS
    assert_exact(servers, influx_database, records)
    # moto lost chunks 0 and 1's files with its restart; the files written since are there
    keys = sorted(o["Key"] for o in s3_client(port).list_objects_v2(Bucket=bucket).get("Contents", []))
    chunk_ids = sorted(c.chunk_id for c in report.chunks)
    assert keys == [f"runs/{job_id}/generation_data/{cid}.parquet" for cid in chunk_ids[2:]]


@pytest.mark.parametrize("fault", ["503", "down"])
def test_staging_failing_for_good_fails_the_run_naming_it_and_a_rerun_is_exact(
    tmp_path, servers, pg_database, pg_connect, influx_database, moto, aws_keys, monkeypatch, fault
):
    """After chunk 0 is loaded, every request for the job's staged files answers 503 (boto3
    retries those too) or the endpoint goes away. The export of chunk 1 gives up, the run fails
    naming the staging bucket, and a rerun once S3 is back resumes and finishes exactly."""
    from flows.migrate import migrate

    port = moto["service"].port
    bucket = "fault-" + fault + "-" + secrets.token_hex(4)
    s3_client(port).create_bucket(Bucket=bucket)
    with FaultProxy(port) as proxy:
        path, records = energy_job(
            tmp_path,
            servers,
            pg_database,
            influx_database,
            s3_staging(bucket, proxy.url),
            {"attempts": 1, "delay_seconds": 0.2, "jitter": 0.1},
        )
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        job_id = "s3-" + fault + "-" + secrets.token_hex(3)
        after_chunk_0 = {"when": lambda: bool(loaded_chunks(pg_connect, job_id)), "path": f"/{bucket}/runs/"}
        if fault == "503":
            proxy.fail_requests(503, **after_chunk_0)
        else:
            proxy.down_when(after_chunk_0["when"], path=after_chunk_0["path"])

        started = time.monotonic()
        state = migrate(source_name="energy", job_id=job_id, migrations_file=str(path), return_state=True)
        assert state.is_failed() and time.monotonic() - started < 60
        message = str(state.result(raise_on_failure=False))
        where = (
            f"cannot reach S3 staging bucket s3://{bucket}/runs/ while uploading s3://{bucket}/runs/{job_id}"
        )
        assert "export generation_data/00001-" in message and "gave up after 2 attempts" in message
        assert where in message
        assert ("(503)" if fault == "503" else "Could not connect to the endpoint URL") in message
        assert not secrets_in(message, aws_keys)
        assert len(loaded_chunks(pg_connect, job_id)) == 1
        if fault == "503":  # every attempt reached S3 and was turned away; nothing was staged
            assert len(proxy.requests(f"/{bucket}/runs/{job_id}/generation_data/", outcome="503")) >= 2
        with pg_connect() as conn:
            (error,) = conn.execute(
                "SELECT error FROM migration_status.migration_runs WHERE job_id = %s", (job_id,)
            ).fetchone()
        assert where in error and not secrets_in(error, aws_keys)

        proxy.heal()
        proxy.up()
        report = migrate(source_name="energy", job_id=job_id, migrations_file=str(path))
    assert report.status == "completed" and report.resumed and len(report.chunks) == DAYS
    assert_exact(servers, influx_database, records)
