"""The rollback flow removes exactly what one job wrote, and never anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks.errors import DataConversionError, TargetGuardError
from blocks.postgres.target import PostgresTarget
from tests.energy_support import (
    influx_migrations,
    single_measure_records,
    stored,
    write_files,
)
from tests.influx_readback import write_lines
from tests.support import write_migrations

CUSTOMERS = {"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000}


def customers_file(tmp_path, servers, pg_database):
    return write_migrations(tmp_path / "migrations.yaml", servers, pg_database, [CUSTOMERS], name="conflict")


def rows(pg_connect, sql: str) -> list[tuple]:
    with pg_connect() as conn:
        return conn.execute(sql).fetchall()


def job_status(pg_connect, job_id: str) -> str:
    return rows(pg_connect, f"SELECT status FROM migration_status.migration_runs WHERE job_id = '{job_id}'")[
        0
    ][0]


def test_rows_that_were_there_before_the_job_survive(tmp_path, servers, pg_database, pg_connect, demo_source):
    from flows.migrate import migrate
    from flows.rollback import rollback

    before = [(7, "before seven"), (1500, "before 1500"), (2999, "before 2999")]
    with pg_connect() as conn:  # the table exists, without a key, and holds rows in the job's ranges
        conn.execute("CREATE SCHEMA analytics")
        conn.execute(
            "CREATE TABLE analytics.customers (customer_id bigint, name text, balance numeric(12,2), "
            "updated_at timestamp)"
        )
        for key, name in before:
            conn.execute("INSERT INTO analytics.customers VALUES (%s, %s, 1.00, now())", (key, name))
    path = customers_file(tmp_path, servers, pg_database)
    report = migrate(source_name="conflict", job_id="conflict-rb-1", migrations_file=str(path))
    assert rows(pg_connect, "SELECT count(*) FROM analytics.customers")[0][0] == report.rows + len(before)
    staged = Path(tmp_path / "staging" / "conflict-rb-1")
    assert staged.is_dir()

    result = rollback(job_id="conflict-rb-1", migrations_file=str(path))  # migration from the id

    (table,) = result.tables
    assert table["rows_deleted"] == report.rows and table["rows_kept"] == 3 and not table["dropped"]
    left = rows(pg_connect, "SELECT customer_id, name FROM analytics.customers ORDER BY customer_id")
    assert left == before
    assert job_status(pg_connect, "conflict-rb-1") == "rolled_back"
    assert not staged.exists()
    statuses = rows(pg_connect, "SELECT DISTINCT status FROM migration_status.migration_chunk_status")
    assert statuses == [("rolled_back",)]

    again = rollback(job_id="conflict-rb-1", source_name="conflict", migrations_file=str(path))
    assert again.already_rolled_back
    with pytest.raises(TargetGuardError, match="rolled back"):
        migrate(source_name="conflict", job_id="conflict-rb-1", migrations_file=str(path))
    assert (
        rows(pg_connect, "SELECT customer_id, name FROM analytics.customers ORDER BY customer_id") == before
    )


def test_a_table_the_job_created_is_dropped(tmp_path, servers, pg_database, pg_connect, demo_source):
    from flows.migrate import migrate
    from flows.rollback import rollback

    path = customers_file(tmp_path, servers, pg_database)
    migrate(source_name="conflict", job_id="created-1", migrations_file=str(path))
    result = rollback(job_id="created-1", source_name="conflict", migrations_file=str(path))
    assert result.tables[0]["dropped"]
    assert rows(pg_connect, "SELECT to_regclass('analytics.customers')") == [(None,)]


def test_a_failed_run_with_rollback_enabled_rolls_back(
    tmp_path, servers, pg_database, pg_connect, demo_source, monkeypatch
):
    from flows.migrate import migrate

    real_load = PostgresTarget.load_chunk

    def failing_at_chunk_2(self, **kwargs):
        if kwargs["chunk_id"].startswith("00002"):
            raise DataConversionError("injected failure in chunk 2")
        return real_load(self, **kwargs)

    monkeypatch.setattr(PostgresTarget, "load_chunk", failing_at_chunk_2)
    path = customers_file(tmp_path, servers, pg_database)
    with pytest.raises(RuntimeError, match="rolled back: everything the job wrote was removed"):
        migrate(source_name="conflict", job_id="auto-rb", migrations_file=str(path), rollback_enabled=True)
    assert job_status(pg_connect, "auto-rb") == "rolled_back"
    assert rows(pg_connect, "SELECT to_regclass('analytics.customers')") == [(None,)]


def test_a_running_job_is_refused_until_its_flow_run_ends(
    tmp_path, servers, pg_database, pg_connect, demo_source
):
    """The ledger of a crashed or cancelled run still says running; Prefect says whether a run is active."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    from flows.migrate import migrate
    from flows.rollback import rollback

    path = customers_file(tmp_path, servers, pg_database)
    migrate(source_name="conflict", job_id="crashed-1", migrations_file=str(path))
    with pg_connect() as conn:  # as a crashed run leaves it
        conn.execute(
            "UPDATE migration_status.migration_runs SET status = 'running' WHERE job_id = 'crashed-1'"
        )

    @flow(name="migrate")
    def stand_in() -> None:
        pass

    with get_client(sync_client=True) as client:  # a run of the job that is still going
        run = client.create_flow_run(stand_in, tags=["job:crashed-1"], state=Running())
    with pytest.raises(TargetGuardError, match=f"still running \\(flow run {run.name}\\)"):
        rollback(job_id="crashed-1", source_name="conflict", migrations_file=str(path))
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Crashed(), force=True)
    assert rollback(job_id="crashed-1", source_name="conflict", migrations_file=str(path)).tables
    assert job_status(pg_connect, "crashed-1") == "rolled_back"


def test_force_rolls_back_while_a_run_looks_active(tmp_path, servers, pg_database, pg_connect, demo_source):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.migrate import migrate
    from flows.rollback import rollback

    path = customers_file(tmp_path, servers, pg_database)
    migrate(source_name="conflict", job_id="crashed-2", migrations_file=str(path))
    with pg_connect() as conn:
        conn.execute(
            "UPDATE migration_status.migration_runs SET status = 'running' WHERE job_id = 'crashed-2'"
        )

    @flow(name="migrate")
    def stand_in() -> None:
        pass

    with get_client(sync_client=True) as client:  # e.g. its worker died and nobody marked it crashed
        client.create_flow_run(stand_in, tags=["job:crashed-2"], state=Running())
    assert rollback(job_id="crashed-2", source_name="conflict", migrations_file=str(path), force=True).tables


@pytest.mark.parametrize("api", ["v1", "v2"])  # InfluxQL DELETE on 1.x; the v2 delete API
def test_influxdb_rollback_deletes_only_the_jobs_points(tmp_path, servers, pg_database, influx_database, api):
    from flows.migrate import migrate
    from flows.rollback import rollback

    records = single_measure_records(1_200, days=2)
    write_files(tmp_path / "unload" / "generation_data", records)
    table = {"name": "generation_data", "chunk_column": "time", "chunk_interval": "1d"}
    source = {"type": "parquet", "location": str(tmp_path / "unload")}
    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [table], source=source, api=api
    )
    # points that are not the job's: another measurement in its range, and its own measurement outside it
    foreign = "other_measure value=1 1709251200000000005\ngeneration_mw,plant=x measure_value::double=2 1000"
    write_lines(servers, influx_database, foreign)
    migrate(source_name="energy", job_id="energy-rb", migrations_file=str(path))
    got, _ = stored(servers, influx_database)
    assert len(got) == records.num_rows + 2

    result = rollback(job_id="energy-rb", migrations_file=str(path))
    assert result.points_deleted_ranges == 2 * 4  # two chunks, four measurements each
    got, _ = stored(servers, influx_database)
    assert got == {
        ("other_measure", (), 1709251200000000005): {"value": 1.0},
        ("generation_mw", (("plant", "x"),), 1000): {"measure_value::double": 2.0},
    }


def test_a_job_on_a_target_no_migration_has_used_is_not_in_the_ledger(
    tmp_path, servers, pg_database, pg_connect
):
    """Before any migration ran there, the target has no ledger: the rollback and the status's
    ledger line say the job is not in it, instead of a raw "relation does not exist"."""
    from blocks.errors import ConfigError
    from flows.ledger_view import ledger_view
    from flows.rollback import rollback

    path = customers_file(tmp_path, servers, pg_database)
    with pytest.raises(ConfigError, match="job conflict-x is not in the ledger of migration 'conflict'"):
        rollback(job_id="conflict-x", migrations_file=str(path))
    view = ledger_view("conflict-x", "conflict", str(path))
    assert view.unread == "job conflict-x is not in the ledger of migration 'conflict'"
    assert rows(pg_connect, "SELECT to_regclass('migration_status.migration_runs')") == [(None,)]
