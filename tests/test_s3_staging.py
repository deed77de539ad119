"""Staging in S3 (moto's server): inline settings and a saved prefect-aws S3Bucket block."""

from __future__ import annotations

import io
import os
import secrets

import boto3
import pyarrow.parquet as pq
import pytest

from tests.support import assert_same_rows, source_rows, target_rows, write_migrations


@pytest.fixture
def bucket(servers):
    name = "staging-" + secrets.token_hex(4)
    client = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{servers['moto'].port}", region_name="us-east-1"
    )
    client.create_bucket(Bucket=name)
    return client, name


def migrate_page_views(tmp_path, servers, pg_database, staging, job_id):
    from flows.migrate import migrate

    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "PAGE_VIEWS", "chunk_column": "VIEWED_AT", "chunk_interval": "1d"}],
        staging=staging,
    )
    return migrate(source_name="analytics", migrations_file=str(path), job_id=job_id)


def check_staged_and_loaded(client, bucket_name, prefix, report, pg_connect, snowflake_kwargs):
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket_name)["Contents"])
    expected = sorted(f"{prefix}{report.job_id}/PAGE_VIEWS/{c.chunk_id}.parquet" for c in report.chunks)
    assert keys == expected
    staged_rows = sum(
        pq.read_table(io.BytesIO(client.get_object(Bucket=bucket_name, Key=k)["Body"].read())).num_rows
        for k in keys
    )
    names, rows = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "PAGE_VIEWS", "VIEW_ID")
    assert staged_rows == len(rows) == report.rows
    assert_same_rows(rows, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)


def test_inline_s3_staging(tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source, bucket):
    client, name = bucket
    staging = {
        "type": "s3",
        "bucket": name,
        "prefix": "runs/",
        "region": "us-east-1",
        "endpoint_url": f"http://127.0.0.1:{servers['moto'].port}",
        "access_key_id_env": "AWS_ACCESS_KEY_ID",
        "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
    }
    report = migrate_page_views(tmp_path, servers, pg_database, staging, "s3-inline")
    assert report.chunks and all(c.bytes > 0 for c in report.chunks)
    check_staged_and_loaded(client, name, "runs/", report, pg_connect, snowflake_kwargs)


def test_s3_bucket_block_staging(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source, bucket
):
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    client, name = bucket
    block_name = "staging-" + secrets.token_hex(3)
    S3Bucket(
        bucket_name=name,
        bucket_folder="blockfolder",
        credentials=AwsCredentials(
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(
                endpoint_url=f"http://127.0.0.1:{servers['moto'].port}"
            ),
        ),
    ).save(block_name)
    report = migrate_page_views(
        tmp_path, servers, pg_database, {"type": "s3", "bucket_block": block_name}, "s3-block"
    )
    check_staged_and_loaded(client, name, "blockfolder/", report, pg_connect, snowflake_kwargs)


def test_unreachable_s3_staging_touches_nothing(tmp_path, servers, pg_database, pg_connect, demo_source):
    from blocks.errors import ConnectionCheckError
    from devstack.servers import free_port

    staging = {
        "type": "s3",
        "bucket": "no-such-bucket",
        "region": "us-east-1",
        "endpoint_url": f"http://127.0.0.1:{servers['moto'].port}",
        "access_key_id_env": "AWS_ACCESS_KEY_ID",
        "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
    }
    with pytest.raises(
        ConnectionCheckError, match="staging: cannot reach S3 staging bucket s3://no-such-bucket"
    ):
        migrate_page_views(tmp_path, servers, pg_database, staging, "s3-missing")
    staging["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionCheckError, match="staging:"):
        migrate_page_views(tmp_path, servers, pg_database, staging, "s3-down")
    with pg_connect() as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'migration_status'"
        ).fetchone() == (0,)
