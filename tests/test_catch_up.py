"""Catch-up runs: a backfill, then runs that move only what changed since the last high-water
mark (inserts, updates that bump the cursor, rows committed late inside the lookback),
upserted on the key, with the target equal to the source value by value after each, and a
run with nothing changed loading nothing. A catch-up is refused while its backfill is
unfinished."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

# Imported before any test captures output: Prefect's console log handler keeps the stream it
# first sees, and a test's capsys stream is closed once that test ends.
from flows.cli import main as cli
from flows.migrate import migrate
from tests.prefect_support import api
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
    tmp_path, orders, pg_database, pg_connect, capsys
):
    from tasks.catch_up_lag import table_lags
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
    # `status` and `jobs` show it.
    assert cli(["status", backfill.job_id, "--migrations-file", path]) == 0
    assert (
        f"lag:        ORDERS: lag 3,600 s (source UPDATED_AT up to {newer.isoformat()}"
        in capsys.readouterr().out
    )
    assert cli(["jobs", "analytics", "--json", "--migrations-file", path]) == 0
    assert json.loads(capsys.readouterr().out)["lags"]["analytics"][0]["lag_seconds"] == 3600.0

    # The dry run shows the catch-up a run would make, and writes nothing.
    from tasks.dry_run import plan_migration

    plan = plan_migration("analytics", path)
    assert plan.job.action == "new" and plan.job.summary.startswith("catch-up (ORDERS: UPDATED_AT from"), plan
    (table,) = plan.tables
    assert (table.chunk_column, table.load_mode, table.target) == ("UPDATED_AT", "upsert", "analytics.orders")
    assert sum(c.estimated_rows for c in table.chunks) == 35 and not plan.refusals
    assert [job for job, _, _ in jobs(pg_connect)] == [backfill.job_id]

    # One catch-up at a time: while another run holds the migration's catch-up lock, a second
    # one stops before it starts a job.
    from tasks.connections import build_ledger

    held = build_ledger(spec).run_lock("catch-up/analytics", "11111111-2222-3333-4444-555555555555")
    assert held.acquire() is None
    try:
        with pytest.raises(
            Exception, match="another catch-up of migration 'analytics' is running in flow run 1111"
        ):
            migrate(source_name="analytics", migrations_file=path)
    finally:
        held.release()
    assert [job for job, _, _ in jobs(pg_connect)] == [backfill.job_id]

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
    newest_report = httpx.post(
        f"{api()}/artifacts/filter",
        json={
            "artifacts": {"key": {"any_": ["migration-report-analytics"]}},
            "sort": "CREATED_DESC",
            "limit": 1,
        },
    ).json()[0]
    assert "Migration 'analytics' is up to date, nothing to load" in newest_report["description"]
    assert jobs(pg_connect) == before
    assert_same_rows(source(), in_target(), NAMES)
    assert plan_migration("analytics", path, catch_up=True).job.action == "up_to_date"
    capsys.readouterr()
    assert cli(["run", "analytics", "--catch-up", "--in-process", "--migrations-file", path]) == 0
    assert "Migration 'analytics' is up to date, nothing to load" in capsys.readouterr().out

    # A row committed late, inside the lookback, with no newer row: the window's count moved.
    run(f"INSERT INTO ORDERS VALUES (902, 'very late', 2.00, {stamp(newer - timedelta(minutes=2))})")
    second = migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert not second.up_to_date and second.rows == 23, second.summary()
    assert_same_rows(source(), in_target(), NAMES)
    assert [(s, c) for _, s, c in jobs(pg_connect)] == [("completed", False)] + [("completed", True)] * 2


def test_catch_up_is_refused_until_the_backfill_completed(tmp_path, orders, pg_database, pg_connect):
    from blocks.errors import TargetGuardError

    migrations, _, source = orders
    path = str(migrations(tmp_path / "m.yaml", pg_database))
    with pytest.raises(TargetGuardError, match="has no backfill yet"):
        migrate(source_name="analytics", migrations_file=path, catch_up=True)
    from tasks.dry_run import plan_migration

    refused = plan_migration("analytics", path, catch_up=True)
    assert refused.job.action == "refused" and "has no backfill yet" in refused.refusals[0]

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


def test_catch_up_of_a_catch_up_rolled_back_starts_from_the_mark_before(
    tmp_path, orders, pg_database, pg_connect
):
    """`verify` re-reads a catch-up job's cursor ranges; rolling a catch-up back removes its rows
    and its mark, so the next catch-up moves them again from the mark before."""
    from flows.rollback import rollback
    from flows.verify import verify

    migrations, run, source = orders
    path = str(migrations(tmp_path / "m.yaml", pg_database))
    backfill = migrate(source_name="analytics", migrations_file=path)
    newer = HIGH + timedelta(hours=2)
    run(f"INSERT INTO ORDERS VALUES (1001, 'new', 1.00, {stamp(newer)}), (1002, 'new', 2.00, {stamp(newer)})")
    run(f"UPDATE ORDERS SET NAME = 'changed', UPDATED_AT = {stamp(newer)} WHERE ID = 7")
    catch_up = migrate(source_name="analytics", migrations_file=path)
    assert catch_up.rows == 11 + 3
    assert verify(job_id=catch_up.job_id, migrations_file=path).same

    # Its upserts overwrote rows of the backfill (row 7, and rows 290..300 in its lookback): the
    # forced rollback removes them, so the backfill is incomplete (those two chunks can load
    # again) and a catch-up waits for it.
    rollback(job_id=catch_up.job_id, migrations_file=path, force=True)
    ids = [r[0] for r in target_rows(pg_connect, "analytics.orders", ["id"], "id")]
    assert 1001 not in ids and 7 not in ids
    with pytest.raises(Exception, match=rf"its backfill, job {backfill.job_id} \(incomplete"):
        migrate(source_name="analytics", migrations_file=path, catch_up=True)
    resumed = migrate(source_name="analytics", migrations_file=path)  # the backfill, whatever its age
    assert resumed.job_id == backfill.job_id and resumed.rows_loaded_now == 200
    again = migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert again.catch_up and backfill.job_id in again.catch_up  # from the backfill's mark
    assert again.rows == catch_up.rows and again.job_id != catch_up.job_id
    assert_same_rows(source(), target_rows(pg_connect, "analytics.orders", NAMES, "id"), NAMES)

    # A row deleted in the source is not seen by a cursor; verify of the backfill finds it, and
    # verify of a catch-up job checks only its own cursor ranges.
    run("DELETE FROM ORDERS WHERE ID = 1")
    assert verify(job_id=again.job_id, migrations_file=path).same
    with pytest.raises(Exception, match=r"ORDERS: 1 extra in the target \(e\.g\. id=1\)"):
        verify(job_id=backfill.job_id, migrations_file=path)


def test_points_catch_up_writes_new_and_late_points_again(tmp_path, servers, pg_database, influx_database):
    """For a time series the cursor is the point time: a catch-up writes the points from the mark
    less the lookback, over the range its backfill claimed (its own migration's), and the
    target then holds exactly the source's points."""
    import pyarrow as pa
    import pyarrow.compute as pc

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
    from tests.test_energy_migration import energy_table

    records = single_measure_records(2_000, days=2)
    folder = tmp_path / "files" / "generation_data"
    write_files(folder, records, files=2)
    table = energy_table(incremental={"lookback": "1h"})
    path = str(
        influx_migrations(
            tmp_path / "m.yaml",
            servers,
            pg_database,
            influx_database,
            [table],
            source={"type": "parquet", "location": str(tmp_path / "files")},
        )
    )
    backfill = migrate(source_name="energy", migrations_file=path)
    assert backfill.status == "completed" and backfill.rows == records.num_rows

    def shifted(part: pa.Table, by_ns: int) -> pa.Table:
        times = pc.add(part.column("time").cast(pa.int64()), by_ns).cast(pa.timestamp("ns", tz="UTC"))
        return part.set_column(part.schema.get_field_index("time"), "time", times)

    last = pc.max(records.column("time")).cast(pa.int64()).as_py()
    newer = shifted(
        single_measure_records(300, days=1, seed=9), last - records.column("time")[0].value + 10**9
    )
    late = shifted(records.slice(0, 40), last - 30 * 60 * 10**9 - records.column("time")[0].value + 1)
    write_files(folder / ".." / "generation_data_more", pa.concat_tables([newer, late]), files=1)
    (folder / ".." / "generation_data_more" / "part-0.parquet").rename(folder / "part-new.parquet")
    everything = pa.concat_tables([records, newer, late])

    first = migrate(source_name="energy", migrations_file=path)
    assert first.catch_up and first.rows >= newer.num_rows + late.num_rows, first.summary()
    got, _ = stored(servers, influx_database)
    assert_same_points(got, expected_points(everything, TAGS, FIELDS, "measure_name", None), FLOAT_KEYS)
    idle = migrate(source_name="energy", migrations_file=path)
    assert idle.up_to_date and idle.rows == 0


def test_an_unfinished_catch_up_is_resumed_not_started_again(tmp_path, orders, pg_database, pg_connect):
    """A catch-up that failed is taken up again by the next run, with its own cursor ranges and
    exactly once, before any new catch-up: one catch-up job in the ledger, then the target
    equals the source."""
    from tasks.dry_run import plan_migration

    migrations, run, source = orders
    path = str(migrations(tmp_path / "m.yaml", pg_database))
    backfill = migrate(source_name="analytics", migrations_file=path)
    with pg_connect() as conn:
        conn.execute("ALTER TABLE analytics.orders ADD CONSTRAINT no_bad CHECK (name <> 'bad')")
    newer = HIGH + timedelta(hours=1)
    run(f"UPDATE ORDERS SET NAME = 'bad', UPDATED_AT = {stamp(newer)} WHERE ID = 150")
    with pytest.raises(Exception, match="failed"):
        migrate(source_name="analytics", migrations_file=path)
    (failed,) = [job for job, _, catch in jobs(pg_connect) if catch]
    # Rows changed meanwhile do not make a new catch-up: the unfinished one goes first.
    run(f"INSERT INTO ORDERS VALUES (700, 'meanwhile', 7.00, {stamp(newer + timedelta(hours=1))})")
    plan = plan_migration("analytics", path, catch_up=True)
    assert plan.job.action == "resume" and plan.job.job_id == failed, plan.job
    with pytest.raises(Exception, match=failed):
        migrate(source_name="analytics", migrations_file=path, catch_up=True)

    with pg_connect() as conn:
        conn.execute("ALTER TABLE analytics.orders DROP CONSTRAINT no_bad")
    resumed = migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert resumed.job_id == failed and resumed.resumed and resumed.status == "completed"
    assert [(s, c) for _, s, c in jobs(pg_connect)] == [("completed", False), ("completed", True)]
    # Row 700 came after the resumed job's range: the next catch-up moves it.
    assert 700 not in [r[0] for r in target_rows(pg_connect, "analytics.orders", ["id"], "id")]
    following = migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert following.job_id not in (failed, backfill.job_id) and following.rows >= 1
    assert_same_rows(source(), target_rows(pg_connect, "analytics.orders", NAMES, "id"), NAMES)


def test_the_backfill_is_found_however_many_catch_ups_followed_it(tmp_path, orders, pg_database, pg_connect):
    """Months of catch-ups every 15 minutes leave thousands of jobs after the backfill: the
    chain still starts from it (here 250 completed catch-ups that recorded no mark)."""
    migrations, run, source = orders
    path = str(migrations(tmp_path / "m.yaml", pg_database))
    backfill = migrate(source_name="analytics", migrations_file=path)
    with pg_connect() as conn:
        conn.execute(
            "INSERT INTO migration_status.migration_runs (job_id, migration, status, fingerprint, parameters, "
            "started_at) SELECT 'analytics-old-' || n, 'analytics', 'completed', 'x', '{\"catch_up\": []}', "
            "now() + n * interval '1 millisecond' FROM generate_series(1, 250) AS n"
        )
    run(f"UPDATE ORDERS SET NAME = 'changed', UPDATED_AT = {stamp(HIGH + timedelta(hours=1))} WHERE ID = 9")
    caught = migrate(source_name="analytics", migrations_file=path, catch_up=True)
    assert backfill.job_id in caught.catch_up and caught.rows == 11 + 1, caught.summary()
    assert_same_rows(source(), target_rows(pg_connect, "analytics.orders", NAMES, "id"), NAMES)
