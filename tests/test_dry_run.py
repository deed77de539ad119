"""A dry run (`plan_migration`, `migrate(dry_run=True)`) says what a run would do and writes
nothing: the ledger, the staging folder and the target are the same before and after, byte
for byte, and the plan is what a real run then does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import snowflake.connector

from blocks.errors import ConnectionCheckError
from tests.energy_support import TAGS, influx_migrations, single_measure_records
from tests.influx_readback import select
from tests.support import own_snowflake_database, quoted, source_rows, write_migrations
from tests.test_energy_migration import energy_table, unload_source


def target_snapshot(connect) -> dict:
    """Every schema and table of the database with a checksum of its rows, and the ledger:
    whether schema migration_status exists, and every row of its tables."""
    with connect() as conn:
        schemas = sorted(r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall())
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        checksums = {
            (s, t): conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) "
                f"FROM {quoted(s)}.{quoted(t)} r"
            ).fetchone()
            for s, t in tables
        }
    return {
        "schemas": schemas,
        "tables": checksums,
        "ledger": "migration_status" in schemas,
        "ledger_rows": {k: v for k, v in checksums.items() if k[0] == "migration_status"},
    }


def staging_snapshot(folder) -> list[tuple[str, int]] | None:
    """Every file and folder under the staging folder with its size; None when it is missing."""
    if not folder.exists():
        return None
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def snapshot(pg_connect, staging) -> dict:
    return {**target_snapshot(pg_connect), "staging": staging_snapshot(staging)}


def customers_file(tmp_path, servers, pg_database, name: str, **table) -> str:
    spec = {"name": "CUSTOMERS", "chunk_column": "CUSTOMER_ID", "chunk_size": 1000, **table}
    return str(write_migrations(tmp_path / f"{name}.yaml", servers, pg_database, [spec], name=name))


def plan_artifacts(key: str) -> list[dict]:
    response = httpx.post(
        f"{os.environ['PREFECT_API_URL']}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}
    )
    response.raise_for_status()
    return response.json()


def test_a_dry_run_on_a_fresh_target_writes_nothing_and_lists_what_the_run_then_loads(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from flows.migrate import migrate
    from tasks.config import load_migration
    from tasks.connections import build_ledger
    from tasks.dry_run import MigrationPlan, plan_migration

    name = f"dry-{pg_database}"
    path = customers_file(tmp_path, servers, pg_database, name)
    staging = tmp_path / "staging"
    before = snapshot(pg_connect, staging)
    assert before["staging"] is None and not before["ledger"] and "analytics" not in before["schemas"]

    plan = plan_migration(name, path)
    assert snapshot(pg_connect, staging) == before
    flow_plan = migrate(source_name=name, migrations_file=path, dry_run=True)
    assert snapshot(pg_connect, staging) == before
    assert isinstance(flow_plan, MigrationPlan) and flow_plan.tables == plan.tables

    names, rows = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "CUSTOMERS", "CUSTOMER_ID")
    (table,) = plan.tables
    assert plan.job.action == "new" and plan.refusals == [], plan.render()
    assert not table.rows_estimated and sum(c.estimated_rows for c in table.chunks) == len(rows)
    assert table.ddl[0] == 'CREATE SCHEMA IF NOT EXISTS "analytics"'
    assert table.ddl[1].startswith('CREATE TABLE "analytics"."customers" ("customer_id" bigint')
    assert [m.target_name for m in table.columns] == names
    assert [m.source_name for m in table.columns] == [n.upper() for n in names]
    # fakesnow's times are nanoseconds; PostgreSQL keeps microseconds.
    flagged = {m.target_name: m.flag for m in table.columns if m.flag}
    assert flagged == {"updated_at": "note"}, table.columns
    text = plan.render()
    assert "Table CUSTOMERS -> analytics.customers" in text and "Refusals: none" in text

    slug = name.replace("_", "-")
    (artifact,) = plan_artifacts(f"migration-plan-{slug}")
    assert [(r["chunk"], r["est. rows"]) for r in json.loads(artifact["data"])] == [
        (c.chunk_id, c.estimated_rows) for c in table.chunks
    ]
    assert plan_artifacts(f"migration-plan-details-{slug}")[0]["type"] == "markdown"

    report = migrate(source_name=name, migrations_file=path)
    with pg_connect() as conn:
        recorded = conn.execute(
            "SELECT chunk_id, lower_bound, upper_bound, rows_loaded FROM migration_status.migration_chunk_status "
            "WHERE job_id = %s ORDER BY chunk_id",
            (report.job_id,),
        ).fetchall()
    assert recorded == [(c.chunk_id, c.lower, c.upper, c.estimated_rows) for c in table.chunks]

    # Planned again, the completed job is what a run would take up: nothing to load.
    after_run = snapshot(pg_connect, staging)
    again = plan_migration(name, path)
    assert again.job.action == "completed" and again.job.job_id == report.job_id
    assert again.job.chunks_loaded == again.job.chunks_total == len(table.chunks)
    assert snapshot(pg_connect, staging) == after_run

    # The job failed before its last chunk, and another run holds it: a run would resume it,
    # skip the two loaded chunks, and stop at the run lock.
    with pg_connect() as conn:
        conn.execute(
            "UPDATE migration_status.migration_runs SET status = 'failed' WHERE job_id = %s", (report.job_id,)
        )
        conn.execute(
            "UPDATE migration_status.migration_chunk_status SET status = 'planned' WHERE job_id = %s AND chunk_id = %s",
            (report.job_id, table.chunks[-1].chunk_id),
        )
    lock = build_ledger(load_migration(name, Path(path))).run_lock(report.job_id, None)
    assert lock.acquire() is None
    try:
        held = snapshot(pg_connect, staging)
        resumed = plan_migration(name, path)
        assert snapshot(pg_connect, staging) == held
    finally:
        lock.release()
    assert resumed.job.action == "resume" and (resumed.job.chunks_loaded, resumed.job.chunks_total) == (2, 3)
    assert [c.loaded for c in resumed.tables[0].chunks] == [True, True, False]
    assert [c.chunk_id for c in resumed.tables[0].chunks] == [c.chunk_id for c in table.chunks]
    (refusal,) = resumed.refusals
    assert refusal.startswith(f"job {report.job_id}: run lock: job {report.job_id} is already running in"), (
        refusal
    )


def test_a_dry_run_names_the_guards_that_would_refuse_and_changes_nothing(
    tmp_path, servers, pg_database, pg_connect, demo_source
):
    from flows.migrate import migrate
    from tasks.dry_run import plan_migration

    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA analytics")
        conn.execute(
            "CREATE TABLE analytics.customers (customer_id bigint, name text, balance numeric(12,2), "
            "updated_at timestamp)"
        )
        conn.execute("INSERT INTO analytics.customers VALUES (-1, 'written by someone else', 0, now())")
    staging = tmp_path / "staging"
    replace = customers_file(tmp_path, servers, pg_database, "swap", load_mode="replace")
    before = snapshot(pg_connect, staging)
    plan = plan_migration("swap", replace)
    assert snapshot(pg_connect, staging) == before and not before["ledger"]
    assert plan.refusals == [
        "table CUSTOMERS: truncation: refusing to truncate analytics.customers: it holds 1 rows but migration "
        "'swap' wrote only 0 of them; set allow_truncate_foreign_rows: true on the table to replace them anyway"
    ]
    allowed = customers_file(
        tmp_path, servers, pg_database, "swap", load_mode="replace", allow_truncate_foreign_rows=True
    )
    (table,) = plan_migration("swap", allowed).tables
    assert (
        "truncation",
        "pass",
        "would truncate analytics.customers: 1 rows (allow_truncate_foreign_rows: true)",
    ) in [(d.guard, d.outcome, d.reason) for d in table.guards]

    append = customers_file(tmp_path, servers, pg_database, "feed")
    first = migrate(source_name="feed", migrations_file=append)
    before = snapshot(pg_connect, staging)
    plan = plan_migration("feed", append, no_resume=True)
    assert snapshot(pg_connect, staging) == before
    assert plan.job.action == "new"
    (refusal,) = plan.refusals
    assert refusal.startswith("table CUSTOMERS: append overlap: refusing to append to analytics.customers")
    assert f"job {first.job_id} (completed) already loaded CUSTOMER_ID in [1, 1001)" in refusal, refusal
    assert f"Refusals (1):\n  - {refusal}" in plan.render()


def test_a_dry_run_into_influxdb_writes_no_point_and_names_the_job_claiming_the_range(
    tmp_path, servers, pg_database, pg_connect, influx_database
):
    from flows.migrate import migrate
    from tasks.dry_run import plan_migration

    records = single_measure_records(600, days=3)
    table = energy_table(mapping={"measurement": "generation", "tags": TAGS})
    path = str(
        influx_migrations(
            tmp_path / "m.yaml",
            servers,
            pg_database,
            influx_database,
            [table],
            source=unload_source(tmp_path, records),
        )
    )
    staging = tmp_path / "staging"

    def points() -> dict:
        return {s["name"]: s["values"] for s in select(servers, influx_database, "SELECT count(*) FROM /.*/")}

    before = (snapshot(pg_connect, staging), points())
    plan = plan_migration("energy", path)
    assert (snapshot(pg_connect, staging), points()) == before and before[1] == {}
    (planned,) = plan.tables
    assert plan.refusals == [] and planned.ddl == []
    assert sum(c.estimated_rows for c in planned.chunks) == records.num_rows
    kinds = {m.source_name: (m.target_name, m.target_type) for m in planned.columns}
    assert kinds["time"] == ("time", "point time (ns)") and kinds["region"] == ("region", "tag (text)")
    assert kinds["measure_value::double"] == ("measure_value::double", "field float")
    assert kinds["measure_value::bigint"] == ("measure_value::bigint", "field integer")

    first = migrate(source_name="energy", migrations_file=path)
    before = (snapshot(pg_connect, staging), points())
    plan = plan_migration("energy", path, no_resume=True)
    assert (snapshot(pg_connect, staging), points()) == before
    (refusal,) = plan.refusals
    assert refusal.startswith(
        "table generation_data: point claims: refusing to write points of generation_data"
    )
    assert f"job {first.job_id} (completed) loaded generation [" in refusal, refusal


def test_the_type_mapping_flags_a_type_that_cannot_hold_the_source_values(
    tmp_path, servers, pg_database, snowflake_kwargs
):
    from tasks.dry_run import plan_migration

    with own_snowflake_database(snowflake_kwargs) as (database, run):
        run("CREATE TABLE READINGS (ID INT, POWER DOUBLE, EXACT DOUBLE, AMOUNT NUMBER(12,4), NOTE VARCHAR)")
        run("INSERT INTO READINGS VALUES (1, 0.1, 0.5, 1.2345, 'a long note')")
        overrides = {"POWER": "real", "AMOUNT": "numeric(12,2)", "NOTE": "varchar(5)"}
        tables = [{"name": "READINGS", "chunk_column": "ID", "type_overrides": overrides}]
        path = write_migrations(
            tmp_path / "m.yaml", servers, pg_database, tables, name="types", database=database
        )
        plan = plan_migration("types", str(path))
    (table,) = plan.tables
    mapped = {m.target_name: m for m in table.columns}
    assert (mapped["power"].target_type, mapped["power"].flag) == ("real", "lossy")
    assert "real keeps about 6 significant digits" in mapped["power"].reason
    assert (mapped["exact"].target_type, mapped["exact"].flag) == ("double precision", "")
    assert mapped["amount"].flag == "lossy" and "keeps 2 decimal places" in mapped["amount"].reason
    assert mapped["note"].flag == "lossy" and "holds 5 characters" in mapped["note"].reason
    assert (mapped["id"].staged_type, mapped["id"].flag) == ("int64", "")
    assert "LOSSY: real keeps about 6 significant digits" in plan.render()


def test_the_staging_check_writes_nothing_and_still_refuses_a_folder_it_cannot_use(tmp_path):
    from blocks.staging.local import LocalStaging

    missing = tmp_path / "a" / "b"
    LocalStaging(path=str(missing)).check()
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConnectionCheckError, match="is a file, not a folder"):
        LocalStaging(path=str(blocker / "staging")).check()


def test_a_table_of_many_chunks_is_counted_once_and_its_rows_shared_out(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, demo_source
):
    from tasks.dry_run import plan_migration

    tables = [{"name": "EVENTS", "chunk_column": "EVENT_ID", "chunk_size": 500}]
    path = write_migrations(tmp_path / "m.yaml", servers, pg_database, tables, name="many")
    before = snapshot(pg_connect, tmp_path / "staging")
    plan = plan_migration("many", str(path))
    assert snapshot(pg_connect, tmp_path / "staging") == before
    (table,) = plan.tables
    with snowflake.connector.connect(**snowflake_kwargs) as conn:
        (count,) = conn.cursor().execute("SELECT count(*) FROM ANALYTICS.PUBLIC.EVENTS").fetchone()
    assert len(table.chunks) > 200 and table.rows_estimated
    assert sum(c.estimated_rows for c in table.chunks) == count
    lines = plan.render().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Table EVENTS"))
    assert "estimated by share" in lines[start] and lines[start + 1].split() == [
        "#",
        "chunk",
        "lower",
        "upper",
        "est.",
        "rows",
    ]
    shown = [line.split()[0] for line in lines[start + 2 : start + 18]]
    hidden = len(table.chunks) - 15
    assert shown == [*map(str, range(10)), "…", *map(str, range(len(table.chunks) - 5, len(table.chunks)))]
    assert lines[start + 12] == f"    … {hidden} more chunks"
