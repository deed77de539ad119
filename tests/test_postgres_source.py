"""PostgreSQL as a source: the block's protocol against the session PostgreSQL, and the
`migrate` flow from one PostgreSQL database to another, compared value by value."""

from __future__ import annotations

import json
import math
import os
import secrets
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
import yaml
from pydantic import SecretStr

from blocks.columns import Column, LogicalType
from blocks.errors import ConnectionCheckError, DataConversionError, SourceSchemaError, is_transient
from blocks.postgres import adbc_export
from blocks.postgres.credentials import PostgresCredentials
from blocks.postgres.csv_export import CsvBlockParser, hex_to_binary, numeric_typmod
from blocks.postgres.source import PostgresSource

SCHEMA = "src"

EVERY_TYPE = """
CREATE TABLE src.every_type (
    id bigint PRIMARY KEY,
    small smallint NOT NULL,
    medium integer,
    amount numeric(18,4),
    wide numeric(38,10),
    whole numeric(38,0),
    ratio real,
    score double precision,
    label text,
    code varchar(12),
    flag char(3),
    ok boolean,
    day date,
    at_time time,
    at_ts timestamp,
    at_tstz timestamptz,
    doc json,
    payload jsonb,
    blob bytea,
    uid uuid,
    "Mixed Case, ""quoted"" col" text
)
"""

NASTY_TEXT = [
    "",
    None,
    "NULL",
    "\\N",
    "a,b",
    'q"uote"',
    '""',
    "new\nline",
    "cr\r\nlf",
    "back\\slash\\",
    "ünïcødé €😀",
    " leading space",
    "\\.",
    "tab\there",
    "x" * 100_000,
]
NASTY_FLOATS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    0.0,
    5e-324,
    1.7976931348623157e308,
    0.1,
    1 / 3,
    -2.2250738585072014e-308,
]
NASTY_DECIMALS = [
    Decimal("99999999999999.9999"),
    Decimal("-99999999999999.9999"),
    Decimal("0.0001"),
    Decimal("0"),
    None,
]
NASTY_TIMESTAMPS = [
    datetime(1, 1, 1),
    datetime(1900, 1, 1, 0, 0, 0, 1),
    datetime(1969, 12, 31, 23, 59, 59, 999999),
    datetime(1970, 1, 1),
    datetime(2024, 2, 29, 12, 34, 56, 789012),
    datetime(9999, 12, 31, 23, 59, 59, 999999),
]
NASTY_JSON = ['{"a": [1, "x,y", null], "b": "q\\"uote\\n"}', "null", '"text"', "[]", "{}", None]


def nasty_rows() -> list[tuple]:
    """Rows that cycle through every awkward value of every column, ids with gaps and a negative."""
    rows = []
    ids = [-7, *range(1, 40), 1_000_000, 9_223_372_036_854_775_807]
    for n, key in enumerate(ids):
        rows.append(
            (
                key,
                [-32768, 32767, 0][n % 3],
                [None, -2147483648, 2147483647, 7][n % 4],
                NASTY_DECIMALS[n % len(NASTY_DECIMALS)],
                [Decimal("9999999999999999999999999999.9999999999"), Decimal("-0.0000000001"), None][n % 3],
                [Decimal("9" * 38), Decimal("-" + "9" * 38), Decimal("0")][n % 3],
                [0.1, float("nan"), 3.4028235e38, -0.0, None][n % 5],
                NASTY_FLOATS[n % len(NASTY_FLOATS)],
                NASTY_TEXT[n % len(NASTY_TEXT)],
                NASTY_TEXT[(n + 3) % len(NASTY_TEXT)][:12] if NASTY_TEXT[(n + 3) % len(NASTY_TEXT)] else None,
                ["ab", "", None, "a,b"][n % 4],
                [True, False, None][n % 3],
                [date(1, 1, 1), date(1969, 12, 31), date(9999, 12, 31), None][n % 4],
                [time(0, 0), time(23, 59, 59, 999999), time(12, 34, 56, 789000), None][n % 4],
                NASTY_TIMESTAMPS[n % len(NASTY_TIMESTAMPS)],
                NASTY_TIMESTAMPS[(n + 1) % len(NASTY_TIMESTAMPS)].replace(tzinfo=UTC),
                ['{"b":1,  "a":2}', "[1,2]", None][n % 3],
                NASTY_JSON[n % len(NASTY_JSON)],
                [bytes(range(256)), b"", None, b"\x00", b'\\x00,\n"'][n % 5],
                [None, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"][n % 2],
                NASTY_TEXT[(n + 7) % len(NASTY_TEXT)],
            )
        )
    return rows


def fill(conn) -> None:
    conn.execute(f"CREATE SCHEMA {SCHEMA}")
    conn.execute(EVERY_TYPE)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO src.every_type VALUES (" + ", ".join(["%s"] * 21) + ")", nasty_rows())
        # Bulk rows so a chunk spans several COPY blocks.
        cur.execute(
            "INSERT INTO src.every_type (id, small, label, score, blob, at_tstz, amount, payload) "
            "SELECT 10000 + i, i % 100, repeat('row ' || i || ', \"q\"' || chr(10), 1 + i % 3), "
            "i / 7.0, decode(lpad(to_hex(i), 8, '0'), 'hex'), "
            "'1960-01-01'::timestamptz + i * interval '1 hour 1.000001 second', (i / 3.0)::numeric(18,4), "
            "jsonb_build_object('i', i, 's', 'v,' || i) FROM generate_series(1, 20000) i"
        )
        cur.execute(
            "CREATE TABLE src.readings (reading_id bigint NOT NULL, taken_at timestamptz NOT NULL, "
            "site text, value double precision)"
        )
        cur.execute(
            "INSERT INTO src.readings SELECT i, '2024-03-01 00:00:00+00'::timestamptz "
            "+ i * interval '37 seconds 123457 microseconds', 'site ' || (i % 5), i * 0.25 "
            "FROM generate_series(0, 9000) i"
        )
        cur.execute("CREATE TABLE src.local_readings (taken_at timestamp NOT NULL, note text, n integer)")
        cur.execute(
            "INSERT INTO src.local_readings SELECT '1969-12-30 22:00:00'::timestamp "
            "+ i * interval '61 minutes 0.000003 seconds', CASE WHEN i % 4 = 0 THEN NULL "
            "WHEN i % 4 = 1 THEN '' ELSE 'n' || i END, i FROM generate_series(0, 200) i"
        )
        cur.execute("CREATE TABLE src.empty (id bigint, label text)")
        cur.execute("CREATE TABLE src.one_text (label text)")
        cur.executemany("INSERT INTO src.one_text VALUES (%s)", [(v,) for v in ["", None, "x", None, ""]])


@pytest.fixture
def source_db(servers):
    """A PostgreSQL database of its own holding the source tables (schema `src`)."""
    name = "s_" + secrets.token_hex(5)
    pg = servers["pg"]
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with pg.connect(name) as conn:
        fill(conn)
    yield name
    with pg.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def source(servers, source_db) -> PostgresSource:
    # Small blocks, so every chunk of the bulk rows is parsed in several blocks.
    return PostgresSource(
        credentials=PostgresCredentials(
            host="127.0.0.1",
            port=servers["pg"].port,
            dbname=source_db,
            user="postgres",
            password=os.environ["PGPASSWORD"],
        ),
        schema_name=SCHEMA,
        copy_block_bytes=1 << 16,
    )


def same(value):
    """One exactly comparable form: floats by bit pattern (NaN, -0.0), JSON and uuid as text."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else value.hex()
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


# How the reference query reads each column: the text PostgreSQL stores for json and uuid,
# and a real's exact value as a double.
REFERENCE = {"ratio": "ratio::float8", "doc": "doc::text", "payload": "payload::text", "uid": "uid::text"}


def reference_rows(servers, dbname: str, table: str, columns: list[str], order_by: str, where: str = ""):
    exprs = ", ".join(REFERENCE.get(c, '"' + c.replace('"', '""') + '"') for c in columns)
    with servers["pg"].connect(dbname) as conn:
        rows = conn.execute(f'SELECT {exprs} FROM src."{table}" {where} ORDER BY "{order_by}"').fetchall()
    return [tuple(same(v) for v in row) for row in rows]


def arrow_rows(batches: list[pa.RecordBatch], order_by: str) -> list[tuple]:
    table = pa.Table.from_batches(batches)
    table = table.sort_by(order_by)
    return [tuple(same(v) for v in row.values()) for row in table.to_pylist()]


def assert_rows_equal(expected: list[tuple], actual: list[tuple], columns: list[str]) -> None:
    assert len(actual) == len(expected), f"{len(actual)} rows read, the source has {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if e != a:
            diffs = [(c, x, y) for c, x, y in zip(columns, e, a, strict=True) if x != y]
            raise AssertionError(f"row {i} differs (column, source, read): {[d for d in diffs][:3]}"[:2000])


# -- the protocol ---------------------------------------------------------------------------


def test_describe_maps_every_type(source):
    schema = source.describe("every_type")
    got = {c.name: (c.logical, c.precision, c.scale, c.nullable) for c in schema.columns}
    assert list(got) == [
        "id", "small", "medium", "amount", "wide", "whole", "ratio", "score", "label", "code", "flag",
        "ok", "day", "at_time", "at_ts", "at_tstz", "doc", "payload", "blob", "uid", 'Mixed Case, "quoted" col',
    ]  # fmt: skip
    assert got["id"] == (LogicalType.INTEGER, None, None, False)
    assert got["small"] == (LogicalType.INTEGER, None, None, False)
    assert got["medium"] == (LogicalType.INTEGER, None, None, True)
    assert got["amount"] == (LogicalType.DECIMAL, 18, 4, True)
    assert got["wide"] == (LogicalType.DECIMAL, 38, 10, True)
    assert got["whole"] == (LogicalType.DECIMAL, 38, 0, True)
    expected = {
        "ratio": LogicalType.FLOAT,
        "score": LogicalType.FLOAT,
        "label": LogicalType.STRING,
        "code": LogicalType.STRING,
        "flag": LogicalType.STRING,
        "ok": LogicalType.BOOLEAN,
        "day": LogicalType.DATE,
        "at_time": LogicalType.TIME,
        "at_ts": LogicalType.TIMESTAMP,
        "at_tstz": LogicalType.TIMESTAMP_TZ,
        "doc": LogicalType.JSON,
        "payload": LogicalType.JSON,
        "blob": LogicalType.BINARY,
        "uid": LogicalType.STRING,
    }
    assert {k: got[k][0] for k in expected} == expected
    assert schema.column("code").source_type == "character varying(12)"


READERS = ["adbc", "csv"]


def reading_with(source: PostgresSource, reader: str) -> PostgresSource:
    return source.model_copy(update={"export_reader": reader})


@pytest.mark.parametrize("reader", READERS)
def test_read_chunk_every_value_exactly(servers, source_db, source, reader):
    source = reading_with(source, reader)
    columns = [c.name for c in source.describe("every_type").columns]
    batches = list(source.read_chunk("every_type", columns, "id", None, None))

    assert len(batches) > 3, "64 KiB blocks: the bulk rows span several batches"
    assert all(b.nbytes < 2 << 20 for b in batches), "a batch holds about one block of rows"
    schema = batches[0].schema
    assert schema.names == columns
    assert schema.field("amount").type == pa.decimal128(18, 4)
    assert schema.field("whole").type == pa.decimal128(38, 0)
    assert schema.field("at_tstz").type == pa.timestamp("us", tz="UTC")
    assert schema.field("at_ts").type == pa.timestamp("us")
    assert schema.field("at_time").type == pa.time64("us")
    assert schema.field("day").type == pa.date32()
    assert schema.field("blob").type == pa.binary()
    assert schema.field("small").type == pa.int64()
    expected = reference_rows(servers, source_db, "every_type", columns, "id")
    assert len(expected) == len(nasty_rows()) + 20_000
    assert_rows_equal(expected, arrow_rows(batches, "id"), columns)


@pytest.mark.parametrize("reader", READERS)
def test_read_chunk_columns_in_the_asked_order_and_ranges(servers, source_db, source, reader):
    source = reading_with(source, reader)
    columns = ["blob", "label", "id", "at_tstz"]
    where = "WHERE id >= 1 AND id < 15000"
    pieces = [(1, 30), (30, 12000), (12000, 15000)]
    batches = [b for lo, hi in pieces for b in source.read_chunk("every_type", columns, "id", lo, hi)]
    assert all(b.schema.names == columns for b in batches)
    assert sum(b.num_rows for b in batches) == source.count("every_type", "id", 1, 15000) == 39 + 4999
    expected = reference_rows(servers, source_db, "every_type", columns, "id", where)
    assert_rows_equal(expected, arrow_rows(batches, "id"), columns)


@pytest.mark.parametrize("reader", READERS)
def test_a_lone_text_column_keeps_null_apart_from_empty(source, reader):
    source = reading_with(source, reader)
    # Each NULL is an empty line in the COPY output; it must not be skipped.
    (batch,) = source.read_chunk("one_text", ["label"], "label", None, None)
    assert sorted(batch.column(0).to_pylist(), key=lambda v: (v is None, v or "")) == [
        "",
        "",
        "x",
        None,
        None,
    ]


def test_time_ranges_bounds_and_counts(servers, source_db, source):
    lo, hi = source.bounds("readings", "taken_at")
    assert lo == datetime(2024, 3, 1, tzinfo=UTC)
    assert hi == datetime(2024, 3, 1, tzinfo=UTC) + 9000 * timedelta(seconds=37, microseconds=123457)
    cut = datetime(2024, 3, 2, 12, tzinfo=UTC)
    below, above = (
        source.count("readings", "taken_at", None, cut),
        source.count("readings", "taken_at", cut, None),
    )
    assert below + above == 9001 and below > 0 and above > 0
    rows = [b for b in source.read_chunk("readings", ["reading_id", "taken_at"], "taken_at", lo, cut)]
    assert sum(b.num_rows for b in rows) == below
    assert max(max(b.column(1).to_pylist()) for b in rows) < cut

    naive_lo, naive_hi = source.bounds("local_readings", "taken_at")
    assert naive_lo == datetime(1969, 12, 30, 22) and naive_hi.tzinfo is None
    assert source.count("local_readings", "taken_at", datetime(1970, 1, 1), None) == 201 - 26
    assert source.bounds("empty", "id") == (None, None)
    assert list(source.read_chunk("empty", ["id", "label"], "id", None, None)) == []


def test_nulls_and_occupied_buckets(source):
    assert source.count_nulls("every_type", "medium") == sum(r[2] is None for r in nasty_rows()) + 20_000
    assert source.count_nulls("every_type", "id") == 0
    # Keys -7, 1..39, 1e6, 2^63-1 and 10001..30000 from origin -7 in steps of 10,000.
    buckets = source.occupied_buckets("every_type", "id", -7, 10_000)
    assert buckets == [0, 1, 2, 3, 100, 922337203685477]
    # Below the origin the bucket is the floor, as for keys above it.
    keys = [k for k, *_ in nasty_rows()] + list(range(10_001, 30_001))
    assert source.occupied_buckets("every_type", "id", 0, 10) == sorted({k // 10 for k in keys})
    assert source.occupied_buckets("every_type", "id", 0, 10)[0] == -1


def test_occupied_buckets_by_index_probes_equal_reading_every_key(servers, source_db, source):
    """A key leading an index, over few buckets, is probed bucket by bucket (the last bucket
    reaching 2^63-1, a bucket below the origin); without an index every key is read. Both
    give the floor of (key - origin) / step for every key."""
    keys = [k for k, *_ in nasty_rows()] + list(range(10_001, 30_001))

    def probed(table: str, origin: int, step: int) -> list[int] | None:
        with source.connect() as conn:
            return source._probe_buckets(conn, table, "id", {"o": origin, "s": step})

    for origin, step in [(-7, 10**18), (0, 10**18), (5, 3 * 10**17), (-(2**62), 2**62)]:
        want = sorted({(k - origin) // step for k in keys})
        # A bucket bound beyond bigint (2 * 2^62) is not probed: every key is read instead.
        assert probed("every_type", origin, step) == (None if step == 2**62 else want), (origin, step)
        assert source.occupied_buckets("every_type", "id", origin, step) == want, (origin, step)
    assert probed("every_type", 0, 10) is None  # too many buckets to probe: every key is read
    with servers["pg"].connect(source_db) as conn:
        conn.execute("CREATE TABLE src.unindexed AS SELECT id FROM src.every_type")
    try:
        assert probed("unindexed", -7, 10**18) is None
        want = sorted({(k + 7) // 10**18 for k in keys})
        assert source.occupied_buckets("unindexed", "id", -7, 10**18) == want
    finally:
        with servers["pg"].connect(source_db) as conn:
            conn.execute("DROP TABLE src.unindexed")


def test_unknown_table_column_and_type(servers, source_db, source):
    with pytest.raises(SourceSchemaError, match=r"table 'no_such_table' not found in schema 'src'"):
        source.describe("no_such_table")
    with pytest.raises(SourceSchemaError, match=r"table 'EVERY_TYPE' not found"):
        source.describe("EVERY_TYPE")  # names are case-sensitive, as PostgreSQL stores them
    with pytest.raises(SourceSchemaError, match=r"table every_type: column\(s\) \['nope'\] not found"):
        list(source.read_chunk("every_type", ["id", "nope"], "id", None, None))
    with servers["pg"].connect(source_db) as conn:
        conn.execute("CREATE TABLE src.odd (id bigint, span interval)")
        conn.execute("CREATE TABLE src.loose (id bigint, amount numeric)")
        conn.execute("CREATE TABLE src.listed (id bigint, tags text[])")
    with pytest.raises(SourceSchemaError, match=r"table odd: column 'span' has PostgreSQL type interval"):
        source.describe("odd")
    with pytest.raises(
        SourceSchemaError, match=r"column 'amount' is numeric without precision and scale"
    ) as info:
        source.describe("loose")
    assert "amount::numeric(38,9)" in str(info.value)
    with pytest.raises(SourceSchemaError, match=r"column 'tags' has PostgreSQL type text\[\]"):
        source.describe("listed")


@pytest.mark.parametrize(
    ("column_type", "value", "message"),
    [
        ("numeric(10,2)", "NaN", r"bad\.v \(numeric\(10,2\)\)"),
        ("date", "infinity", r"bad\.v \(date\)"),
        ("timestamptz", "-infinity", r"bad\.v \(timestamp with time zone\)"),
        ("time", "24:00:00", r"bad\.v \(time without time zone\)"),
        # The binary form of these is a number the ADBC driver hands over unchecked.
        ("date", "-infinity", r"bad\.v \(date\)"),
        ("date", "0001-12-31 BC", r"bad\.v \(date\)"),
        ("date", "10000-01-01", r"bad\.v \(date\)"),
        ("timestamptz", "infinity", r"bad\.v \(timestamp with time zone\)"),
        ("timestamp", "infinity", r"bad\.v \(timestamp without time zone\)"),
        ("timestamp", "0001-12-31 23:59:59.999999 BC", r"bad\.v \(timestamp without time zone\)"),
        ("timestamp", "10000-01-01", r"bad\.v \(timestamp without time zone\)"),
    ],
)
@pytest.mark.parametrize("reader", READERS)
def test_values_without_an_exact_arrow_form_are_refused(
    servers, source_db, source, column_type, value, message, reader
):
    source = reading_with(source, reader)
    with servers["pg"].connect(source_db) as conn:
        conn.execute(f"CREATE TABLE src.bad (id bigint, v {column_type})")
        conn.execute("INSERT INTO src.bad VALUES (1, NULL), (2, %s)", (value,))
    with pytest.raises(DataConversionError, match=message):
        list(source.read_chunk("bad", ["id", "v"], "id", None, None))


# Random values over each accepted type's whole range (years 1 to 9999, every digit of a
# numeric, doubles over their exponents, any character), NULLs among them, seeded.
SPREAD = """
SELECT setseed(0.42);
CREATE TABLE src.spread AS SELECT
    i AS id,
    (random() * 65535 - 32768)::smallint AS small,
    CASE WHEN random() < 0.1 THEN NULL ELSE (random() * 4294967295 - 2147483648)::integer END AS medium,
    (random() * 1.8e19 - 9e18)::bigint AS big,
    ((trunc(random() * 1e14)::numeric * 1e14 + trunc(random() * 1e14)::numeric)
        * sign(random() - 0.5)::numeric / 10::numeric ^ trunc(random() * 11)::int)::numeric(38,10) AS wide,
    (CASE WHEN random() < 0.1 THEN NULL ELSE (trunc(random() * 1e9)::numeric * 1e8
        + trunc(random() * 1e8)::numeric) * sign(random() - 0.5)::numeric / 1e4 END)::numeric(18,4) AS amount,
    (trunc((random() - 0.5) * 2e9)::numeric)::numeric(10,0) AS whole,
    (trunc(random() * 99999)::numeric / 1e5)::numeric(5,5) AS fraction,
    ((random() - 0.5) * 10 ^ (random() * 70 - 35))::real AS ratio,
    CASE WHEN random() < 0.1 THEN NULL ELSE (random() - 0.5) * 10 ^ (random() * 600 - 300) END AS score,
    (SELECT string_agg(chr(1 + (random() * 55294)::int), '') FROM generate_series(0, (i % 23) + (i * 0)))
        || chr(65536 + (random() * 1e6)::int) AS label,
    CASE WHEN random() < 0.1 THEN NULL ELSE repeat(chr(33 + i % 90), i % 12) END::varchar(12) AS code,
    left(md5(i::text), i % 4)::char(3) AS flag,
    CASE WHEN random() < 0.1 THEN NULL ELSE random() < 0.5 END AS ok,
    date '0001-01-01' + (random() * 3652058)::int AS day,
    time '00:00' + trunc(random() * 86400e6) * interval '1 microsecond' AS at_time,
    timestamp '0001-01-01' + trunc(random() * 315537897599) * interval '1 second'
        + trunc(random() * 1e6) * interval '1 microsecond' AS at_ts,
    CASE WHEN random() < 0.1 THEN NULL ELSE timestamptz '0001-01-01 00:00+00'
        + trunc(random() * 315537897599) * interval '1 second'
        + trunc(random() * 1e6) * interval '1 microsecond' END AS at_tstz,
    json_build_object('i', i, 'x', random()::numeric(20,17), 's', chr(1 + (random() * 55294)::int)) AS doc,
    jsonb_build_object('n', (random() * 1e6)::numeric(12,5), 'a', jsonb_build_array(i, 'q"'), 'e', 1.50)
        AS payload,
    CASE WHEN i % 9 = 0 THEN NULL ELSE decode(repeat(md5(i::text), i % 5), 'hex') END AS blob,
    CASE WHEN i % 11 = 0 THEN NULL ELSE md5(i::text)::uuid END AS uid
FROM generate_series(1, 30000) AS i
"""


@pytest.mark.parametrize("reader", READERS)
def test_random_values_over_each_types_range_read_exactly(servers, source_db, source, reader):
    with servers["pg"].connect(source_db) as conn:
        for statement in SPREAD.split(";"):
            conn.execute(statement)
    source = reading_with(source, reader)
    columns = [c.name for c in source.describe("spread").columns]
    batches = list(source.read_chunk("spread", columns, "id", 100, None))
    expected = reference_rows(servers, source_db, "spread", columns, "id", "WHERE id >= 100")
    assert len(expected) == 30000 - 99
    assert_rows_equal(expected, arrow_rows(batches, "id"), columns)


def test_both_readers_stage_the_same_types(source):
    columns = [c.name for c in source.describe("every_type").columns]
    schemas = {
        reader: next(reading_with(source, reader).read_chunk("every_type", columns, "id", 1, 20)).schema
        for reader in READERS
    }
    assert schemas["adbc"] == schemas["csv"]
    assert PostgresSource().export_reader == "adbc"


def test_adbc_reader_logs_in_with_any_password_and_never_shows_it(servers, source_db, source):
    role = "reader_" + secrets.token_hex(4)
    password = "it's a \\ 'tricky' pw; = @/?#%" + secrets.token_hex(4)
    with servers["pg"].connect(source_db) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD {quote_literal(password)}")
        conn.execute(f"GRANT USAGE ON SCHEMA src TO {role}")
        conn.execute(f"GRANT SELECT ON src.one_text TO {role}")
    try:
        login = source.credentials.model_copy(update={"user": role, "password": SecretStr(password)})
        reader = source.model_copy(update={"credentials": login, "export_reader": "adbc"})
        (batch,) = reader.read_chunk("one_text", ["label"], "label", None, None)
        assert batch.num_rows == 5
        wrong = login.model_copy(update={"password": SecretStr(password + "-wrong")})
        with pytest.raises(ConnectionCheckError, match="password authentication failed") as info:
            list(
                reader.model_copy(update={"credentials": wrong}).read_chunk(
                    "one_text", ["label"], "label", None, None
                )
            )
        assert password not in str(info.value) and "tricky" not in str(info.value)
    finally:
        adbc_export.close_all()
        with servers["pg"].connect(source_db) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_adbc_reader_retries_after_the_server_ends_its_session(servers, source_db, source):
    """A session ended mid-chunk is a transient error; the next read logs in afresh instead of
    taking the dead connection from the pool."""
    with servers["pg"].connect(source_db) as conn:  # rows that keep coming for about 2 s
        conn.execute(
            "CREATE VIEW src.slow AS SELECT i::bigint AS id, repeat('x', 100) "
            "|| CASE WHEN i % 1000 = 0 THEN pg_sleep(0.1)::text ELSE '' END AS label "
            "FROM generate_series(1, 20000) AS i"
        )
    reading = source.read_chunk("slow", ["id", "label"], "id", None, None)
    next(reading)
    with servers["pg"].connect(source_db) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'prefect-migrate-source' AND datname = current_database()"
        )
    with pytest.raises(Exception) as info:
        list(reading)
    assert is_transient(info.value), repr(info.value)
    assert os.environ["PGPASSWORD"] not in str(info.value)
    assert (
        sum(b.num_rows for b in source.read_chunk("every_type", ["id", "label"], "id", 10_000, None))
        == 20_002
    )


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_check_names_the_problem_never_the_password(servers, source_db, source):
    source.check()
    login = source.credentials.model_copy(
        update={"password": SecretStr("not-the-password-" + secrets.token_hex(4))}
    )
    wrong = source.model_copy(update={"credentials": login})
    with pytest.raises(ConnectionCheckError, match="password authentication failed") as info:
        wrong.check()
    assert wrong.credentials.password.get_secret_value() not in str(info.value)
    assert os.environ["PGPASSWORD"] not in str(info.value)
    with pytest.raises(ConnectionCheckError, match=r"has no schema 'nope'"):
        source.model_copy(update={"schema_name": "nope"}).check()


def test_pure_helpers():
    assert numeric_typmod(-1) is None
    assert numeric_typmod(((18 << 16) | 4) + 4) == (18, 4)
    hexed = pa.array(["00ff", None, "", "0a0b0c"]).slice(1)
    assert hex_to_binary(hexed).to_pylist() == [None, b"", b"\n\x0b\x0c"]
    parser = CsvBlockParser(
        "t", [Column(name="n", logical=LogicalType.INTEGER), Column(name="s", logical=LogicalType.STRING)]
    )
    (batch,) = parser.parse(b'1,""\n,\n3,"a\nb"\n')
    assert batch.to_pydict() == {"n": [1, None, 3], "s": ["", None, "a\nb"]}


# -- end to end -----------------------------------------------------------------------------


def write_pg_migration(path, servers, source_db: str, target_db: str, tables: list[dict]) -> str:
    connection = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": servers["pg"].port,
        "user": "postgres",
        "password_env": "PGPASSWORD",
    }
    spec = {
        "source": {**connection, "dbname": source_db, "schema": SCHEMA},
        "target": {**connection, "dbname": target_db, "schema": "analytics"},
        "staging": {"type": "local", "path": str(path.parent / "staging")},
        "retries": {"attempts": 1, "delay_seconds": 0.1, "jitter": 0.1},
        "concurrency": 2,
        "tables": tables,
    }
    path.write_text(yaml.safe_dump({"migrations": {"pg_copy": spec}}, sort_keys=False))
    return str(path)


def target_values(pg_connect, table: str, columns: list[str], order_by: str) -> list[tuple]:
    cols = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    with pg_connect() as conn:
        rows = conn.execute(f'SELECT {cols} FROM analytics."{table}" ORDER BY "{order_by}"').fetchall()
    return [tuple(same(v) for v in row) for row in rows]


def comparable_source(servers, source_db: str, table: str, columns: list[str], order_by: str) -> list[tuple]:
    """Source rows as the target types hold them: json parsed (jsonb reorders keys), uuid as text."""
    rows = reference_rows(servers, source_db, table, columns, order_by)
    json_at = [i for i, c in enumerate(columns) if c in ("doc", "payload")]
    return [
        tuple(json.loads(v) if i in json_at and v is not None else v for i, v in enumerate(row))
        for row in rows
    ]


def test_migrate_postgres_to_postgres(tmp_path, servers, source_db, pg_database, pg_connect):
    from flows.migrate import migrate

    path = write_pg_migration(
        tmp_path / "migrations.yaml",
        servers,
        source_db,
        pg_database,
        [
            {"name": "every_type", "chunk_column": "id", "chunk_size": 5000, "primary_key": ["id"]},
            {"name": "readings", "chunk_column": "taken_at", "chunk_interval": "6h"},
            {"name": "local_readings", "chunk_column": "taken_at", "chunk_interval": "1d"},
            {"name": "empty", "chunk_column": "id"},
        ],
    )
    report = migrate(source_name="pg_copy", migrations_file=path)

    assert report.status == "completed"
    by_table = {t.table: t for t in report.tables}
    assert by_table["every_type"].rows == len(nasty_rows()) + 20_000
    assert by_table["every_type"].chunks == 8  # occupied key spans only, not 1.8e15 empty ones
    assert by_table["readings"].rows == 9001 and by_table["readings"].chunks == 16
    assert by_table["local_readings"].rows == 201 and by_table["local_readings"].chunks > 5
    assert by_table["empty"].rows == 0

    columns = [c.name for c in build_source_block(servers, source_db).describe("every_type").columns]
    expected = comparable_source(servers, source_db, "every_type", columns, "id")
    actual = target_values(pg_connect, "every_type", [c.lower() for c in columns], "id")
    assert_rows_equal(expected, actual, columns)
    for table, order_by in (("readings", "reading_id"), ("local_readings", "n")):
        cols = [c.name for c in build_source_block(servers, source_db).describe(table).columns]
        assert_rows_equal(
            reference_rows(servers, source_db, table, cols, order_by),
            target_values(pg_connect, table, cols, order_by),
            cols,
        )
    with pg_connect() as conn:
        types = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'analytics.every_type'::regclass AND attnum > 0"
            ).fetchall()
        )
    assert types["amount"] == "numeric(18,4)" and types["whole"] == "numeric(38,0)"
    assert types["at_tstz"] == "timestamp with time zone" and types["blob"] == "bytea"
    assert types["payload"] == "jsonb" and types["ratio"] == "double precision"


def build_source_block(servers, source_db: str) -> PostgresSource:
    return PostgresSource(
        credentials=PostgresCredentials(
            host="127.0.0.1", port=servers["pg"].port, dbname=source_db, password=os.environ["PGPASSWORD"]
        ),
        schema_name=SCHEMA,
    )


def test_migrate_refuses_an_unknown_table_before_touching_the_target(
    tmp_path, servers, source_db, pg_database, pg_connect
):
    from flows.migrate import migrate

    path = write_pg_migration(
        tmp_path / "migrations.yaml",
        servers,
        source_db,
        pg_database,
        [{"name": "missing", "chunk_column": "id"}],
    )
    with pytest.raises(SourceSchemaError, match=r"table 'missing' not found in schema 'src'"):
        migrate(source_name="pg_copy", migrations_file=path)
    with pg_connect() as conn:
        assert conn.execute("SELECT to_regclass('analytics.missing')").fetchone()[0] is None
