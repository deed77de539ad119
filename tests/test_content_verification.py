"""Content verification: a value counts cannot see is refused before commit, naming the column."""

# ruff: noqa: F811 (`source_db` is a fixture imported from test_postgres_source)

from __future__ import annotations

import pytest
import yaml

from blocks.errors import MigrationFailed
from tests.support import postgres_target_migrations
from tests.test_pairs import READINGS, migrate_readings_into_postgres, window, write_files
from tests.test_postgres_source import source_db, write_pg_migration  # noqa: F401 (a fixture)


def create_readings(conn, taken_at: str = "timestamptz", power: str = "double precision") -> None:
    """The target table the readings load into, made beforehand with these column types."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
    conn.execute(
        f"CREATE TABLE analytics.readings (reading_id bigint, taken_at {taken_at}, site text, "
        f"power {power}, units bigint, note text, ok boolean)"
    )


def test_a_real_column_for_a_double_source_is_refused(tmp_path, servers, pg_database, pg_connect):
    with pg_connect() as conn:
        create_readings(conn, power="real")
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    assert "column power holds" in str(failure.value), str(failure.value)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone()[0] == 0


def test_a_trigger_that_changes_a_value_is_refused(tmp_path, servers, pg_database, pg_connect):
    with pg_connect() as conn:
        create_readings(conn)
        conn.execute(
            "CREATE FUNCTION analytics.nudge() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.reading_id = 5 THEN NEW.note := 'changed'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER nudge BEFORE INSERT ON analytics.readings FOR EACH ROW EXECUTE FUNCTION analytics.nudge()"
        )
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    assert "column note holds 'changed'" in str(failure.value), str(failure.value)
    with pg_connect() as conn:
        assert (
            conn.execute("SELECT count(*) FROM analytics.readings WHERE note = 'changed'").fetchone()[0] == 0
        )


def test_an_encoder_fault_in_binary_copy_is_refused(tmp_path, servers, pg_database, pg_connect, monkeypatch):
    import pyarrow as pa
    import pyarrow.compute as pc

    from blocks.postgres import pg_binary

    encode = pg_binary.BinaryCopyEncoder.encode

    def faulty(self, batch):  # one bigint off by one, as a bug in the encoder would leave it
        i = batch.schema.get_field_index("units")
        units = pc.add(batch.column(i), pa.scalar(1, pa.int64()))
        return encode(self, batch.set_column(i, "units", units))

    monkeypatch.setattr(pg_binary.BinaryCopyEncoder, "encode", faulty)
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    assert "column units holds" in str(failure.value), str(failure.value)
    with pg_connect() as conn:
        exists = conn.execute("SELECT to_regclass('analytics.readings')").fetchone()[0]
        if exists:
            assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone()[0] == 0


def test_a_naive_timestamp_column_under_a_non_utc_session_zone_is_refused(
    tmp_path, servers, pg_database, pg_connect
):
    # The target's sessions default to New York time: an instant stored as its UTC wall time in
    # a `timestamp without time zone` column reads back five hours off.
    with pg_connect() as conn:
        conn.execute(f"ALTER DATABASE \"{pg_database}\" SET TimeZone = 'America/New_York'")
        create_readings(conn, taken_at="timestamp")
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    assert "column taken_at holds" in str(failure.value), str(failure.value)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone()[0] == 0


def test_a_naive_timestamp_column_under_utc_holds_the_instants_and_passes(
    tmp_path, servers, pg_database, pg_connect
):
    with pg_connect() as conn:
        conn.execute(f"ALTER DATABASE \"{pg_database}\" SET TimeZone = 'UTC'")
        create_readings(conn, taken_at="timestamp")
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone()[0] == READINGS.num_rows


def test_a_changed_bytea_value_is_refused(tmp_path, servers, source_db, pg_database, pg_connect):
    from flows.migrate import migrate

    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        conn.execute("CREATE TABLE analytics.one_blob (id bigint PRIMARY KEY, blob bytea)")
        conn.execute(
            "CREATE FUNCTION analytics.flip() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.id = 2 THEN NEW.blob := '\\x00ff'::bytea; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER flip BEFORE INSERT ON analytics.one_blob FOR EACH ROW EXECUTE FUNCTION analytics.flip()"
        )
    with servers["pg"].connect(source_db) as conn:
        conn.execute("CREATE TABLE src.one_blob (id bigint PRIMARY KEY, blob bytea)")
        conn.execute("INSERT INTO src.one_blob VALUES (1, '\\x00'), (2, '\\x0001'), (3, NULL), (4, '')")
    path = write_pg_migration(
        tmp_path / "migrations.yaml",
        servers,
        source_db,
        pg_database,
        [{"name": "one_blob", "chunk_column": "id", "primary_key": ["id"]}],
    )
    with pytest.raises(MigrationFailed) as failure:
        migrate(source_name="pg_copy", migrations_file=path)
    assert "column blob holds b'\\x00\\xff' where the source has b'\\x00\\x01' (key {'id': 2})" in str(
        failure.value
    ), str(failure.value)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.one_blob").fetchone()[0] == 0


def real_power_table(pg_connect) -> None:
    with pg_connect() as conn:
        create_readings(conn, power="real")


def readings_migration(tmp_path, servers, pg_database, **settings) -> str:
    """A migration `series_rows` of the readings files into `pg_database`, with `settings` added."""
    write_files(tmp_path / "files" / "readings", READINGS)
    path = postgres_target_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        [{"name": "readings", "chunk_column": "taken_at", "chunk_interval": "1d"}],
        source={"type": "parquet", "location": str(tmp_path / "files")},
        name="series_rows",
    )
    spec = yaml.safe_load(path.read_text())
    spec["migrations"]["series_rows"].update(settings)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def test_a_mismatch_emits_validation_failed_once_per_chunk_and_is_not_retried(
    tmp_path, servers, pg_database, pg_connect, monkeypatch
):
    from blocks.postgres import target as pg_target
    from tests.test_status import status_when

    attempts: list[str] = []
    real_verify = pg_target.verify_chunk

    def counted(conn, table, staged, xid, where, *within):
        attempts.append(where)
        return real_verify(conn, table, staged, xid, where, *within)

    monkeypatch.setattr(pg_target, "verify_chunk", counted)
    from flows.migrate import migrate

    real_power_table(pg_connect)
    retried = {"attempts": 3, "delay_seconds": 0.1, "jitter": 0.1}
    path = readings_migration(tmp_path, servers, pg_database, retries=retried)
    job_id = "verify-event-" + pg_database
    with pytest.raises(MigrationFailed):
        migrate(source_name="series_rows", migrations_file=path, job_id=job_id, **window())
    assert attempts and len(attempts) == len(set(attempts)), attempts  # each chunk checked once: no retry
    status = status_when(job_id, lambda s: s.state == "failed" and len(s.errors) > 1)
    events = [e for e in status.errors if e.startswith("validation failed, readings chunk")]
    assert events and "column power holds" in events[0], status.errors


def test_verify_counts_does_not_read_back_and_says_so(tmp_path, servers, pg_database, pg_connect):
    from flows.migrate import migrate

    real_power_table(pg_connect)
    path = readings_migration(tmp_path, servers, pg_database, verify="counts")

    # Counts cannot see the rounding: the chunks load, and the report says how they were checked.
    report = migrate(source_name="series_rows", migrations_file=path, **window())
    assert report.status == "completed" and report.verified == "counts"
    assert {c.verified for c in report.chunks} == {"counts"}
    assert "verified: counts" in report.summary()
    with pg_connect() as conn:
        rounded = conn.execute(
            "SELECT count(*) FROM analytics.readings WHERE power::float8 <> round(power::numeric, 6)::float8"
        ).fetchone()[0]
        kinds = conn.execute(
            "SELECT DISTINCT details->>'verified' FROM migration_status.migration_chunk_status "
            "WHERE job_id = %s AND status = 'loaded'",
            (report.job_id,),
        ).fetchall()
    assert rounded > 0 and kinds == [("counts",)]


def test_content_verification_is_reported_for_each_chunk_the_job_and_in_status(
    tmp_path, servers, pg_database, pg_connect
):
    from flows.migrate import migrate
    from flows.status import render, with_ledger
    from tests.test_status import status_when

    path = readings_migration(tmp_path, servers, pg_database)
    report = migrate(source_name="series_rows", migrations_file=path, **window())
    assert report.status == "completed" and report.verified == "content"
    assert len(report.chunks) == 3 and {c.verified for c in report.chunks} == {"content"}
    assert {t.verified for t in report.tables} == {"content"}
    assert "verified: content" in report.summary()
    status = with_ledger(status_when(report.job_id, lambda s: s.state == "completed"), path)
    assert status.ledger is not None and status.ledger.verified == {"content": 3}, status.ledger
    assert "verified: content (3 chunks)" in render(status)


def test_a_numeric_value_beyond_the_staged_scale_is_refused(
    tmp_path, servers, source_db, pg_database, pg_connect
):
    from flows.migrate import migrate

    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        conn.execute("CREATE TABLE analytics.amounts (id bigint, amount numeric)")
        conn.execute(
            "CREATE FUNCTION analytics.nudge() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.id = 2 THEN NEW.amount := NEW.amount + 0.00001; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER nudge BEFORE INSERT ON analytics.amounts FOR EACH ROW EXECUTE FUNCTION analytics.nudge()"
        )
    with servers["pg"].connect(source_db) as conn:
        conn.execute("CREATE TABLE src.amounts (id bigint, amount numeric(12,2))")
        conn.execute("INSERT INTO src.amounts VALUES (1, 1.10), (2, 2.25), (3, NULL)")
    path = write_pg_migration(
        tmp_path / "migrations.yaml",
        servers,
        source_db,
        pg_database,
        [{"name": "amounts", "chunk_column": "id"}],
    )
    with pytest.raises(MigrationFailed) as failure:
        migrate(source_name="pg_copy", migrations_file=path)
    assert "amounts chunk" in str(failure.value) and "column amount holds a value" in str(failure.value), str(
        failure.value
    )
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.amounts").fetchone()[0] == 0


def test_a_row_moved_out_of_its_chunk_range_is_refused(tmp_path, servers, pg_database, pg_connect):
    # The read-back looks in the chunk's range first; the transaction's own row statistics send
    # it to the whole table when a row went elsewhere, so the moved row is still compared.
    with pg_connect() as conn:
        create_readings(conn)
        conn.execute(
            "CREATE FUNCTION analytics.move() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.reading_id = 5 THEN NEW.taken_at := NEW.taken_at + interval '30 days'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER move BEFORE INSERT ON analytics.readings FOR EACH ROW EXECUTE FUNCTION analytics.move()"
        )
    path = readings_migration(tmp_path, servers, pg_database)
    from flows.migrate import migrate

    with pytest.raises(MigrationFailed) as failure:
        migrate(source_name="series_rows", migrations_file=path, **window())
    assert "column taken_at holds" in str(failure.value), str(failure.value)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings WHERE reading_id = 5").fetchone()[0] == 0


def test_the_read_back_reads_the_chunks_range_not_the_whole_table(
    tmp_path, servers, pg_database, monkeypatch
):
    from blocks.postgres import verify
    from flows.migrate import migrate

    reads: list[str] = []
    real_read_rows = verify.read_rows

    def recorded(conn, table, schema, where, params=()):
        reads.append(where.as_string(conn))
        return real_read_rows(conn, table, schema, where, params)

    monkeypatch.setattr(verify, "read_rows", recorded)
    path = readings_migration(tmp_path, servers, pg_database)
    report = migrate(source_name="series_rows", migrations_file=path, **window())
    assert report.verified == "content" and len(report.chunks) == 3
    assert len(reads) == 3 and all('"taken_at" >= %s AND "taken_at" < %s AND xmin' in r for r in reads), reads
