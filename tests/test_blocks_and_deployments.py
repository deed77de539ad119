"""Connections from saved Prefect blocks, and the deployments in prefect.yaml."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import httpx

from tests.prefect_support import deploy_all
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations

ROOT = Path(__file__).resolve().parent.parent


def test_migration_with_saved_blocks(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    from blocks.postgres.target import PostgresTarget
    from deployments.register_blocks import register
    from flows.migrate import migrate

    assert "migration-postgres-target" in register()
    suffix = secrets.token_hex(3)
    PostgresTarget(
        host="127.0.0.1",
        port=servers["pg"].port,
        dbname=pg_database,
        user="postgres",
        password=os.environ["PGPASSWORD"],
    ).save(f"pg-{suffix}")
    SnowflakeConnector(
        credentials=SnowflakeCredentials(account="fakesnow", user="fake", password="snow"),
        database="ANALYTICS",
        schema="PUBLIC",
        warehouse="WH",
    ).save(f"sf-{suffix}")
    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000}],
        source={
            "block": f"sf-{suffix}",
            "account": None,
            "user": None,
            "password_env": None,
            "database": None,
            "schema": None,
        },
        target={"block": f"pg-{suffix}", "password_env": None},
        extra={"keep_staged_files": False},
    )
    report = migrate(source_name="analytics", migrations_file=str(path))
    assert report.rows == 3_000
    staging = tmp_path / "staging"
    assert staging.is_dir() and not (staging / report.job_id).exists()  # keep_staged_files: false
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)


def test_prefect_yaml_deploys(servers):
    done = deploy_all()
    assert done.returncode == 0, done.stdout + done.stderr
    api = os.environ["PREFECT_API_URL"]
    for name, source_name in [
        ("analytics", "analytics"),
        ("conflict", "conflict"),
        ("energy", "energy"),
        ("energy-live", "energy_live"),
    ]:
        deployment = httpx.get(f"{api}/deployments/name/migrate/{name}").json()
        assert deployment["entrypoint"] == "flows/migrate.py:migrate"
        assert deployment["parameters"] == {"source_name": source_name}
        assert deployment["work_pool_name"] == "migrations"
    nightly = httpx.get(f"{api}/deployments/name/migrate/page-views-nightly").json()
    assert nightly["parameters"] == {"source_name": "page_views_daily", "window": "previous_day"}
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and not schedule["active"]
    backfill = httpx.get(f"{api}/deployments/name/migrate/customers-sync").json()
    assert backfill["parameters"] == {"source_name": "customers_sync"} and not backfill["schedules"]
    catch_up = httpx.get(f"{api}/deployments/name/migrate/customers-catch-up").json()
    assert catch_up["parameters"] == {"source_name": "customers_sync", "catch_up": True}
    (schedule,) = catch_up["schedules"]
    assert schedule["schedule"]["interval"] == 900 and not schedule["active"]
    by_job = httpx.get(f"{api}/deployments/name/rollback/by-job").json()
    assert by_job["entrypoint"] == "flows/rollback.py:rollback" and by_job["work_pool_name"] == "migrations"
    verify = httpx.get(f"{api}/deployments/name/verify/by-job").json()
    assert verify["entrypoint"] == "flows/verify.py:verify" and verify["work_pool_name"] == "migrations"
