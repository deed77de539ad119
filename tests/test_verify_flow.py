"""The `verify` flow: after a completed job, the source changes (a row updated, one deleted,
one inserted inside the job's range, one beyond it); verify finds each by key, publishes
them, fails, and writes nothing. Into PostgreSQL (by primary key, and as multisets without
one) and into InfluxDB (by measurement, tag set and time)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from blocks.errors import ConfigError, ValidationFailed
from tests.energy_support import influx_migrations
from tests.support import postgres_target_migrations, quoted
from tests.test_pairs import READINGS, START, nanoseconds, points_mapping
from tests.test_pairs import pg_source_db as readings_source_db  # noqa: F401 (a fixture)

# Even ids 2..600, so a row can be inserted inside the job's range; three chunks of 200 keys.
CUSTOMERS = """
CREATE TABLE src.customers (id bigint PRIMARY KEY, name text, balance numeric(12,2), doc jsonb,
                            updated_at timestamptz);
INSERT INTO src.customers SELECT 2 * i, 'name ' || 2 * i, i / 4.0, jsonb_build_object('n', i, 'a', 'x,y'),
    '2024-03-01 00:00:00+00'::timestamptz + i * interval '1 minute 0.000001 second'
FROM generate_series(1, 300) i;
"""
# No primary key: compared as multisets of whole rows; a repeated row counts twice.
EVENTS = """
CREATE TABLE src.events (event_id bigint NOT NULL, kind text, amount double precision);
INSERT INTO src.events SELECT i, 'kind ' || (i % 3), i / 3.0 FROM generate_series(1, 200) i;
INSERT INTO src.events VALUES (7, 'kind 1', 7 / 3.0);
"""
TABLES = [
    {"name": "customers", "chunk_column": "id", "chunk_size": 200, "primary_key": ["id"]},
    {"name": "events", "chunk_column": "event_id", "chunk_size": 100},
]


@pytest.fixture
def source_db(servers):
    """A PostgreSQL database of its own, schema `src`, holding customers and events."""
    name = "s_" + secrets.token_hex(5)
    with servers["pg"].connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with servers["pg"].connect(name) as conn:
        conn.execute("CREATE SCHEMA src")
        conn.execute(CUSTOMERS)
        conn.execute(EVENTS)
    yield name
    with servers["pg"].connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated(tmp_path, servers, pg_database, source_db):
    """A completed job of migration `pg_verify` from `source_db` into `pg_database`:
    (job_id, migrations file, a function running SQL in the source)."""
    from flows.migrate import migrate

    source = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": servers["pg"].port,
        "dbname": source_db,
        "user": "postgres",
        "password_env": "PGPASSWORD",
        "schema": "src",
    }
    path = postgres_target_migrations(
        tmp_path / "m.yaml", servers, pg_database, TABLES, source=source, name="pg_verify"
    )
    report = migrate(source_name="pg_verify", migrations_file=str(path))
    assert report.status == "completed" and report.rows == 300 + 201

    def in_source(statement: str) -> None:
        with servers["pg"].connect(source_db) as conn:
            conn.execute(statement)

    return report.job_id, str(path), in_source


def snapshot(connect, staging: Path) -> tuple[dict, list[str]]:
    """Every row of the target's tables and of the ledger, as text with its `xmin` (a row
    rewritten, even to the same values, shows), and the files under staging."""
    with connect() as conn:
        names = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('analytics', 'migration_status') ORDER BY 1, 2"
        ).fetchall()
        rows = {
            (schema, name): sorted(
                conn.execute(f"SELECT xmin::text, t::text FROM {quoted(schema)}.{quoted(name)} t").fetchall()
            )
            for schema, name in names
        }
    return rows, sorted(str(p) for p in staging.rglob("*"))


def artifact_rows(job_id: str) -> dict[str, dict]:
    from prefect.artifacts import Artifact

    from tasks.progress import artifact_slug

    artifact = Artifact.get(f"verify-{artifact_slug(job_id)}")
    assert artifact is not None
    data = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    return {row["table"]: row for row in data}


def validation_failed_events(job_id: str, count: int) -> list:
    """The `migration.validation.failed` events of the job, once `count` of them have arrived."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    events = []
    for _ in range(40):
        with get_client(sync_client=True) as client:
            events = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["migration.validation.failed"]),
                    resource=EventResourceFilter(id=[f"migration.job.{job_id}"]),
                ),
                limit=50,
            ).events
        if len(events) >= count:
            return events
        time.sleep(0.25)
    raise AssertionError(f"{len(events)} validation.failed events for job {job_id}, expected {count}")


def verify_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`python -m flows.verify ARGV`: its exit code, and what it printed to stdout and stderr."""
    from flows.verify import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_finds_a_changed_a_deleted_and_an_inserted_row_by_key(tmp_path, pg_connect, migrated, capsys):
    from flows.verify import verify

    job_id, path, in_source = migrated
    clean = verify(job_id=job_id, migrations_file=path)
    assert clean.same
    code, out, _ = verify_cli(capsys, job_id, "--migrations-file", path)
    assert code == 0 and "the target matches the source" in out
    by_table = {t.table: t for t in clean.tables}
    assert by_table["customers"].chunks_checked == 3 and by_table["customers"].source_rows == 300
    assert by_table["events"].key == [] and by_table["events"].target_rows == 201
    assert artifact_rows(job_id)["customers"]["missing_in_target"] == 0

    in_source("UPDATE src.customers SET name = 'renamed' WHERE id = 100")
    in_source("DELETE FROM src.customers WHERE id = 300")
    in_source("INSERT INTO src.customers VALUES (451, 'new inside', 1.5, '{\"n\": 0}', now())")
    in_source("INSERT INTO src.customers VALUES (9001, 'new beyond the job', 2.5, NULL, now())")
    in_source("UPDATE src.events SET kind = 'changed' WHERE event_id = 150")
    in_source(
        "UPDATE src.events SET amount = 'NaN' WHERE event_id = 7 AND kind = 'kind 1' AND ctid IN "
        "(SELECT min(ctid) FROM src.events WHERE event_id = 7)"
    )
    before = snapshot(pg_connect, tmp_path / "staging")

    with pytest.raises(ValidationFailed) as failure:
        verify(job_id=job_id, source_name="pg_verify", migrations_file=path)

    message = str(failure.value)
    assert f"verify job {job_id} (pg_verify): the target differs from the source in 2 table(s)" in message
    assert "customers: 2 missing in the target (e.g. id=451)" in message
    assert "1 extra in the target (e.g. id=300)" in message
    assert (
        "1 changed in ['name'] (e.g. id=100 name: 'renamed' in the source, 'name 100' in the target)"
        in message
    )
    rows = artifact_rows(job_id)
    customers, events = rows["customers"], rows["events"]
    assert (customers["missing_in_target"], customers["extra_in_target"], customers["changed"]) == (2, 1, 1)
    assert customers["sample_missing"] == "id=451; id=9001"
    assert customers["sample_extra"] == "id=300"
    assert customers["sample_changed"] == "id=100: name 'renamed' → 'name 100'"
    assert customers["changed_columns"] == "name: 1"
    assert customers["chunks_checked"] == 3 and customers["rows_beyond_job"] == 1
    assert customers["source_rows"] == 301 and customers["target_rows"] == 300
    # Without a key a changed row is one missing and one extra; the repeated row 7 counts twice.
    assert events["key"] == "(none: compared as multisets)"
    assert (events["missing_in_target"], events["extra_in_target"], events["changed"]) == (2, 2, 0)
    assert "event_id=150, kind=changed" in events["sample_missing"]
    assert "event_id=150, kind=kind 0" in events["sample_extra"]
    assert "event_id=7, kind=kind 1, amount=nan" in events["sample_missing"]
    assert snapshot(pg_connect, tmp_path / "staging") == before  # nothing written, nothing staged
    announced = validation_failed_events(job_id, 2)
    assert {e.resource["migration.table"] for e in announced} == {"customers", "events"}
    code, out, err = verify_cli(capsys, job_id, "pg_verify", "--migrations-file", path)
    assert (code, out) == (1, "") and err.endswith(message + "\n"), err
    assert all(e.payload["check"] == "verify" for e in announced)
    assert any(e.payload["error"].startswith("verify: customers: 2 missing") for e in announced)


def test_verify_refuses_an_unknown_and_a_rolled_back_job(migrated, capsys):
    from flows.rollback import rollback
    from flows.verify import verify

    job_id, path, _ = migrated
    with pytest.raises(ConfigError, match="job pg_verify-nope is not in the ledger of migration 'pg_verify'"):
        verify(job_id="pg_verify-nope", migrations_file=path)
    code, _, err = verify_cli(capsys, "pg_verify-nope", "--migrations-file", path)
    assert code == 2 and "verify refused: job pg_verify-nope is not in the ledger" in err, err
    rollback(job_id=job_id, migrations_file=path)
    with pytest.raises(ConfigError, match="was rolled back"):
        verify(job_id=job_id, migrations_file=path)


def influx_points(servers, database: str) -> list:
    """Every point of the database as InfluxDB returns it (series, tags, values)."""
    from devstack.servers import influxql

    results = influxql(servers["influx"], "SELECT * FROM /.*/ GROUP BY *", database)
    return sorted(
        (s["name"], sorted((s.get("tags") or {}).items()), s["values"])
        for r in results
        for s in r.get("series", [])
    )


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_verify_finds_changed_deleted_and_inserted_points_by_key(
    tmp_path,
    servers,
    pg_database,
    pg_connect,
    influx_database,
    readings_source_db,  # noqa: F811 (the fixture imported above)
    api,
):
    """PostgreSQL readings into InfluxDB with no time window, so rows past the job's last chunk
    are checked too; a point's key is its measurement, tag set and time."""
    from flows.migrate import migrate
    from flows.verify import verify

    source = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": servers["pg"].port,
        "dbname": readings_source_db,
        "user": "postgres",
        "password_env": "PGPASSWORD",
        "schema": "src",
    }
    table = {
        "name": "readings",
        "chunk_column": "taken_at",
        "chunk_interval": "1d",
        "mapping": points_mapping(),
    }
    path = str(
        influx_migrations(
            tmp_path / "m.yaml",
            servers,
            pg_database,
            influx_database,
            [table],
            source=source,
            api=api,
            name="pg_points",
        )
    )
    report = migrate(source_name="pg_points", migrations_file=path)
    assert report.status == "completed" and report.rows == READINGS.num_rows
    clean = verify(job_id=report.job_id, migrations_file=path)
    assert clean.same and clean.tables[0].source_rows == READINGS.num_rows
    assert clean.tables[0].key == ["_measurement", "site", "time"]

    rows = {r["reading_id"]: r for r in READINGS.to_pylist()}
    changed, deleted = rows[12], rows[20]
    inside = START.replace(hour=5, minute=1, second=2, microsecond=3)
    beyond = START.replace(day=START.day + 5)
    with servers["pg"].connect(readings_source_db) as conn:
        conn.execute("UPDATE src.readings SET power = 12345.5 WHERE reading_id = 12")
        conn.execute("DELETE FROM src.readings WHERE reading_id = 20")
        conn.execute(
            "INSERT INTO src.readings VALUES (1001, %s, 'plant 9', 1.5, 7, 'new', true), "
            "(1002, %s, 'plant 9', 2.5, 8, 'later', false)",
            (inside, beyond),
        )
    before = influx_points(servers, influx_database), snapshot(pg_connect, tmp_path / "staging")

    with pytest.raises(ValidationFailed) as failure:
        verify(job_id=report.job_id, source_name="pg_points", migrations_file=path)

    def key(site: str, at) -> str:
        return f"_measurement=readings, site={site}, time={nanoseconds(at)}"

    assert f"readings: 2 missing in the target (e.g. {key('plant 9', inside)})" in str(failure.value)
    row = artifact_rows(report.job_id)["readings"]
    assert (row["missing_in_target"], row["extra_in_target"], row["changed"]) == (2, 1, 1)
    assert row["sample_missing"] == f"{key('plant 9', inside)}; {key('plant 9', beyond)}"
    assert row["sample_extra"] == key(deleted["site"], deleted["taken_at"])
    # Field values in the target's canonical form: the float's shortest text.
    assert row["sample_changed"] == (
        f"{key(changed['site'], changed['taken_at'])}: power '12345.5' → '{changed['power']!r}'"
    )
    assert row["changed_columns"] == "power: 1" and row["rows_beyond_job"] == 1
    assert (influx_points(servers, influx_database), snapshot(pg_connect, tmp_path / "staging")) == before


def test_the_validation_failed_notification_says_when_verify_found_it():
    """The `migration-validation-failed` body, rendered as the server renders it, for a verify
    event and for a chunk's failed check."""
    from prefect.server.utilities.user_templates import render_user_template_sync

    from deployments.templates import VALIDATION_FAILED_BODY

    def body(payload: dict) -> str:
        resource = {"id": "migration.job.j-1", "migration.table": "customers", "migration.chunk": "00001-ab"}
        event = {"resource": resource, "payload": payload}
        return render_user_template_sync(VALIDATION_FAILED_BODY, {"event": event, "flow_run": None})

    found = body({"error": "verify: customers: 1 extra", "check": "verify"})
    assert found.startswith(
        "The verify flow found the target no longer matches the source (it changed nothing)."
    )
    assert "Job: j-1\nTable: customers\nChunk: 00001-ab\nError: verify: customers: 1 extra" in found
    assert body({"error": "column x"}).startswith("A validation check failed; the chunk was not loaded.")
