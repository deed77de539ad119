"""Catch-up runs: a backfill, then runs that move only what changed since the last high-water
mark (inserts, updates that bump the cursor, rows committed late inside the lookback),
upserted on the key, with the target equal to the source value by value after each, and a
run with nothing changed loading nothing. A catch-up is refused while its backfill is
unfinished."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.support import assert_same_rows, own_snowflake_database, source_rows, target_rows, write_migrations

ROWS = 300
NAMES = ["id", "name", "amount", "updated_at"]
START = datetime(2024, 1, 1)
HIGH = START + timedelta(minutes=ROWS)  # the newest UPDATED_AT after the seed


@pytest.fixture
def orders(snowflake_kwargs, servers):
    """A fresh ORDERS table (ID, NAME, AMOUNT, UPDATED_AT: row i at START + i minutes); yields
    a migrations-file writer, `run(sql)` on the source and a reader of the source's rows."""
    with own_snowflake_database(snowflake_kwargs) as (database, run):
        run("CREATE TABLE ORDERS (ID INTEGER, NAME VARCHAR, AMOUNT NUMBER(10, 2), UPDATED_AT TIMESTAMP_NTZ)")
        values = ", ".join(
            f"({i}, 'order {i}', {i}.50, '2024-01-01 00:00:00'::timestamp + INTERVAL '{i} minutes')"
            for i in range(1, ROWS + 1)
        )
        run(f"INSERT INTO ORDERS VALUES {values}")

        def migrations(path, pg_database, lookback="10m"):
            table = {
                "name": "ORDERS",
                "chunk_column": "ID",
                "chunk_size": 100,
                "primary_key": ["ID"],
                "incremental": {"cursor_column": "UPDATED_AT", "lookback": lookback},
            }
            return write_migrations(path, servers, pg_database, [table], database=database)

        def source():
            names, rows = source_rows(snowflake_kwargs, database, "PUBLIC", "ORDERS", "ID")
            assert names == NAMES
            return rows

        yield migrations, run, source


def stamp(moment: datetime) -> str:
    return f"'{moment:%Y-%m-%d %H:%M:%S}'::timestamp"


def jobs(pg_connect) -> list[tuple]:
    with pg_connect() as conn:
        return conn.execute(
            "SELECT job_id, status, parameters ? 'catch_up' FROM migration_status.migration_runs ORDER BY started_at"
        ).fetchall()


def marks(pg_connect, job_id: str) -> tuple:
    with pg_connect() as conn:
        return conn.execute(
            "SELECT cursor_column, high_water, window_rows FROM migration_status.migration_marks WHERE job_id = %s",
            (job_id,),
        ).fetchone()


def test_backfill_then_catch_ups_keep_the_target_equal_to_the_source(
    tmp_path, orders, pg_database, pg_connect
):
    from flows.migrate import migrate
    from tasks.catch_up import table_lags
    from tasks.config import load_migration

    migrations, run, source = orders
    path = str(migrations(tmp_path / "m.yaml", pg_database))

    def in_target():
        return target_rows(pg_connect, "analytics.orders", NAMES, "id")

    backfill = migrate(source_name="analytics", migrations_file=path)
    assert backfill.status == "completed" and backfill.rows == ROWS and not backfill.catch_up
    assert_same_rows(source(), in_target(), NAMES)
    # The mark: the cursor's newest value when the backfill planned, and the rows in its lookback
    # window (rows 290..300: HIGH - 10 minutes up to HIGH).
    assert marks(pg_connect, backfill.job_id) == ("UPDATED_AT", HIGH.isoformat(), 11)

    # The source changes: new rows, updates that bump the cursor, and rows committed late with
    # a cursor inside the lookback (a new key, and an update of an existing row).
    newer = HIGH + timedelta(hours=1)
    run(
        "INSERT INTO ORDERS VALUES "
        + ", ".join(f"({i}, 'new {i}', {i}.25, {stamp(newer)})" for i in range(ROWS + 1, ROWS + 21))
    )
    run(
        f"UPDATE ORDERS SET NAME = 'changed', AMOUNT = 0.01, UPDATED_AT = {stamp(newer)} WHERE ID IN (5, 150)"
    )
    late = HIGH - timedelta(minutes=4)
    run(
        f"INSERT INTO ORDERS VALUES (900, 'late', 9.99, {stamp(late)}), (901, 'late too', 1.00, {stamp(late)})"
    )
    run(f"UPDATE ORDERS SET NAME = 'late change', UPDATED_AT = {stamp(late)} WHERE ID = 293")
    spec = load_migration("analytics", Path(path))
    (lag,) = table_lags(spec)
    assert (lag.job_id, lag.high_water, lag.source_max) == (
        backfill.job_id,
        HIGH.isoformat(),
        newer.isoformat(),
    )
    assert lag.lag_seconds == 3600.0

    first = migrate(source_name="analytics", migrations_file=path)
    assert first.status == "completed" and first.job_id != backfill.job_id, first.summary()
    assert "UPDATED_AT from" in first.catch_up and backfill.job_id in first.catch_up
    assert_same_rows(source(), in_target(), NAMES)
    # It moved exactly the rows whose cursor is in [HIGH - 10 min, newest]: no more.
    window = [r for r in source() if r[3] >= HIGH - timedelta(minutes=10)]
    assert first.rows == len(window) == 11 + 20 + 2 + 2  # 293 was in the window already
    with pg_connect() as conn:
        total, keys = conn.execute("SELECT count(*), count(DISTINCT id) FROM analytics.orders").fetchone()
    assert total == keys == ROWS + 22
    assert marks(pg_connect, first.job_id) == ("UPDATED_AT", newer.isoformat(), 22)
    assert table_lags(spec)[0].lag_seconds == 0.0

    # Nothing changed: the next catch-up loads nothing and starts no job.
    before = jobs(pg_connect)
    idle = migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert idle.up_to_date and idle.rows == 0 and not idle.chunks, idle.summary()
    assert "up to date" in idle.summary() and first.job_id in idle.summary()
    assert jobs(pg_connect) == before
    assert_same_rows(source(), in_target(), NAMES)

    # A row committed late, inside the lookback, with no newer row: the window's count moved.
    run(f"INSERT INTO ORDERS VALUES (902, 'very late', 2.00, {stamp(newer - timedelta(minutes=2))})")
    second = migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert not second.up_to_date and second.rows == 23, second.summary()
    assert_same_rows(source(), in_target(), NAMES)
    assert [(s, c) for _, s, c in jobs(pg_connect)] == [("completed", False)] + [("completed", True)] * 2


def test_catch_up_is_refused_until_the_backfill_completed(tmp_path, orders, pg_database, pg_connect):
    from blocks.errors import TargetGuardError
    from flows.migrate import migrate

    migrations, _, source = orders
    path = str(migrations(tmp_path / "m.yaml", pg_database))
    with pytest.raises(TargetGuardError, match="has no backfill yet"):
        migrate(source_name="analytics", migrations_file=path, catch_up=True)

    # The backfill fails on one chunk: the target refuses ID 150.
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute(
            "CREATE TABLE analytics.orders (id bigint PRIMARY KEY CHECK (id <> 150), name text, "
            "amount numeric(10,2), updated_at timestamp)"
        )
    with pytest.raises(Exception, match="failed"):
        migrate(source_name="analytics", migrations_file=path)
    ((backfill, status, _),) = jobs(pg_connect)
    assert status == "failed"
    with pytest.raises(
        TargetGuardError, match=rf"its backfill, job {backfill} \(failed, \d/3 chunks loaded\), is unfinished"
    ):
        migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert jobs(pg_connect) == [(backfill, "failed", False)]

    # Fixed, a run without catch_up resumes the backfill; then catch-ups follow it.
    with pg_connect() as conn:
        conn.execute("ALTER TABLE analytics.orders DROP CONSTRAINT orders_id_check")
    done = migrate(source_name="analytics", migrations_file=path)
    assert done.job_id == backfill and done.status == "completed" and done.resumed
    assert_same_rows(source(), target_rows(pg_connect, "analytics.orders", NAMES, "id"), NAMES)
    assert migrate(source_name="analytics", migrations_file=path, catch_up=True).up_to_date
