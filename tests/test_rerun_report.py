"""A completed job's rerun reports it from the ledger, after one cheap check that the ledger
and the target agree, without reading the source or planning. When the check disagrees, or
the ledger holds no report (written before reports were recorded), the rerun goes the full way.
"""

from __future__ import annotations

import logging
import shutil
import socket
from datetime import datetime

import httpx
import pytest

from tests.energy_support import influx_migrations, single_measure_records
from tests.prefect_support import api, flow_runs_tagged
from tests.support import (
    assert_same_rows,
    own_snowflake_database,
    source_rows,
    target_rows,
    write_migrations,
)
from tests.test_energy_migration import energy_table, unload_source

ROWS = 2_500
NAMES = ["id", "name", "price", "made"]
FALLBACK = "checking it the full way"
FROM_LEDGER = "its report comes from the ledger"
FULL_WAY = "checking its chunks against the ledger"  # the full way's log for a completed job


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def items(snowflake_kwargs, servers):
    """A fresh source table ITEMS of ROWS rows; yields a migrations-file writer (source
    settings may be overridden) and the source's rows."""
    with own_snowflake_database(snowflake_kwargs) as (database, run):
        run("CREATE TABLE ITEMS (ID INTEGER, NAME VARCHAR, PRICE NUMBER(10, 2), MADE TIMESTAMP_NTZ)")
        values = ", ".join(
            f"({i}, 'item {i}', {i % 997}.25, '2024-01-01 00:00:00'::timestamp + INTERVAL '{i} minutes')"
            for i in range(1, ROWS + 1)
        )
        run(f"INSERT INTO ITEMS VALUES {values}")
        names, source = source_rows(snowflake_kwargs, database, "PUBLIC", "ITEMS", "ID")
        assert names == NAMES and len(source) == ROWS

        def migrations(path, pg_database, **source_settings):
            tables = [{"name": "ITEMS", "chunk_column": "ID", "chunk_size": 1_000}]
            return write_migrations(
                path,
                servers,
                pg_database,
                tables,
                database=database,
                extra={"concurrency": 2},
                source=source_settings,
            )

        yield migrations, source


def items_in_target(pg_connect) -> list[tuple]:
    return target_rows(pg_connect, "analytics.items", NAMES, "id")


def same_chunks(a, b) -> bool:
    key = lambda r: [(c.table, c.chunk_id, c.lower, c.upper, c.rows, c.bytes) for c in r.chunks]  # noqa: E731
    return key(a) == key(b)


def recorded(pg_connect, job_id: str):
    with pg_connect() as conn:
        row = conn.execute(
            "SELECT report FROM migration_status.migration_reports WHERE job_id = %s", (job_id,)
        ).fetchone()
    return row[0] if row else None


def test_rerun_reports_the_recorded_report_without_the_source(
    tmp_path, items, pg_database, pg_connect, caplog
):
    from flows.migrate import migrate

    migrations, source = items
    path = migrations(tmp_path / "m.yaml", pg_database)
    first = migrate(source_name="analytics", migrations_file=str(path))
    assert first.status == "completed" and first.rows == ROWS and len(first.chunks) == 3
    assert recorded(pg_connect, first.job_id) == first.model_dump(mode="json")
    before = items_in_target(pg_connect)
    assert_same_rows(source, before, NAMES)

    # The source is gone (nothing listens where it was): the rerun never reaches for it.
    gone = migrations(tmp_path / "gone.yaml", pg_database, port=closed_port(), login_timeout=1)
    for job_id in (None, first.job_id):  # picked as the completed job, and named
        caplog.clear()
        with caplog.at_level(logging.INFO):
            again = migrate(source_name="analytics", migrations_file=str(gone), job_id=job_id)
        assert FROM_LEDGER in caplog.text and FULL_WAY not in caplog.text
        assert again.job_id == first.job_id and again.status == "completed" and again.error is None
        assert again.already_complete and again.resumed
        assert again.rows == first.rows and again.rows_loaded_now == 0 and again.chunks_loaded_now == 0
        assert same_chunks(again, first) and again.tables == first.tables
        assert all(c.already_loaded for c in again.chunks)
        assert "already completed, nothing to load" in again.summary()
    assert items_in_target(pg_connect) == before
    # Each rerun's flow run is labelled with the job and carries its own progress (100 %) and
    # report artifacts, as a run that loads does (they are published side by side).
    runs = flow_runs_tagged(f"job:{first.job_id}")
    assert len(runs) == 3 and {r["name"] for r in runs} == {f"analytics job {first.job_id}"}, runs
    for run in runs[1:]:
        artifacts = httpx.post(
            f"{api()}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
        ).json()
        assert {a["type"] for a in artifacts} == {"progress", "table"}, artifacts
        assert next(a["data"] for a in artifacts if a["type"] == "progress") == 100.0
        table = next(a for a in artifacts if a["type"] == "table")
        assert table["key"].startswith("migration-report") and first.job_id in (table["description"] or ""), (
            table
        )
    with pg_connect() as conn:
        jobs = conn.execute("SELECT job_id, status FROM migration_status.migration_runs").fetchall()
    assert jobs == [(first.job_id, "completed")]
    assert recorded(pg_connect, first.job_id) == first.model_dump(mode="json")  # the first run's stays

    # Another chunk size is another job: the recorded report is not taken for it.
    changed = path.read_text().replace("chunk_size: 1000", "chunk_size: 500")
    assert changed != path.read_text()
    (tmp_path / "changed.yaml").write_text(changed)
    with pytest.raises(Exception, match="other tables, modes or target settings"):
        migrate(source_name="analytics", migrations_file=str(tmp_path / "changed.yaml"), job_id=first.job_id)


CHANGES = {
    "truncate": "TRUNCATE analytics.items",
    "drop": "DROP TABLE analytics.items",
    # The same rows, written by another transaction: no row of the job's loads is left.
    "recreate": "CREATE TABLE analytics.copy AS SELECT * FROM analytics.items; DROP TABLE analytics.items; "
    "ALTER TABLE analytics.copy RENAME TO items",
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_target_changed_after_completion_sends_the_rerun_the_full_way(
    tmp_path, items, pg_database, pg_connect, caplog, change
):
    """The check disagrees, so the rerun goes the full way, which trusts the ledger as it always
    did: every chunk shows loaded there, so nothing is loaded again and the job is reported
    complete; the warning says what the check found."""
    from flows.migrate import migrate

    migrations, source = items
    path = migrations(tmp_path / "m.yaml", pg_database)
    first = migrate(source_name="analytics", migrations_file=str(path))
    with pg_connect() as conn:
        for statement in CHANGES[change].split("; "):
            conn.execute(statement)

    with caplog.at_level(logging.INFO):
        again = migrate(source_name="analytics", migrations_file=str(path))
    why = (
        "target table analytics.items is gone"
        if change == "drop"
        else ("target table analytics.items holds none of the rows the job's loads wrote")
    )
    assert f"job {first.job_id} completed, but {why}" in caplog.text and FALLBACK in caplog.text
    assert FULL_WAY in caplog.text and FROM_LEDGER not in caplog.text
    assert again.job_id == first.job_id and again.status == "completed" and again.already_complete
    assert again.rows == first.rows and again.rows_loaded_now == 0
    with pg_connect() as conn:
        exists = conn.execute("SELECT to_regclass('analytics.items')").fetchone()[0] is not None
    if change == "recreate":
        assert_same_rows(source, items_in_target(pg_connect), NAMES)
    else:
        assert exists == (change == "truncate")
        assert not exists or items_in_target(pg_connect) == []


def test_a_ledger_without_recorded_reports_reruns_the_full_way_then_records_one(
    tmp_path, items, pg_database, pg_connect, caplog
):
    """A ledger an older version wrote has no `migration_reports`: the rerun goes the full way
    (reading the chunks from the ledger, their cached results gone too), brings the ledger up to
    date and records the report, so the next rerun needs no source."""
    import os
    from pathlib import Path

    from flows.migrate import migrate

    migrations, source = items
    path = migrations(tmp_path / "m.yaml", pg_database)
    first = migrate(source_name="analytics", migrations_file=str(path), job_id="old-ledger")
    with pg_connect() as conn:
        conn.execute("DROP TABLE migration_status.migration_reports")
    shutil.rmtree(Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]) / "migrate" / "old-ledger")

    with caplog.at_level(logging.INFO):
        again = migrate(source_name="analytics", migrations_file=str(path), job_id="old-ledger")
    assert "job old-ledger completed before its ledger recorded reports; " + FALLBACK in caplog.text
    assert FULL_WAY in caplog.text and FROM_LEDGER not in caplog.text
    assert again.status == "completed" and again.already_complete and again.rows == first.rows
    assert all(c.already_loaded for c in again.chunks)  # from the ledger's rows: nothing ran again
    assert_same_rows(source, items_in_target(pg_connect), NAMES)
    assert recorded(pg_connect, "old-ledger")["rows"] == first.rows

    caplog.clear()
    gone = migrations(tmp_path / "gone.yaml", pg_database, port=closed_port(), login_timeout=1)
    with caplog.at_level(logging.INFO):
        third = migrate(source_name="analytics", migrations_file=str(gone), job_id="old-ledger")
    assert FROM_LEDGER in caplog.text
    assert third.already_complete and third.rows == first.rows
    assert [(c.chunk_id, c.rows) for c in third.chunks] == [(c.chunk_id, c.rows) for c in first.chunks]


def test_influxdb_rerun_counts_the_points_and_reports_from_the_ledger(
    tmp_path, servers, pg_database, influx_database, caplog
):
    """For a point target the check counts the points of the job's measurements and ranges;
    with the source files gone the rerun still reports, and with a chunk's points deleted it
    goes the full way."""
    from blocks.influxdb.target import InfluxDBTarget
    from flows.migrate import migrate
    from tasks.config import load_migration
    from tasks.connections import build_target
    from tasks.load_points import time_ns

    records = single_measure_records(3_000, days=3)
    source = unload_source(tmp_path, records)
    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [energy_table()], source=source
    )
    first = migrate(source_name="energy", migrations_file=str(path))
    assert first.status == "completed" and len(first.chunks) == 3
    shutil.rmtree(tmp_path / "unload")

    with caplog.at_level(logging.INFO):
        again = migrate(source_name="energy", migrations_file=str(path))
    assert FROM_LEDGER in caplog.text
    assert again.already_complete and again.rows == first.rows and same_chunks(again, first)

    # One chunk's points deleted: the count disagrees, and the rerun goes the full way (which
    # trusts the ledger, as before: every chunk shows loaded there).
    target: InfluxDBTarget = build_target(load_migration("energy", path))
    chunk = first.chunks[1]
    start, stop = (time_ns(datetime.fromisoformat(b)) for b in (chunk.lower, chunk.upper))
    for measurement in sorted(set(records.column("measure_name").to_pylist())):
        target.delete(measurement, start, stop)
    unload_source(tmp_path, records)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        third = migrate(source_name="energy", migrations_file=str(path))
    assert (
        f"job {first.job_id} completed, but " in caplog.text
        and " points in the job's measurements and time ranges, where its ledger counted" in caplog.text
    )
    assert FULL_WAY in caplog.text and FROM_LEDGER not in caplog.text
    assert third.already_complete and third.rows == first.rows
