"""Jobs that share a target know about each other: the target's ledger is the one truth.

Each test runs two jobs into one target, then reruns, refuses, rolls back and forces, and
compares the other job's data with its source value by value before and after. A rollback
never deletes data another live job still claims unless forced, and then the ledger marks
that job's chunks, so nothing reports data that is no longer there.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from blocks.errors import TargetGuardError
from tests.energy_support import (
    FIELDS,
    FLOAT_KEYS,
    START_NS,
    TAGS,
    assert_same_points,
    expected_points,
    influx_migrations,
    single_measure_records,
    stored,
)
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations
from tests.test_energy_migration import energy_table, unload_source

DAY_NS = 86_400_000_000_000


def ledger_jobs(pg_connect) -> dict[str, tuple]:
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT job_id, status, chunks_done, chunks_total, rows_total FROM migration_status.migration_runs"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def chunk_statuses(pg_connect, job_id: str) -> dict[str, tuple]:
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT chunk_id, status, details FROM migration_status.migration_chunk_status WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return {cid: (status, details or {}) for cid, status, details in rows}


# --- InfluxDB ------------------------------------------------------------------------------------


def test_influxdb_jobs_over_one_range_refuse_share_and_roll_back_without_losing_points(
    tmp_path, servers, pg_database, pg_connect, influx_database
):
    from flows.job_list import recent_jobs, with_ledgers
    from flows.migrate import migrate
    from flows.rollback import rollback
    from flows.status import job_status, with_ledger

    records = single_measure_records(3_000, days=3)
    source = unload_source(tmp_path, records)
    table = energy_table(mapping={"tags": TAGS})
    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [table], source=source
    )
    want = expected_points(records, TAGS, FIELDS, "measure_name", None)

    first = migrate(source_name="energy", migrations_file=str(path))
    assert first.status == "completed" and first.rows == records.num_rows
    assert first.rows_loaded_now == records.num_rows
    assert_same_points(stored(servers, influx_database)[0], want, FLOAT_KEYS)

    # The same migration again: the completed job is reported, nothing is written, no new job.
    again = migrate(source_name="energy", migrations_file=str(path))
    assert again.job_id == first.job_id and again.already_complete and again.status == "completed"
    assert again.rows == first.rows and again.rows_loaded_now == 0
    assert "already completed, nothing to load" in again.summary()
    assert list(ledger_jobs(pg_connect)) == [first.job_id]

    # A new job over days 2-3 (the measurements come from a column: refused as the first chunk
    # loads, naming the other job; nothing written, no failed job left in the ledger).
    day2 = "2024-03-02T00:00:00Z"
    jobs_listed = {j.job_id for j in recent_jobs("energy", 200).jobs}
    assert first.job_id in jobs_listed
    with pytest.raises(RuntimeError, match=rf"job {first.job_id} \(completed\) loaded") as refused:
        migrate(source_name="energy", migrations_file=str(path), start_time=day2)
    message = str(refused.value)
    assert "allow_rewrite_loaded_points" in message and "resume" not in message.lower()
    assert list(ledger_jobs(pg_connect)) == [first.job_id]
    # Nor in Prefect: the refused run dropped its job tag, so status lists no new job.
    assert {j.job_id for j in recent_jobs("energy", 200).jobs} == jobs_listed
    assert_same_points(stored(servers, influx_database)[0], want, FLOAT_KEYS)

    # Knowingly re-writing the range: allowed, and the ledger records the sharing.
    shared = influx_migrations(
        tmp_path / "shared.yaml",
        servers,
        pg_database,
        influx_database,
        [table | {"allow_rewrite_loaded_points": True}],
        source=source,
    )
    second = migrate(source_name="energy", migrations_file=str(shared), start_time=day2)
    assert second.status == "completed" and second.job_id != first.job_id
    assert all(
        d.get("shared_with") == [first.job_id] for _, d in chunk_statuses(pg_connect, second.job_id).values()
    )
    assert_same_points(stored(servers, influx_database)[0], want, FLOAT_KEYS)

    # Rolling back either job would delete the other's points: refused, naming the other job.
    with pytest.raises(TargetGuardError, match=rf"job {first.job_id} \(completed\)"):
        rollback(job_id=second.job_id, source_name="energy", migrations_file=str(path))
    with pytest.raises(TargetGuardError, match=rf"job {second.job_id} \(completed\)"):
        rollback(job_id=first.job_id, source_name="energy", migrations_file=str(path))
    assert_same_points(stored(servers, influx_database)[0], want, FLOAT_KEYS)
    assert ledger_jobs(pg_connect)[first.job_id][0] == "completed"

    # Forced: the second job's points go, and the first job's chunks in those days are marked.
    report = rollback(job_id=second.job_id, source_name="energy", migrations_file=str(path), force=True)
    assert report.other_jobs_marked == [first.job_id]
    day1 = records.filter(pc.less(records.column("time").cast(pa.int64()), START_NS + DAY_NS))
    assert_same_points(
        stored(servers, influx_database)[0],
        expected_points(day1, TAGS, FIELDS, "measure_name", None),
        FLOAT_KEYS,
    )
    status, chunks_done, chunks_total, rows_total = ledger_jobs(pg_connect)[first.job_id]
    assert (status, chunks_done, chunks_total, rows_total) == ("incomplete", 1, 3, day1.num_rows)
    marks = chunk_statuses(pg_connect, first.job_id)
    assert sorted(s for s, _ in marks.values()) == ["loaded", "removed", "removed"]
    assert all(d["removed_by"] == second.job_id for s, d in marks.values() if s == "removed")
    # Status reads the ledger too: it does not report the points that are gone.
    shown = with_ledger(job_status(first.job_id), str(path))
    assert (shown.state, shown.rows, shown.chunks_done, shown.chunks_total) == (
        "incomplete",
        day1.num_rows,
        1,
        3,
    )
    assert "run the job again with job_id" in shown.errors[-1]
    listed = {j.job_id: j for j in with_ledgers(recent_jobs("energy", 200), str(path)).jobs}
    assert (listed[first.job_id].state, listed[first.job_id].rows) == ("incomplete", day1.num_rows)
    assert listed[second.job_id].state == "rolled_back"

    # Running the first job again loads exactly the chunks it lost.
    back = migrate(source_name="energy", migrations_file=str(path), job_id=first.job_id)
    assert back.status == "completed" and back.rows_loaded_now == records.num_rows - day1.num_rows
    assert ledger_jobs(pg_connect)[first.job_id] == ("completed", 3, 3, records.num_rows)
    assert_same_points(stored(servers, influx_database)[0], want, FLOAT_KEYS)


def test_influxdb_constant_measurement_overlap_is_refused_before_planning_any_write(
    tmp_path, servers, pg_database, pg_connect, influx_database
):
    """With a constant measurement the guard knows the measurement at plan time."""
    from flows.migrate import migrate

    records = single_measure_records(600, days=2)
    table = energy_table(
        mapping={"measurement": "plant_readings", "tags": TAGS, "fields": ["measure_value::double"]}
    )
    path = influx_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        influx_database,
        [table],
        source=unload_source(tmp_path, records),
    )
    first = migrate(source_name="energy", migrations_file=str(path))
    before = stored(servers, influx_database)[0]
    with pytest.raises(
        RuntimeError, match=rf"(?s)this job's chunks overlap .*job {first.job_id} \(completed\)"
    ):
        migrate(source_name="energy", migrations_file=str(path), no_resume=True)
    assert list(ledger_jobs(pg_connect)) == [first.job_id]
    assert stored(servers, influx_database)[0] == before
    assert_same_points(
        before,
        expected_points(
            records, TAGS, {"measure_value::double": "measure_value::double"}, None, "plant_readings"
        ),
        FLOAT_KEYS,
    )


# --- PostgreSQL ----------------------------------------------------------------------------------


def customers(snowflake_kwargs):
    return source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")


def test_postgres_append_jobs_side_by_side_roll_back_only_their_own_rows(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from flows.migrate import migrate
    from flows.rollback import rollback

    path = write_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        [{"name": "PAGE_VIEWS", "chunk_column": "VIEWED_AT", "chunk_interval": "1d"}],
    )
    split = "2024-03-03T00:00:00Z"
    first = migrate(source_name="analytics", migrations_file=str(path), end_time=split)
    again = migrate(source_name="analytics", migrations_file=str(path), end_time=split)
    assert again.job_id == first.job_id and again.already_complete and again.rows_loaded_now == 0
    # By its id alone, the job keeps the window it started with; another window is refused.
    by_id = migrate(source_name="analytics", migrations_file=str(path), job_id=first.job_id)
    assert by_id.already_complete and by_id.rows == first.rows
    with pytest.raises(
        TargetGuardError, match=r"was started with end_time=2024-03-03 00:00:00\+00:00; this run asks for"
    ):
        migrate(
            source_name="analytics", migrations_file=str(path), job_id=first.job_id, end_time="2024-03-04"
        )
    second = migrate(source_name="analytics", migrations_file=str(path), start_time=split)
    assert second.job_id != first.job_id and second.rows > 0

    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "PAGE_VIEWS", "VIEW_ID")
    assert_same_rows(expected, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)
    first_rows = [r for r in expected if r[names.index("viewed_at")].isoformat() < "2024-03-03"]
    assert len(first_rows) == first.rows

    rollback(job_id=second.job_id, source_name="analytics", migrations_file=str(path))
    assert_same_rows(first_rows, target_rows(pg_connect, "analytics.page_views", names, "view_id"), names)
    assert ledger_jobs(pg_connect)[first.job_id] == (
        "completed",
        len(first.chunks),
        len(first.chunks),
        first.rows,
    )


def test_postgres_upsert_over_another_jobs_rows_refuses_rollback_then_force_marks_that_job(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from flows.migrate import migrate
    from flows.rollback import rollback

    table = {
        "name": "CUSTOMERS",
        "chunk_column": "CUSTOMER_ID",
        "chunk_size": 1_000,
        "primary_key": ["CUSTOMER_ID"],
    }
    loads = write_migrations(tmp_path / "a.yaml", servers, pg_database, [table], name="loads")
    upserts = write_migrations(
        tmp_path / "b.yaml", servers, pg_database, [table | {"load_mode": "upsert"}], name="upserts"
    )
    names, expected = customers(snowflake_kwargs)
    first = migrate(source_name="loads", migrations_file=str(loads))
    second = migrate(source_name="upserts", migrations_file=str(upserts))
    assert second.status == "completed"
    overwrote = [
        o for _, d in chunk_statuses(pg_connect, second.job_id).values() for o in d.get("overwrote", [])
    ]
    assert {o["job_id"] for o in overwrote} == {first.job_id}
    assert sum(o["rows"] for o in overwrote) == len(expected)

    with pytest.raises(
        TargetGuardError, match=rf"(?s)other jobs still claim .*job {first.job_id} \(completed\)"
    ):
        rollback(job_id=second.job_id, source_name="upserts", migrations_file=str(upserts))
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)

    rollback(job_id=second.job_id, source_name="upserts", migrations_file=str(upserts), force=True)
    assert target_rows(pg_connect, "analytics.customers", names, "customer_id") == []
    status, chunks_done, _, rows_total = ledger_jobs(pg_connect)[first.job_id]
    assert (status, chunks_done, rows_total) == ("incomplete", 0, 0)  # the ledger claims nothing gone

    back = migrate(source_name="loads", migrations_file=str(loads), job_id=first.job_id)
    assert back.status == "completed" and back.rows_loaded_now == len(expected)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)
    assert ledger_jobs(pg_connect)[first.job_id][0] == "completed"


def test_postgres_replace_supersedes_the_jobs_it_truncated(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from flows.migrate import migrate
    from flows.rollback import rollback

    table = {"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1_000}
    loads = write_migrations(tmp_path / "a.yaml", servers, pg_database, [table], name="loads")
    replaces = write_migrations(
        tmp_path / "b.yaml",
        servers,
        pg_database,
        [table | {"load_mode": "replace", "allow_truncate_foreign_rows": True}],
        name="replaces",
    )
    names, expected = customers(snowflake_kwargs)
    first = migrate(source_name="loads", migrations_file=str(loads))
    second = migrate(source_name="replaces", migrations_file=str(replaces))
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)
    # The truncation took the first job's rows: the ledger no longer says it holds them.
    assert ledger_jobs(pg_connect)[first.job_id][0::3] == ("superseded", 0)
    assert {s for s, _ in chunk_statuses(pg_connect, first.job_id).values()} == {"superseded"}
    with pytest.raises(TargetGuardError, match="superseded"):
        migrate(source_name="loads", migrations_file=str(loads), job_id=first.job_id)

    with pytest.raises(TargetGuardError, match=rf"(?s)truncated .*loaded by job {first.job_id}"):
        rollback(job_id=second.job_id, source_name="replaces", migrations_file=str(replaces))
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)


def test_reused_job_id_after_the_target_was_recreated_loads_again(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source, caplog
):
    """Prefect's cached results say every chunk finished; the new database's ledger does not."""
    from flows.migrate import migrate

    table = {"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1_000}
    path = write_migrations(tmp_path / "m.yaml", servers, pg_database, [table])
    names, expected = customers(snowflake_kwargs)
    first = migrate(source_name="analytics", migrations_file=str(path), job_id="reused-id")
    assert first.rows == len(expected)

    with servers["pg"].connect() as conn:
        conn.execute(f'DROP DATABASE "{pg_database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{pg_database}"')
    again = migrate(source_name="analytics", migrations_file=str(path), job_id="reused-id")
    assert again.status == "completed" and not again.resumed
    assert not any(c.already_loaded for c in again.chunks) and again.rows_loaded_now == len(expected)
    assert_same_rows(expected, target_rows(pg_connect, "analytics.customers", names, "customer_id"), names)
    assert ledger_jobs(pg_connect)["reused-id"] == ("completed", 3, 3, len(expected))
    assert "have a cached result saying they finished, but the ledger" in caplog.text
