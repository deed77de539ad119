"""Load modes: append (default, see the analytics tests), upsert and replace with its guard."""

from __future__ import annotations

import secrets

import pytest
import snowflake.connector

from blocks.errors import DataConversionError
from blocks.postgres.target import PostgresTarget
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations


@pytest.fixture
def own_source(snowflake_kwargs, demo_source):
    """A private Snowflake database with a CUSTOMERS copy this test may change."""
    database = "SRC_" + secrets.token_hex(4).upper()
    conn = snowflake.connector.connect(**snowflake_kwargs)
    cur = conn.cursor()
    cur.execute(f"CREATE DATABASE {database}")
    cur.execute(f"CREATE SCHEMA {database}.PUBLIC")
    cur.execute(f"CREATE TABLE {database}.PUBLIC.CUSTOMERS AS SELECT * FROM ANALYTICS.PUBLIC.CUSTOMERS")

    def run(sql: str) -> None:
        cur.execute(sql.replace("{db}", database))

    yield database, run
    conn.close()


def customers_file(tmp_path, servers, pg_database, database, **table):
    spec = {"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000, **table}
    return write_migrations(
        tmp_path / "migrations.yaml", servers, pg_database, [spec], name="conflict", database=database
    )


def check_exact(snowflake_kwargs, database, pg_connect):
    names, expected = source_rows(snowflake_kwargs, database, "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)


def test_upsert_updates_rows_in_place(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, own_source
):
    from flows.migrate import migrate

    database, run = own_source
    path = customers_file(
        tmp_path, servers, pg_database, database, load_mode="upsert", primary_key=["CUSTOMER_ID"]
    )
    migrate(source_name="conflict", migrations_file=str(path))
    check_exact(snowflake_kwargs, database, pg_connect)

    run(
        "UPDATE {db}.PUBLIC.CUSTOMERS SET NAME = 'renamed ' || NAME, BALANCE = BALANCE + 1 WHERE MOD(CUSTOMER_ID, 3) = 0"
    )
    run("INSERT INTO {db}.PUBLIC.CUSTOMERS VALUES (999999, 'new one', 1.25, '2025-01-01 00:00:00')")
    report = migrate(source_name="conflict", migrations_file=str(path), no_resume=True)
    assert report.status == "completed" and not report.resumed
    check_exact(snowflake_kwargs, database, pg_connect)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.customers").fetchone() == (3_001,)
        constraint = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'analytics.customers'::regclass "
            "AND contype = 'p'"
        ).fetchone()
    assert constraint == ("PRIMARY KEY (customer_id)",)


def test_upsert_refuses_duplicate_keys_within_a_chunk(tmp_path, servers, pg_database, pg_connect, own_source):
    from flows.migrate import migrate

    database, run = own_source
    run("INSERT INTO {db}.PUBLIC.CUSTOMERS VALUES (5, 'duplicate of five', 0, '2025-01-01 00:00:00')")
    path = customers_file(
        tmp_path, servers, pg_database, database, load_mode="upsert", primary_key=["CUSTOMER_ID"]
    )
    with pytest.raises(RuntimeError, match=r"holds the same \['customer_id'\] more than once"):
        migrate(source_name="conflict", migrations_file=str(path))
    with pg_connect() as conn:  # the failing chunk left nothing behind
        first_chunk = conn.execute(
            "SELECT count(*) FROM analytics.customers WHERE customer_id < 1001"
        ).fetchone()
    assert first_chunk == (0,)


def test_replace_reloads_what_this_migration_wrote(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, own_source
):
    from flows.migrate import migrate

    database, run = own_source
    path = customers_file(tmp_path, servers, pg_database, database, load_mode="replace")
    migrate(source_name="conflict", migrations_file=str(path))
    run("DELETE FROM {db}.PUBLIC.CUSTOMERS WHERE CUSTOMER_ID > 2500")
    run("UPDATE {db}.PUBLIC.CUSTOMERS SET NAME = NULL WHERE CUSTOMER_ID < 10")
    migrate(source_name="conflict", migrations_file=str(path), no_resume=True)
    check_exact(snowflake_kwargs, database, pg_connect)


def test_replace_guard_refuses_foreign_rows(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, own_source
):
    from flows.migrate import migrate

    database, _ = own_source
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute(
            "CREATE TABLE analytics.customers (customer_id bigint, name text, balance numeric(12,2), "
            "updated_at timestamp)"
        )
        conn.execute("INSERT INTO analytics.customers VALUES (-1, 'written by someone else', 0, now())")
    path = customers_file(tmp_path, servers, pg_database, database, load_mode="replace")
    with pytest.raises(RuntimeError, match="holds 1 rows but migration 'conflict' wrote only 0"):
        migrate(source_name="conflict", migrations_file=str(path))
    with pg_connect() as conn:
        assert conn.execute("SELECT customer_id, name FROM analytics.customers").fetchall() == [
            (-1, "written by someone else")
        ]

    allowed = customers_file(
        tmp_path, servers, pg_database, database, load_mode="replace", allow_truncate_foreign_rows=True
    )
    migrate(source_name="conflict", migrations_file=str(allowed))
    check_exact(snowflake_kwargs, database, pg_connect)


def test_replace_guard_refuses_while_a_resumable_job_is_unfinished(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, own_source, monkeypatch
):
    from flows.migrate import migrate

    database, _ = own_source
    path = customers_file(tmp_path, servers, pg_database, database, load_mode="replace")
    migrate(source_name="conflict", migrations_file=str(path))

    real_load = PostgresTarget.load_chunk

    def failing(self, **kwargs):
        if kwargs["chunk_id"].startswith("00001"):
            raise DataConversionError("injected")
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", failing)
    with pytest.raises(RuntimeError):
        migrate(
            source_name="conflict", job_id="unfinished-replace", migrations_file=str(path), no_resume=True
        )
    monkeypatch.setattr(PostgresTarget, "load_chunk", real_load)
    with pg_connect() as conn:
        partial = conn.execute("SELECT count(*) FROM analytics.customers").fetchone()[0]
    assert 0 < partial < 3_000

    with pytest.raises(RuntimeError, match="job unfinished-replace .* is unfinished and can still resume"):
        migrate(source_name="conflict", migrations_file=str(path), no_resume=True)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.customers").fetchone()[0] == partial

    migrate(source_name="conflict", job_id="unfinished-replace", migrations_file=str(path))
    check_exact(snowflake_kwargs, database, pg_connect)


def test_existing_table_missing_a_column_is_refused(tmp_path, servers, pg_database, pg_connect, own_source):
    from flows.migrate import migrate

    database, _ = own_source
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute("CREATE TABLE analytics.customers (customer_id bigint, name text)")
    path = customers_file(tmp_path, servers, pg_database, database)
    with pytest.raises(RuntimeError, match=r"lacks column\(s\) \['balance', 'updated_at'\]"):
        migrate(source_name="conflict", migrations_file=str(path))


def test_append_refuses_a_range_another_job_loaded(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    """PAGE_VIEWS has no primary key: only the ledger stands between a second job and duplicates."""
    from flows.migrate import migrate

    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "PAGE_VIEWS", "chunk_column": "VIEWED_AT", "chunk_interval": "1d"}],
    )
    first = migrate(source_name="analytics", migrations_file=str(path), end_time="2024-03-03T00:00:00Z")
    with pytest.raises(
        RuntimeError, match=rf"job {first.job_id} \(completed\) already loaded VIEWED_AT in"
    ) as refused:
        migrate(source_name="analytics", migrations_file=str(path), start_time="2024-03-02T12:00:00Z")
    assert "resume" not in str(refused.value).lower()  # the other job is completed: nothing to resume
    assert f"rollback/by-job -p job_id={first.job_id}" in str(refused.value)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.page_views").fetchone() == (first.rows,)
        # The refused attempt left no failed job behind in the ledger.
        jobs = conn.execute("SELECT job_id, status FROM migration_status.migration_runs").fetchall()
    assert jobs == [(first.job_id, "completed")]

    migrate(source_name="analytics", migrations_file=str(path), start_time="2024-03-03T00:00:00Z")
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "PAGE_VIEWS", "VIEW_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)
