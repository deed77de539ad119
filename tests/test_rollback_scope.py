"""Rollback never touches data outside the job's scope.

It removes the rows the job's load transactions wrote and nothing else: another job's rows in
the same table, and a table of the same name in another schema, stay exactly as they were.
A job that overwrote rows that were there before it (upsert), or truncated them away
(replace), cannot give them back: its rollback refuses unless forced, naming the tables and
how many such rows there are.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from blocks.errors import TargetGuardError
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations

CUSTOMERS = {"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000}
PAGE_VIEWS = {"name": "PAGE_VIEWS", "chunk_column": "VIEWED_AT", "chunk_interval": "1d"}
CUSTOMERS_DDL = (
    "CREATE TABLE analytics.customers (customer_id bigint{key}, name text, balance numeric(12,2), "
    "updated_at timestamp)"
)


def rows(pg_connect, sql: str) -> list[tuple]:
    with pg_connect() as conn:
        return conn.execute(sql).fetchall()


def customers_table(pg_connect, key: bool, before: list[tuple]) -> None:
    """analytics.customers as someone else left it: with `before` rows (id, name) in it."""
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute(CUSTOMERS_DDL.format(key=" PRIMARY KEY" if key else ""))
        for customer_id, name in before:
            conn.execute("INSERT INTO analytics.customers VALUES (%s, %s, 1.00, now())", (customer_id, name))


def run_status(pg_connect, job_id: str) -> str:
    with pg_connect() as conn:
        return conn.execute(
            "SELECT status FROM migration_status.migration_runs WHERE job_id = %s", (job_id,)
        ).fetchone()[0]


def test_upsert_rollback_refuses_when_the_job_overwrote_existing_rows(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from flows.migrate import migrate
    from flows.rollback import rollback

    before = [
        (7, "before seven"),
        (1500, "before 1500"),
        (2999, "before 2999"),
        (999_999, "not in the source"),
    ]
    customers_table(pg_connect, key=True, before=before)
    table = {**CUSTOMERS, "load_mode": "upsert", "primary_key": ["CUSTOMER_ID"]}
    path = write_migrations(tmp_path / "m.yaml", servers, pg_database, [table], name="conflict")
    report = migrate(source_name="conflict", job_id="upsert-rb", migrations_file=str(path))
    assert report.rows == 3000
    loaded = rows(pg_connect, "SELECT * FROM analytics.customers ORDER BY customer_id")

    with pytest.raises(TargetGuardError) as refused:
        rollback(job_id="upsert-rb", source_name="conflict", migrations_file=str(path))
    assert str(refused.value) == (
        "refusing to roll back job upsert-rb: it changed rows that were in the target before it\n"
        "  analytics.customers: the job (upsert) updated 3 rows that existed before it; rolling back "
        "deletes them, and their old values cannot be restored\n"
        "Pass force=true to roll back anyway (the job's rows go, those rows stay lost), "
        "or keep the job and correct the target by hand"
    )
    assert rows(pg_connect, "SELECT * FROM analytics.customers ORDER BY customer_id") == loaded
    assert run_status(pg_connect, "upsert-rb") == "completed"

    forced = rollback(job_id="upsert-rb", source_name="conflict", migrations_file=str(path), force=True)
    (result,) = forced.tables
    assert (result["rows_deleted"], result["rows_kept"], result["dropped"]) == (3000, 1, False)
    assert rows(pg_connect, "SELECT customer_id, name FROM analytics.customers") == [
        (999_999, "not in the source")
    ]
    assert run_status(pg_connect, "upsert-rb") == "rolled_back"


def test_upsert_rollback_that_only_inserted_goes_ahead(
    tmp_path, servers, pg_database, pg_connect, demo_source
):
    """Rows the upsert did not touch (keys outside the source) do not make it refuse."""
    from flows.migrate import migrate
    from flows.rollback import rollback

    customers_table(pg_connect, key=True, before=[(999_999, "not in the source")])
    table = {**CUSTOMERS, "load_mode": "upsert", "primary_key": ["CUSTOMER_ID"]}
    path = write_migrations(tmp_path / "m.yaml", servers, pg_database, [table], name="conflict")
    migrate(source_name="conflict", job_id="upsert-new", migrations_file=str(path))
    result = rollback(job_id="upsert-new", source_name="conflict", migrations_file=str(path))
    assert result.tables[0]["rows_deleted"] == 3000
    assert rows(pg_connect, "SELECT customer_id, name FROM analytics.customers") == [
        (999_999, "not in the source")
    ]


def test_replace_rollback_refuses_after_truncating_rows(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from flows.migrate import migrate
    from flows.rollback import rollback

    customers_table(pg_connect, key=False, before=[(7, "before seven"), (1500, "before 1500")])
    table = {**CUSTOMERS, "load_mode": "replace", "allow_truncate_foreign_rows": True}
    path = write_migrations(tmp_path / "m.yaml", servers, pg_database, [table], name="conflict")
    migrate(source_name="conflict", job_id="replace-rb", migrations_file=str(path))
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)

    with pytest.raises(TargetGuardError) as refused:
        rollback(job_id="replace-rb", source_name="conflict", migrations_file=str(path))
    message = str(refused.value)
    assert message.startswith("refusing to roll back job replace-rb:")
    assert (
        "analytics.customers: the job (replace) truncated the table before loading; the 2 rows it removed "
        "cannot be restored" in message
    )
    assert "force=true" in message
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)

    forced = rollback(job_id="replace-rb", source_name="conflict", migrations_file=str(path), force=True)
    assert forced.tables[0]["rows_deleted"] == 3000 and not forced.tables[0]["dropped"]
    assert rows(pg_connect, "SELECT count(*) FROM analytics.customers") == [(0,)]


def test_two_append_jobs_in_one_table_each_roll_back_only_their_own_rows(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    """Two jobs append disjoint windows of PAGE_VIEWS to analytics.page_views; other.page_views
    (same name, another schema) holds rows of its own, in the same key range."""
    from flows.migrate import migrate
    from flows.rollback import rollback

    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA other")
        conn.execute(
            "CREATE TABLE other.page_views AS SELECT 1::numeric AS view_id, now()::timestamp AS viewed_at"
        )
        conn.execute(
            "INSERT INTO other.page_views SELECT g, timestamp '2024-03-01' + g * interval '17 s' "
            "FROM generate_series(2, 500) g"
        )
    other_before = rows(pg_connect, "SELECT * FROM other.page_views ORDER BY view_id")
    path = write_migrations(tmp_path / "m.yaml", servers, pg_database, [PAGE_VIEWS], name="conflict")
    first = migrate(
        source_name="conflict",
        job_id="pv-first",
        start_time="2024-03-01T00:00:00Z",
        end_time="2024-03-03T00:00:00Z",
        migrations_file=str(path),
    )
    second = migrate(
        source_name="conflict",
        job_id="pv-second",
        start_time="2024-03-03T00:00:00Z",
        end_time="2024-03-06T00:00:00Z",
        migrations_file=str(path),
    )
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "PAGE_VIEWS", "VIEW_ID")
    at = names.index("viewed_at")
    split = datetime(2024, 3, 3)
    first_rows = [r for r in expected if r[at] < split]
    second_rows = [r for r in expected if r[at] >= split]
    assert (first.rows, second.rows) == (len(first_rows), len(second_rows))
    assert first.rows and second.rows
    assert_same_rows(expected, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)

    undone = rollback(job_id="pv-first", source_name="conflict", migrations_file=str(path))
    (table,) = undone.tables
    assert (table["rows_deleted"], table["rows_kept"], table["dropped"]) == (first.rows, second.rows, False)
    assert_same_rows(second_rows, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)
    assert rows(pg_connect, "SELECT * FROM other.page_views ORDER BY view_id") == other_before

    undone = rollback(job_id="pv-second", source_name="conflict", migrations_file=str(path))
    assert undone.tables[0]["rows_deleted"] == second.rows
    assert rows(pg_connect, "SELECT count(*) FROM analytics.page_views") == [(0,)]
    assert rows(pg_connect, "SELECT * FROM other.page_views ORDER BY view_id") == other_before
    assert (run_status(pg_connect, "pv-first"), run_status(pg_connect, "pv-second")) == ("rolled_back",) * 2
