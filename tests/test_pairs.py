"""Every source with every target, through the `migrate` flow, on one small shared data set.

The pairs the other test files already run end to end (Snowflake -> PostgreSQL in
test_analytics_migration, PostgreSQL -> PostgreSQL in test_postgres_source, Parquet and
Timestream in both export modes -> InfluxDB in test_energy_migration) are not repeated here.
Each test loads `READINGS` (300 rows over three days, so three daily chunks) from one source
into one target, then reads the target back and compares every column of every row (every
field of every point) with what the source holds: a timestamp, a float, integers, text with
commas, quotes and unicode, a boolean, and NULLs.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.energy_support import assert_same_points, influx_migrations, stored, write_files
from tests.support import (
    NASTY_TAGS,
    assert_same_rows,
    normalise,
    own_snowflake_database,
    postgres_target_migrations,
    quoted,
    snowflake_source,
    source_rows,
    target_rows,
    timestream_settings,
)
from tests.timestream_fake import queue_table

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 3
ROWS = 300
COLUMNS = ["reading_id", "taken_at", "site", "power", "units", "note", "ok"]
NOTES = ["ok", "maintenance, planned", 'say "hi"', "ünïcødé €", "x=1 y=2", None]
MEASUREMENT = "readings"
FLOAT_KEYS = {"power"}


def readings() -> pa.Table:
    """ROWS rows, DAYS days from START, one row every 864 s plus an odd number of microseconds:
    a bigint key, an aware microsecond time, a tag-like text (never NULL, never empty), a
    float, a bigint beyond 2^53, a text and a boolean, the last three with NULLs."""
    i = np.arange(ROWS)
    step_us = DAYS * 86_400_000_000 // ROWS
    start_us = int(START.timestamp()) * 1_000_000
    times = start_us + i * step_us + (i * 7919) % 1_000_000
    power = [None if k % 7 == 3 else (-1) ** k * k / 3 for k in range(ROWS)]
    return pa.table(
        {
            "reading_id": pa.array(i + 1, pa.int64()),
            "taken_at": pa.array(times, pa.timestamp("us", tz="UTC")),
            "site": pa.array([(["plant 1", "plant 2"] + NASTY_TAGS)[k % 10] for k in range(ROWS)]),
            "power": pa.array(power, pa.float64()),
            "units": pa.array((i - 150) * 30_000_000_000_000_007, pa.int64()),
            "note": pa.array([NOTES[k % len(NOTES)] for k in range(ROWS)]),
            "ok": pa.array([None if k % 11 == 5 else k % 3 == 0 for k in range(ROWS)]),
        }
    )


READINGS = readings()


def window() -> dict[str, str]:
    """The run's window: START's three days, one chunk each (chunk_interval 1d)."""
    return {"start_time": START.isoformat(), "end_time": (START + timedelta(days=DAYS)).isoformat()}


def plain_rows(table: pa.Table, names: list[str]) -> list[tuple]:
    """The Arrow table's rows, columns `names`, as Python values in row order."""
    return [tuple(row.values()) for row in table.select(names).to_pylist()]


def table_rows(table: pa.Table, names: list[str]) -> list[tuple]:
    """The Arrow table's rows (columns `names`, in row order) in `normalise`'s comparable form."""
    return [tuple(normalise(v) for v in row) for row in plain_rows(table, names)]


def nanoseconds(value: datetime) -> int:
    """A time as InfluxDB's nanoseconds; naive times are UTC (what the InfluxDB target assumes)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def expected_points(names: list[str], rows: list[tuple], tag_key: str) -> dict[tuple, dict]:
    """The points the pairs' mapping makes of source rows (columns `names`, lowercase):
    measurement MEASUREMENT, site as the tag `tag_key` (a tag keeps its column's name), the
    time from taken_at, every other column a field of its own name; a NULL field is left out
    of its point."""
    points = {}
    for row in rows:
        value = dict(zip(names, row, strict=True))
        key = (MEASUREMENT, ((tag_key, value["site"]),), nanoseconds(value["taken_at"]))
        fields = {n: value[n] for n in names if n not in ("site", "taken_at") and value[n] is not None}
        assert key not in points, key
        points[key] = fields
    return points


def points_mapping(name: Any = str) -> dict:
    """The mapping of READINGS' columns, spelled as the source spells them (`name`), under
    lowercase keys."""
    return {
        "measurement": MEASUREMENT,
        "tags": [name("site")],
        "fields": [{"column": name(c), "key": c} for c in COLUMNS if c not in ("site", "taken_at")],
        "count_field": "reading_id",
    }


def assert_points_match_source(
    servers, influx_database: str, names: list[str], rows: list[tuple], tag_key: str = "site"
) -> None:
    got, types = stored(servers, influx_database)
    assert len(got) == ROWS
    assert_same_points(got, expected_points(names, rows, tag_key), FLOAT_KEYS)
    assert types[MEASUREMENT] == {
        "reading_id": "integer",
        "power": "float",
        "units": "integer",
        "note": "string",
        "ok": "boolean",
    }


def assert_three_daily_chunks(report) -> None:
    assert report.status == "completed" and report.rows == ROWS
    assert len(report.chunks) == DAYS and all(c.rows == ROWS // DAYS for c in report.chunks)


# --- row sources into InfluxDB (through the table's mapping) -------------------------------------


def test_snowflake_to_influxdb(tmp_path, servers, pg_database, influx_database, snowflake_kwargs):
    from flows.migrate import migrate

    with own_snowflake_database(snowflake_kwargs) as (database, run):
        run(
            "CREATE TABLE READINGS (READING_ID NUMBER(38,0) NOT NULL, TAKEN_AT TIMESTAMP_NTZ NOT NULL, "
            "SITE VARCHAR NOT NULL, POWER FLOAT, UNITS NUMBER(38,0), NOTE VARCHAR, OK BOOLEAN)"
        )
        values = [
            (key, at.replace(tzinfo=None).isoformat(sep=" "), *rest)
            for key, at, *rest in plain_rows(READINGS, COLUMNS)
        ]
        placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(values))
        run(f"INSERT INTO READINGS VALUES {placeholders}", [v for row in values for v in row])

        path = influx_migrations(
            tmp_path / "m.yaml",
            servers,
            pg_database,
            influx_database,
            [
                {
                    "name": "READINGS",
                    "chunk_column": "TAKEN_AT",
                    "chunk_interval": "1d",
                    "mapping": points_mapping(str.upper),
                }
            ],
            source=snowflake_source(servers, database),
            name="sf_points",
        )
        report = migrate(source_name="sf_points", migrations_file=str(path), **window())
        names, rows = source_rows(snowflake_kwargs, database, "PUBLIC", "READINGS", "READING_ID")

    assert_three_daily_chunks(report)
    assert names == COLUMNS
    as_inserted = [(k, at.replace(tzinfo=None), *rest) for k, at, *rest in table_rows(READINGS, COLUMNS)]
    assert rows == as_inserted  # the hostile text reached Snowflake as written
    assert_points_match_source(servers, influx_database, names, rows, tag_key="SITE")


@pytest.fixture
def pg_source_db(servers):
    """A PostgreSQL database of its own holding READINGS as src.readings."""
    name = "s_" + secrets.token_hex(5)
    with servers["pg"].connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with servers["pg"].connect(name) as conn:
        conn.execute("CREATE SCHEMA src")
        conn.execute(
            "CREATE TABLE src.readings (reading_id bigint PRIMARY KEY, taken_at timestamptz NOT NULL, "
            "site text NOT NULL, power double precision, units bigint, note text, ok boolean)"
        )
        with conn.cursor() as cur, cur.copy(f"COPY src.readings ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in plain_rows(READINGS, COLUMNS):
                copy.write_row(row)
    yield name
    with servers["pg"].connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_to_influxdb(tmp_path, servers, pg_database, influx_database, pg_source_db):
    from flows.migrate import migrate

    source = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": servers["pg"].port,
        "dbname": pg_source_db,
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
    path = influx_migrations(
        tmp_path / "m.yaml", servers, pg_database, influx_database, [table], source=source, name="pg_points"
    )
    report = migrate(source_name="pg_points", migrations_file=str(path), **window())

    assert_three_daily_chunks(report)
    with servers["pg"].connect(pg_source_db) as conn:
        cols = ", ".join(quoted(c) for c in COLUMNS)
        rows = [
            tuple(normalise(v) for v in row)
            for row in conn.execute(f"SELECT {cols} FROM src.readings ORDER BY reading_id").fetchall()
        ]
    assert len(rows) == ROWS
    assert_points_match_source(servers, influx_database, COLUMNS, rows)


# --- time series into PostgreSQL (as rows) -------------------------------------------------------

# READINGS as a Timestream multi-measure table: site a dimension, one measure_name, the time.
TIMESTREAM_NAMES = ["site", "measure_name", "time", "reading_id", "power", "units", "note", "ok"]
TIMESTREAM_KINDS = {"site": "VARCHAR", "measure_name": "VARCHAR", "time": "TIMESTAMP", "reading_id": "BIGINT"}
TIMESTREAM_KINDS |= {"power": "DOUBLE", "units": "BIGINT", "note": "VARCHAR", "ok": "BOOLEAN"}
TIMESTREAM_ROLES = {"site": "DIMENSION", "measure_name": "MEASURE_NAME", "time": "TIMESTAMP"}
TIMESTREAM_ROLES |= {c: "MULTI" for c in ("reading_id", "power", "units", "note", "ok")}


def timestream_records() -> pa.Table:
    """READINGS as Timestream returns it: nanosecond UTC times (whole microseconds here:
    PostgreSQL keeps microseconds and refuses finer ones), and the measure_name column."""
    records = READINGS.rename_columns(["time" if c == "taken_at" else c for c in COLUMNS])
    records = records.set_column(1, "time", records.column("time").cast(pa.timestamp("ns", tz="UTC")))
    records = records.append_column("measure_name", pa.array([MEASUREMENT] * ROWS))
    return records.select(TIMESTREAM_NAMES)


def day_windows() -> list[tuple[datetime, datetime]]:
    return [(START + timedelta(days=d), START + timedelta(days=d + 1)) for d in range(DAYS)]


def queue_timestream(servers, settings: dict, repeat: int = 1):
    """Queue the Timestream table `readings` (moto); returns the source block and each day's rows."""
    from blocks.timestream import TimestreamSettings

    source = TimestreamSettings.model_validate(settings).build("source")
    windows = queue_table(
        servers["moto"].port,
        source,
        "readings",
        timestream_records(),
        kind_by_column=TIMESTREAM_KINDS,
        roles=TIMESTREAM_ROLES,
        windows=day_windows(),
        page_rows=40,
        repeat=repeat,
    )
    return source, windows


def migrate_readings_into_postgres(tmp_path, servers, pg_database, source: dict, chunk_column: str, **run):
    from flows.migrate import migrate

    path = postgres_target_migrations(
        tmp_path / "m.yaml",
        servers,
        pg_database,
        [{"name": "readings", "chunk_column": chunk_column, "chunk_interval": "1d"}],
        source=source,
        name="series_rows",
    )
    return migrate(source_name="series_rows", migrations_file=str(path), **run)


def assert_rows_match(pg_connect, expected: pa.Table, order_by: str) -> None:
    names = expected.column_names
    got = target_rows(pg_connect, "analytics.readings", names, order_by)
    want = table_rows(expected.sort_by(order_by), names)
    assert_same_rows(want, got, names)
    with pg_connect() as conn:
        types = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'analytics.readings'::regclass AND attnum > 0 AND NOT attisdropped"
            ).fetchall()
        )
    time_column = "time" if "time" in names else "taken_at"
    assert types[time_column] == "timestamp with time zone"
    assert (types["power"], types["units"], types["note"], types["ok"]) == (
        "double precision",
        "bigint",
        "text",
        "boolean",
    )


def test_timestream_query_to_postgres(tmp_path, servers, pg_database, pg_connect):
    settings = timestream_settings(servers, "ts_" + pg_database)
    _, windows = queue_timestream(servers, settings)
    assert [w.num_rows for w in windows] == [ROWS // DAYS] * DAYS

    report = migrate_readings_into_postgres(tmp_path, servers, pg_database, settings, "time", **window())
    assert_three_daily_chunks(report)
    assert_rows_match(pg_connect, timestream_records(), "reading_id")


def test_timestream_unload_to_postgres(tmp_path, servers, pg_database, pg_connect):
    from tests.test_timestream_source import put_unload, queue_unload

    bucket = "unload-" + pg_database.replace("_", "-")
    settings = timestream_settings(
        servers, "ts_" + pg_database, export_mode="unload", unload_location=f"s3://{bucket}/x/"
    )
    # In unload mode DESCRIBE runs once more per chunk (the types to read the files back as).
    source, windows = queue_timestream(servers, settings, repeat=1 + DAYS)
    for (lower, upper), rows in zip(day_windows(), windows, strict=True):
        select_sql = source.window_sql("readings", TIMESTREAM_NAMES, "time", lower, upper)
        naive = rows.set_column(2, "time", rows.column("time").cast(pa.timestamp("ns")))  # as UNLOAD writes
        manifest = put_unload(servers, source, select_sql, [naive.slice(0, 60), naive.slice(60)])
        queue_unload(servers, source, select_sql, rows.num_rows, manifest)

    report = migrate_readings_into_postgres(tmp_path, servers, pg_database, settings, "time", **window())
    assert_three_daily_chunks(report)
    assert_rows_match(pg_connect, timestream_records(), "reading_id")


def test_parquet_files_to_postgres(tmp_path, servers, pg_database, pg_connect):
    write_files(tmp_path / "files" / "readings", READINGS)  # three files, rows shuffled across them
    source = {"type": "parquet", "location": str(tmp_path / "files")}

    report = migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at")
    assert_three_daily_chunks(report)
    assert_rows_match(pg_connect, READINGS, "reading_id")


def test_sub_microsecond_times_fail_the_chunk_instead_of_being_rounded(
    tmp_path, servers, pg_database, pg_connect
):
    """Time series often carry nanoseconds (Timestream, its UNLOAD files); PostgreSQL keeps
    microseconds, so such a time fails its chunk, naming the table and the column, and nothing
    of that chunk is loaded."""
    from blocks.errors import MigrationFailed

    times = READINGS.column("taken_at").cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy().copy()
    times[150] += 1  # one nanosecond, in the second day's chunk
    records = READINGS.set_column(1, "taken_at", pa.array(times, pa.timestamp("ns", tz="UTC")))
    write_files(tmp_path / "files" / "readings", records, files=1)
    source = {"type": "parquet", "location": str(tmp_path / "files")}
    with pytest.raises(MigrationFailed) as failure:
        migrate_readings_into_postgres(tmp_path, servers, pg_database, source, "taken_at")
    message = str(failure.value)
    assert (
        "readings.taken_at: cannot convert timestamp[ns, tz=UTC] to timestamp[us, tz=UTC] exactly" in message
    )
    assert "PostgreSQL keeps microseconds, and this value has finer precision" in message
    with pg_connect() as conn:
        days = conn.execute(
            "SELECT date_trunc('day', taken_at AT TIME ZONE 'UTC'), count(*) FROM analytics.readings GROUP BY 1"
        ).fetchall()
    # only whole chunks: the failed day has no row, a day loaded (or started alongside) has all
    assert datetime(2024, 3, 2) not in dict(days) and set(dict(days).values()) <= {ROWS // DAYS}


# --- the shipped examples ------------------------------------------------------------------------


def test_the_repos_migrations_file_has_an_example_for_every_pair():
    from tasks.config import DEFAULT_MIGRATIONS_FILE, load_migrations

    migrations = load_migrations(DEFAULT_MIGRATIONS_FILE).migrations
    pairs = {(m.source.type, m.target.type) for m in migrations.values()}
    sources, targets = ("snowflake", "postgres", "timestream", "parquet"), ("postgres", "influxdb")
    assert {(s, t) for s in sources for t in targets} <= pairs
