"""Snowflake times over their whole range (years 1 to 9999) into PostgreSQL, exactly.

The Snowflake connector turns each Arrow record batch's timestamps into nanoseconds when they
fit (1677-09-21 .. 2262-04-11) and into microseconds when they do not, so one result could hold
batches of both units and fail to assemble (snowflake-connector-python #1378). Its
`force_microsecond_precision` drops digits finer than a microsecond without a word. The source
reads each timestamp as its whole second plus the nanoseconds of that second, and rebuilds it
exactly (blocks/snowflake.py, `exact_times`).

The end-to-end tests run the `migrate` flow through the real connector against the session's
fakesnow server (which sends results in record batches of 1,000 rows, as Snowflake sends
several) and the real PostgreSQL. fakesnow keeps microseconds only, so a value with finer digits
is made by adding nanoseconds to the SQL the source sends; the unit tests feed the rebuilding
step batches in every unit the connector can return.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from blocks.errors import DataConversionError, MigrationError, MigrationFailed
from tests.support import (
    assert_same_rows,
    own_snowflake_database,
    source_rows,
    target_rows,
    target_tables,
    write_migrations,
)

# More rows than the stand-in puts in one record batch, so a chunk arrives in several.
ORDINARY_ROWS = 2_500

# (NTZ and LTZ text, TIMESTAMP_TZ text, DATE text); NULLs come from the ordinary rows.
EXTREMES = [
    ("0001-01-01 00:00:00", "0001-01-01 00:00:00+00:00", "0001-01-01"),
    ("0001-01-01 00:00:00.000001", "0001-01-01 00:00:00.000001+00:00", "0001-01-02"),
    ("9999-12-31 23:59:59.999999", "9999-12-31 23:59:59.999999+00:00", "9999-12-31"),
    ("1677-09-21 00:12:43.145224", "1677-09-21 00:12:43.145224+00:00", "1677-09-21"),  # a µs before ns begin
    ("2262-04-11 23:47:16.854776", "2262-04-11 23:47:16.854776+00:00", "2262-04-11"),  # a µs after they end
    ("1969-12-31 23:59:59.999999", "1969-12-31 23:59:59.999999+00:00", "1969-12-31"),
]


@pytest.fixture
def snow(snowflake_kwargs):
    with own_snowflake_database(snowflake_kwargs) as own:
        yield own


def extremes_table(run) -> None:
    """EXTREMES: ORDINARY_ROWS rows of 2024 times and 2020s dates (every tenth value of each
    column NULL), then one row per entry of `EXTREMES`, so the last record batch holds times
    outside the nanosecond range and the first does not."""
    run(
        "CREATE TABLE EXTREMES (ID NUMBER(38,0) NOT NULL, NTZ TIMESTAMP_NTZ, LTZ TIMESTAMP_LTZ, "
        "TZ TIMESTAMP_TZ, D DATE)"
    )
    run(
        "INSERT INTO EXTREMES SELECT n, "
        "IFF(MOD(n, 10) = 3, NULL, DATEADD(microsecond, n * 7919, '2024-03-01 00:00:00'::TIMESTAMP_NTZ)), "
        "IFF(MOD(n, 10) = 4, NULL, DATEADD(microsecond, n * 7919, '2024-03-01 00:00:00'::TIMESTAMP_LTZ)), "
        "IFF(MOD(n, 10) = 5, NULL, DATEADD(microsecond, -n * 7919, '2024-03-01 00:00:00+02:00'::TIMESTAMP_TZ)), "
        "IFF(MOD(n, 10) = 6, NULL, DATEADD(day, n, '2020-01-01'::DATE)) "
        f"FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => {ORDINARY_ROWS})))"
    )
    for k, (naive, aware, day) in enumerate(EXTREMES):
        run("INSERT INTO EXTREMES VALUES (%s, %s, %s, %s, %s)", (ORDINARY_ROWS + k, naive, naive, aware, day))


def migrations_file(tmp_path, servers, pg_database, database, table, **extra) -> str:
    return str(
        write_migrations(
            tmp_path / "migrations.yaml",
            servers,
            pg_database,
            [{"name": table, "chunk_column": "ID", "chunk_size": 100_000}],
            database=database,
            extra=extra or None,
        )
    )


def test_times_from_year_1_to_9999_reach_postgres_exactly(
    tmp_path, servers, pg_database, pg_connect, snowflake_kwargs, snow
):
    import snowflake.connector

    from flows.migrate import migrate

    database, run = snow
    extremes_table(run)
    # The premise: read as Arrow the plain way, this table's batches disagree on the time unit.
    conn = snowflake.connector.connect(**snowflake_kwargs, database=database, schema="PUBLIC")
    try:
        cur = conn.cursor()
        cur.execute("SELECT * FROM EXTREMES")
        with pytest.raises(pa.ArrowInvalid, match=r"Schema at index \d+ was different"):
            list(cur.fetch_arrow_batches())
    finally:
        conn.close()

    report = migrate(
        source_name="analytics",
        migrations_file=migrations_file(tmp_path, servers, pg_database, database, "EXTREMES"),
    )
    assert report.status == "completed" and report.rows == ORDINARY_ROWS + len(EXTREMES)
    names, expected = source_rows(snowflake_kwargs, database, "PUBLIC", "EXTREMES", "ID")
    actual = target_rows(pg_connect, "analytics.extremes", names, "id")
    assert_same_rows(expected, actual, names)

    # The comparison above is with what fakesnow hands back; the extremes are the ones written.
    for (naive, aware, day), row in zip(EXTREMES, actual[ORDINARY_ROWS:], strict=True):
        moment = datetime.fromisoformat(naive)
        assert row[1:] == (
            moment,
            moment.replace(tzinfo=UTC),
            datetime.fromisoformat(aware),
            date.fromisoformat(day),
        )
    assert {None} < {row[1] for row in actual} and {None} < {row[4] for row in actual}
    with pg_connect() as conn:
        kinds = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'analytics.extremes'::regclass AND attnum > 0"
            ).fetchall()
        )
    assert kinds == {
        "id": "bigint",
        "ntz": "timestamp without time zone",
        "ltz": "timestamp with time zone",
        "tz": "timestamp with time zone",
        "d": "date",
    }


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            "2024-03-01 12:00:00.000001",
            "NANOS.TS: cannot convert timestamp[ns] to timestamp[us] exactly: Casting from "
            "timestamp[ns] to timestamp[us] would lose data: 1709294400000001789; PostgreSQL "
            "keeps microseconds, and this value has finer precision",
        ),
        (
            "9999-12-31 23:59:59.999999",
            "NANOS.TS holds 9999-12-31 23:59:59.999999789, finer than a microsecond (PostgreSQL keeps "
            "microseconds) and outside 1677-09-21 00:12:43.145224192 .. 2262-04-11 23:47:16.854775807, "
            "where nanosecond times end: it cannot be staged exactly",
        ),
    ],
    ids=["inside the nanosecond range", "year 9999"],
)
def test_a_time_finer_than_a_microsecond_fails_at_once_naming_the_column_and_loads_nothing(
    tmp_path, servers, pg_database, pg_connect, snow, monkeypatch, when, message
):
    import blocks.snowflake.source as snowflake_block
    from flows.migrate import migrate

    database, run = snow
    run("CREATE TABLE NANOS (ID NUMBER(38,0) NOT NULL, TS TIMESTAMP_NTZ, V VARCHAR)")
    run(
        "INSERT INTO NANOS SELECT n, DATEADD(second, n, '2024-03-01 00:00:00'::TIMESTAMP_NTZ), 'v' || n "
        "FROM (SELECT SEQ4() AS n FROM TABLE(GENERATOR(ROWCOUNT => 20)))"
    )
    run("INSERT INTO NANOS VALUES (100, %s, 'finer')", (when,))

    # fakesnow keeps microseconds: give row 100 another 789 ns where the source asks for them.
    real_select = snowflake_block.timestamp_select

    def with_nanoseconds(name, snowflake_type):
        seconds, nanoseconds = real_select(name, snowflake_type)
        return seconds, f'{nanoseconds} + IFF("ID" = 100, 789, 0)'

    monkeypatch.setattr(snowflake_block, "timestamp_select", with_nanoseconds)
    reads: list[str] = []
    real_read = snowflake_block.SnowflakeSource.read_chunk

    def counting_read(self, table, *args):
        reads.append(table)
        yield from real_read(self, table, *args)

    monkeypatch.setattr(snowflake_block.SnowflakeSource, "read_chunk", counting_read)
    retried = {"retries": {"attempts": 2, "delay_seconds": 0.1, "jitter": 0.1}}
    file = migrations_file(tmp_path, servers, pg_database, database, "NANOS", **retried)
    with pytest.raises(MigrationFailed) as failed:
        migrate(source_name="analytics", migrations_file=file, rollback_enabled=True)
    assert message in str(failed.value)
    assert reads == ["NANOS"], "a value that cannot be held exactly was read again"
    assert target_tables(pg_connect) == {}  # nothing loaded; the rollback dropped the empty table


# The rebuilding step, fed what the connector can return ----------------------------------------

# 0001-01-01 00:00:00.5 (before the nanosecond range), 2024-03-01 12:00:00.25, NULL, 9999-12-31 23:59:59.999999
SECONDS = [-62_135_596_800, 1_709_294_400, None, 253_402_300_799]
NANOSECONDS = [500_000_000, 250_000_000, None, 999_999_000]
MICROSECONDS = [-62_135_596_799_500_000, 1_709_294_400_250_000, None, 253_402_300_799_999_999]


def connector_batch(unit: str, tz: str | None, seconds=SECONDS, nanoseconds=NANOSECONDS) -> pa.RecordBatch:
    """What the connector hands over for `SELECT ID, <whole seconds of TS>, <nanoseconds of TS>`:
    the whole seconds in `unit` (the unit it picks per batch: seconds for Snowflake's TIMESTAMP(0),
    microseconds when asked, nanoseconds where the values fit)."""
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    ticks = [None if s is None else s * per_second for s in seconds]
    if unit == "ns":
        ticks = [None if t is None or not -(2**63) <= t < 2**63 else t for t in ticks]
    return pa.record_batch(
        [
            pa.array(range(len(seconds)), pa.int64()),
            pa.array(ticks, pa.int64()).cast(pa.timestamp(unit, tz)),
            pa.array(nanoseconds, pa.int32()),
        ],
        names=["ID", "TS", "DATE_PART(NANOSECOND, TS)"],
    )


@pytest.mark.parametrize("tz", [None, "America/New_York"])
def test_batches_in_any_time_unit_come_out_in_microseconds_alike(tz):
    from blocks.snowflake.source import exact_times

    batches = [connector_batch(unit, tz) for unit in ("s", "ms", "us")]
    out = [exact_times(b, ["ID", "TS"], [1], "T") for b in batches]
    assert {b.schema for b in out} == {pa.schema([("ID", pa.int64()), ("TS", pa.timestamp("us", tz))])}
    table = pa.Table.from_batches(out)  # what failed before: batches that disagree on the unit
    assert table.column("TS").cast(pa.int64()).to_pylist() == MICROSECONDS * 3

    # A batch in nanoseconds holds only what fits; it gives the same microseconds.
    inside = connector_batch("ns", tz, SECONDS[1:3], NANOSECONDS[1:3])
    assert (
        exact_times(inside, ["ID", "TS"], [1], "T").column(1).cast(pa.int64()).to_pylist()
        == MICROSECONDS[1:3]
    )


def test_finer_digits_inside_the_nanosecond_range_come_out_exact_and_postgres_refuses_them():
    from blocks.arrow_types import conform, staged_schema
    from blocks.columns import Column, LogicalType
    from blocks.snowflake.source import exact_times

    batch = connector_batch("us", None, SECONDS[1:3], [250_000_789, None])
    out = exact_times(batch, ["ID", "TS"], [1], "T")
    assert out.column(1).type == pa.timestamp("ns")
    assert out.column(1).cast(pa.int64()).to_pylist() == [1_709_294_400_250_000_789, None]

    columns = (
        Column(name="ID", logical=LogicalType.INTEGER, nullable=False),
        Column(name="TS", logical=LogicalType.TIMESTAMP),
    )
    with pytest.raises(
        DataConversionError, match=r"^T\.TS: cannot convert .*would lose data: 1709294400250000789"
    ):
        conform(out, staged_schema(columns, set()), ["ID", "TS"], "T")
    # InfluxDB stages nanoseconds: the value reaches it whole.
    staged = conform(out, staged_schema(columns, set(), nanoseconds=True), ["ID", "TS"], "T")
    assert staged.column(1).cast(pa.int64()).to_pylist() == [1_709_294_400_250_000_789, None]


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_finer_digits_outside_the_nanosecond_range_name_the_table_column_and_value(tz):
    from blocks.snowflake.source import exact_times

    batch = connector_batch("us", tz, [1_709_294_400, -62_135_596_800], [0, 5])
    with pytest.raises(DataConversionError) as raised:
        exact_times(batch, ["ID", "TS"], [1], "T")
    assert str(raised.value).startswith(
        "T.TS holds 0001-01-01 00:00:00.000000005" + (" UTC" if tz else "") + ", finer than a microsecond"
    )
    assert isinstance(raised.value, MigrationError)  # permanent: not retried


def test_batches_whose_types_disagree_name_the_column():
    """The connector's own error for a result whose record batches came out in different units,
    turned into a permanent error that names the column."""
    from snowflake.connector.arrow_context import ArrowConverterContext
    from snowflake.connector.nanoarrow_arrow_iterator import PyArrowTableIterator

    from blocks.snowflake.source import batches_disagree

    fields = [
        pa.field("ID", pa.int64(), metadata={"logicalType": "FIXED", "scale": "0", "precision": "38"}),
        pa.field(
            "TS",
            pa.struct([("epoch", pa.int64()), ("fraction", pa.int32())]),
            metadata={"logicalType": "TIMESTAMP_NTZ", "scale": "9"},
        ),
    ]
    schema = pa.schema(fields)

    def raw(epoch: int) -> pa.RecordBatch:
        ts = pa.StructArray.from_arrays(
            [pa.array([epoch], pa.int64()), pa.array([0], pa.int32())], names=["epoch", "fraction"]
        )
        return pa.record_batch([pa.array([1], pa.int64()), ts], schema=schema)

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(raw(1_709_294_400))  # 2024: nanoseconds
        writer.write_batch(raw(253_402_300_799))  # 9999: microseconds
    with pytest.raises(pa.ArrowInvalid) as raised:
        PyArrowTableIterator(
            None,
            sink.getvalue().to_pybytes(),
            ArrowConverterContext({"TIMEZONE": "UTC"}),
            False,
            False,
            True,
            True,
            False,
        )

    error = batches_disagree(raised.value, ["ID", "TS"], "EXTREMES")
    assert isinstance(error, DataConversionError)
    assert str(error) == (
        "EXTREMES.TS: Snowflake sent it as timestamp[ns] in one record batch and as timestamp[us] "
        "in another, so the chunk cannot be staged"
    )
    assert batches_disagree(pa.ArrowInvalid("something else"), ["ID", "TS"], "EXTREMES") is None
