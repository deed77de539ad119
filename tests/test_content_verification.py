"""WIP issue 13: a value counts cannot see is refused before commit, naming the column."""

from __future__ import annotations

import pytest

from blocks.errors import MigrationFailed
from tests.test_pairs import READINGS, migrate_readings_into_postgres, window, write_files
from tests.test_postgres_source import source_db, write_pg_migration  # noqa: F401 (a fixture)


def test_a_real_column_for_a_double_source_is_refused(tmp_path, servers, pg_database, pg_connect):
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        conn.execute(
            "CREATE TABLE analytics.readings (reading_id bigint, taken_at timestamptz, site text, "
            "power real, units bigint, note text, ok boolean)"
        )
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    assert "column power holds" in str(failure.value), str(failure.value)
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone()[0] == 0


def test_a_trigger_that_changes_a_value_is_refused(tmp_path, servers, pg_database, pg_connect):
    with pg_connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        conn.execute(
            "CREATE TABLE analytics.readings (reading_id bigint, taken_at timestamptz, site text, "
            "power double precision, units bigint, note text, ok boolean)"
        )
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
        conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        conn.execute(
            "CREATE TABLE analytics.readings (reading_id bigint, taken_at timestamp, site text, "
            "power double precision, units bigint, note text, ok boolean)"
        )
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
        conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        conn.execute(
            "CREATE TABLE analytics.readings (reading_id bigint, taken_at timestamp, site text, "
            "power double precision, units bigint, note text, ok boolean)"
        )
    write_files(tmp_path / "files" / "readings", READINGS)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at", **window())
    with pg_connect() as conn:
        assert conn.execute("SELECT count(*) FROM analytics.readings").fetchone()[0] == READINGS.num_rows


def test_a_changed_bytea_value_is_refused(tmp_path, servers, source_db, pg_database, pg_connect):  # noqa: F811
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
