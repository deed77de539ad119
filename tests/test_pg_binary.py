"""blocks.postgres.pg_binary against the real PostgreSQL: what COPY (FORMAT binary) stores must be the
source values exactly, for every supported (Arrow type, PostgreSQL type) pair."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from blocks.errors import DataConversionError, TargetGuardError
from blocks.postgres import pg_binary
from blocks.postgres.csv_copy import batch_to_copy_csv
from blocks.postgres.pg_binary import COPY_HEADER, COPY_TRAILER, BinaryCopyEncoder, target_typnames

I64 = np.iinfo(np.int64)
I32 = np.iinfo(np.int32)
NY = ZoneInfo("America/New_York")


def dt(*args, tz=None) -> datetime:
    return datetime(*args, tzinfo=tz)


# name: (arrow type, column DDL, 8 values). Every column holds at least one NULL.
WIDE = {
    "i8": (pa.int64(), "bigint", [I64.min, I64.max, 0, -1, None, 1, 42, None]),
    "i4": (pa.int32(), "integer", [I32.min, I32.max, 0, -1, None, 7, None, 3]),
    "i2": (pa.int16(), "smallint", [-32768, 32767, None, 0, -1, 5, 6, 7]),
    "i64_4": (pa.int64(), "integer", [I32.min, I32.max, None, 0, 1, -1, 2, 3]),
    "i64_2": (pa.int64(), "smallint", [-32768, 32767, 0, None, 1, 2, 3, 4]),
    "i16_8": (pa.int16(), "bigint", [-32768, 32767, 0, 1, None, 2, 3, 4]),
    "i8_2": (pa.int8(), "smallint", [-128, 127, 0, 1, 2, None, 3, 4]),
    "f8": (
        pa.float64(),
        "double precision",
        [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1, None],
    ),
    "f4": (
        pa.float32(),
        "real",
        [math.nan, math.inf, -math.inf, -0.0, 0.1, 3.4028234663852886e38, 1.401298464324817e-45, None],
    ),
    "txt": (
        pa.string(),
        "text",
        [
            "",
            None,
            "héllo 🎉 wörld",
            "quote \" and ' apostrophe",
            "back\\slash \\N \\x00 \\.",
            "new\nline\ttab\r\n",
            "NULL",
            "comma,semicolon;|pipe",
        ],
    ),
    "ltxt": (pa.large_string(), "text", [None, "", "\\.", "日本語", "a" * 5000, "x", '"', "z"]),
    "vc": (pa.string(), "varchar(40)", ["abc", None, "", "ü" * 40, "x", "y", "z", "w"]),
    "bp": (pa.string(), "char(5)", ["ab", "", None, "héllo", "a", "b", "c", "d"]),
    "js": (
        pa.string(),
        "json",
        ['{"a": 1,  "b": [1, 2]}', None, '"é"', "null", "[]", '  {"k":"v"}  ', "1.50", '{"d": 1, "d": 2}'],
    ),
    "jsb": (
        pa.string(),
        "jsonb",
        [
            '{"a": {"b": [1, 2, {"c": "ü🎉\\u00e9"}]}, "q": "\\"quoted\\" \\\\ \\n"}',
            None,
            "[]",
            "{}",
            "null",
            '"text"',
            "123.4500",
            '{"big": 12345678901234567890, "tab": "\\t"}',
        ],
    ),
    "ljsb": (
        pa.large_string(),
        "jsonb",
        ['{"x": 1}', '[1, "two", null]', None, "true", "0", "{}", '"a"', "[]"],
    ),
    "by": (
        pa.binary(),
        "bytea",
        [b"", None, b"\x00", b"\x00\x01\xff\x00", bytes(range(256)), b"\\x00", b"plain", b"\n\r\t"],
    ),
    "lby": (pa.large_binary(), "bytea", [None, b"\x00" * 10, b"", b"a", b"\\", b"c", b"d", b"e"]),
    "fby": (
        pa.binary(3),
        "bytea",
        [b"\x00\x00\x00", None, b"abc", b"\xff\xfe\xfd", b"\\\\\\", b"\n\n\n", b"xyz", None],
    ),
    "b": (pa.bool_(), "boolean", [True, False, None, True, False, None, True, True]),
    "d": (
        pa.date32(),
        "date",
        [
            date(1, 1, 1),
            date(9999, 12, 31),
            date(1999, 12, 31),
            date(2000, 1, 1),
            date(1970, 1, 1),
            date(1969, 12, 31),
            None,
            date(1900, 2, 28),
        ],
    ),
    "t": (
        pa.time64("us"),
        "time",
        [
            time(0),
            time(23, 59, 59, 999999),
            None,
            time(12, 0, 0, 1),
            time(0, 0, 0, 1),
            None,
            time(1),
            time(2),
        ],
    ),
    "t_ms": (
        pa.time32("ms"),
        "time",
        [time(0), time(23, 59, 59, 999000), None, time(12, 0, 0, 1000), time(3), time(4), time(5), time(6)],
    ),
    "t_ns": (
        pa.time64("ns"),
        "time",
        [time(0), time(23, 59, 59, 999999), None, time(12, 0, 0, 1), time(3), time(4), time(5), time(6)],
    ),
    "ts": (
        pa.timestamp("us"),
        "timestamp",
        [
            dt(1, 1, 1),
            dt(9999, 12, 31, 23, 59, 59, 999999),
            dt(1999, 12, 31, 23, 59, 59, 999999),
            dt(2000, 1, 1),
            dt(1969, 12, 31, 23, 59, 59, 999999),
            dt(1970, 1, 1),
            None,
            dt(1900, 1, 1, 0, 0, 0, 1),
        ],
    ),
    "tsz": (
        pa.timestamp("us", tz="UTC"),
        "timestamptz",
        [
            dt(1, 1, 1, tz=UTC),
            dt(9999, 12, 31, 23, 59, 59, 999999, tz=UTC),
            dt(1999, 12, 31, 23, 59, 59, 999999, tz=UTC),
            None,
            dt(2000, 1, 1, tz=UTC),
            dt(1969, 12, 31, 23, 59, 59, 999999, tz=UTC),
            dt(2024, 2, 29, 12, 30, 45, 123456, tz=UTC),
            dt(1850, 6, 1, tz=UTC),
        ],
    ),
    "ts_ny": (
        pa.timestamp("us", tz="America/New_York"),
        "timestamptz",
        [dt(2024, 3, 10, 3, 30, tz=NY), None, dt(1999, 12, 31, 19, tz=NY), dt(2030, 11, 3, 1, 30, tz=NY)] * 2,
    ),
    "ts_ns": (
        pa.timestamp("ns"),
        "timestamp",
        [dt(1677, 9, 22), dt(2262, 4, 11), dt(1969, 12, 31, 23, 59, 59, 999999), None] * 2,
    ),
    "ts_ms": (
        pa.timestamp("ms", tz="UTC"),
        "timestamptz",
        [dt(1, 1, 1, tz=UTC), dt(9999, 12, 31, 23, 59, 59, 999000, tz=UTC), None, dt(2000, 1, 1, tz=UTC)] * 2,
    ),
    "ts_s": (
        pa.timestamp("s"),
        "timestamp",
        [dt(1, 1, 1), dt(9999, 12, 31, 23, 59, 59), None, dt(1999, 1, 1)] * 2,
    ),
    "n18": (
        pa.decimal128(18, 4),
        "numeric(18,4)",
        [
            Decimal("99999999999999.9999"),
            Decimal("-99999999999999.9999"),
            Decimal("0.0001"),
            Decimal("-0.0001"),
            Decimal("0.0000"),
            None,
            Decimal("1.0000"),
            Decimal("-1.0000"),
        ],
    ),
    "n_free": (
        pa.decimal128(10, 2),
        "numeric",
        [
            Decimal("1.50"),
            Decimal("-0.01"),
            None,
            Decimal("0.00"),
            Decimal("99999999.99"),
            Decimal("10.00"),
            Decimal("-1.00"),
            Decimal("0.10"),
        ],
    ),
    "n38": (
        pa.decimal128(38, 0),
        "numeric(38,0)",
        [10**38 - 1, -(10**38 - 1), 0, None, 1, -1, 10**37, -(10**19)],
    ),
    "n64": (pa.decimal64(10, 3), "numeric(10,3)", ["-9999999.999", "0.001", None, "1.000"] * 2),
    "n32": (pa.decimal32(5, 5), "numeric(5,5)", ["0.99999", "-0.00001", None, "0.00000"] * 2),
}


def wide_batch() -> pa.RecordBatch:
    arrays = []
    for arrow_type, _, values in WIDE.values():
        if pa.types.is_decimal(arrow_type):
            values = [None if v is None else Decimal(v) for v in values]
        arrays.append(pa.array(values, type=arrow_type))
    return pa.RecordBatch.from_arrays(arrays, names=list(WIDE))


def create_table(conn: psycopg.Connection, table: str, ddl: dict[str, str]) -> None:
    """A table with an identity column first, so rows read back in COPY order."""
    columns = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in ddl.items()]
    conn.execute(
        sql.SQL("CREATE TABLE {} (_ord bigint GENERATED ALWAYS AS IDENTITY, {})").format(
            sql.Identifier(table), sql.SQL(", ").join(columns)
        )
    )


def copy_binary(conn: psycopg.Connection, table: str, batches: list[pa.RecordBatch]) -> None:
    names = batches[0].schema.names
    typnames = target_typnames(conn, sql.Identifier(table).as_string(conn), names)
    encoder = BinaryCopyEncoder.for_columns(batches[0].schema.types, typnames, names)
    assert encoder is not None, typnames
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(sql.Identifier(table), columns)
    with conn.cursor().copy(statement) as copy:
        copy.write(COPY_HEADER)
        for batch in batches:
            copy.write(encoder.encode(batch))
        copy.write(COPY_TRAILER)


def copy_csv(conn: psycopg.Connection, table: str, batch: pa.RecordBatch) -> None:
    columns = sql.SQL(", ").join(map(sql.Identifier, batch.schema.names))
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(sql.Identifier(table), columns)
    with conn.cursor().copy(statement) as copy:
        copy.write(batch_to_copy_csv(batch))


def same(expected, got) -> bool:
    if isinstance(expected, float):
        if math.isnan(expected):
            return isinstance(got, float) and math.isnan(got)
        return expected == got and math.copysign(1, expected) == math.copysign(1, got)
    return type(expected) is type(got) and expected == got


def expected_value(value, ddl: str):
    """What psycopg's binary loaders give for a source value stored in a column of this type."""
    if value is None:
        return None
    if ddl in ("json", "jsonb"):
        return json.loads(value)
    if ddl == "char(5)":
        return value.ljust(5)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp (ns units)
        return value.to_pydatetime()
    return value


def assert_table_holds(conn: psycopg.Connection, table: str, ddl: dict[str, str], rows: list[dict]) -> None:
    """Compare the table with the source rows value by value: typed (binary) values, NULL-ness, and
    the text form of numeric, json and text columns."""
    conn.execute("SET TimeZone = 'UTC'")
    names = list(ddl)
    cols = sql.SQL(", ").join(map(sql.Identifier, names))
    order = sql.SQL(" FROM {} ORDER BY _ord").format(sql.Identifier(table))
    typed = conn.cursor(binary=True).execute(sql.SQL("SELECT ") + cols + order).fetchall()
    nulls = conn.execute(
        sql.SQL("SELECT ")
        + sql.SQL(", ").join(sql.SQL("{} IS NULL").format(sql.Identifier(n)) for n in names)
        + order
    ).fetchall()
    texts = conn.execute(
        sql.SQL("SELECT ")
        + sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names)
        + order
    ).fetchall()
    assert len(typed) == len(rows)
    for index, row in enumerate(rows):
        for position, name in enumerate(names):
            source = row[name]
            where = f"row {index} column {name}: source {source!r}"
            assert nulls[index][position] == (source is None), where
            got = typed[index][position]
            assert same(expected_value(source, ddl[name]), got), f"{where}, stored {got!r}"
            text = texts[index][position]
            if isinstance(source, Decimal):
                assert text == format(source, "f"), f"{where}, stored {text!r}"
            elif ddl[name] in ("text", "json") or ddl[name].startswith("varchar"):
                assert text == source, f"{where}, stored {text!r}"


def test_header_and_trailer():
    assert COPY_HEADER == b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
    assert COPY_TRAILER == b"\xff\xff"


@pytest.mark.parametrize("offsets", ["32-bit", "64-bit"])
@pytest.mark.parametrize("shape", ["whole", "sliced", "multi-batch"])
def test_every_supported_pair_round_trips(pg_connect, monkeypatch, shape, offsets):
    if offsets == "64-bit":
        # Exercise the large_binary path without building 2 GiB batches.
        monkeypatch.setattr(pg_binary, "_MAX_BINARY", 0)
    batch = wide_batch()
    batches = {
        "whole": [batch],
        "sliced": [batch.slice(2)],  # every column has a non-zero offset
        "multi-batch": [batch.slice(0, 3), batch.slice(3, 0), batch.slice(3, 2), batch.slice(5)],
    }[shape]
    ddl = {name: spec[1] for name, spec in WIDE.items()}
    with pg_connect() as conn:
        create_table(conn, "wide", ddl)
        copy_binary(conn, "wide", batches)
        rows = [row for b in batches for row in b.to_pylist()]
        assert_table_holds(conn, "wide", ddl, rows)


def test_binary_and_csv_paths_store_the_same(pg_connect):
    batch = wide_batch()
    ddl = {name: spec[1] for name, spec in WIDE.items()}
    with pg_connect() as conn:
        create_table(conn, "via_binary", ddl)
        create_table(conn, "via_csv", ddl)
        copy_binary(conn, "via_binary", [batch])
        copy_csv(conn, "via_csv", batch)
        text_binary = conn.execute("SELECT via_binary::text FROM via_binary ORDER BY _ord").fetchall()
        text_csv = conn.execute("SELECT via_csv::text FROM via_csv ORDER BY _ord").fetchall()
    assert len(text_binary) == batch.num_rows
    assert text_binary == text_csv


def numeric_cases(precision: int, scale: int) -> list[Decimal | None]:
    """Boundaries (0, ±1 unit, ±max, ±10^k, ±(10^k - 1)) and random values of numeric(p, s)."""
    rng = random.Random(precision * 100 + scale)
    unscaled = {0, 1, -1, 10**precision - 1, -(10**precision - 1)}
    for k in range(precision):
        unscaled |= {10**k, -(10**k), 10**k - 1, -(10**k - 1), 10 ** (k + 1) - 10**k}
    for _ in range(200):
        digits = rng.randint(1, precision)
        unscaled.add(rng.choice((-1, 1)) * rng.randrange(10 ** (digits - 1), 10**digits))
    values: list[Decimal | None] = [Decimal(f"{u}E-{scale}") for u in sorted(unscaled)]
    return [*values[:3], None, *values[3:]]


@pytest.mark.parametrize(
    "precision, scale",
    [
        (38, 0),
        (38, 37),
        (38, 38),
        (18, 4),
        (1, 0),
        (1, 1),
        (4, 4),
        (5, 1),
        (9, 3),
        (12, 11),
        (19, 0),
        (19, 19),
        (20, 6),
        (28, 10),
        (29, 0),
        (38, 2),
        (38, 19),
    ],
)
def test_numeric_extremes(pg_connect, precision, scale):
    values = numeric_cases(precision, scale)
    arr = pa.array(values, type=pa.decimal128(precision, scale))
    batch = pa.RecordBatch.from_arrays([arr, arr, arr.slice(0)], names=["typed", "free", "again"])
    ddl = {
        "typed": f"numeric({precision},{scale})",
        "free": "numeric",
        "again": f"numeric({precision},{scale})",
    }
    with pg_connect() as conn:
        create_table(conn, "n", ddl)
        copy_binary(conn, "n", [batch.slice(0, 7), batch.slice(7)])
        assert_table_holds(conn, "n", ddl, batch.to_pylist())


def test_postgres_rejects_numeric_beyond_the_column_precision(pg_connect):
    batch = pa.RecordBatch.from_pydict(
        {"n": pa.array([Decimal("999.99"), Decimal("1234.56")], pa.decimal128(10, 2))}
    )
    big = pa.RecordBatch.from_pydict({"n": pa.array([Decimal(10**38 - 1)], pa.decimal128(38, 0))})
    with pg_connect() as conn:
        create_table(conn, "small", {"n": "numeric(5,2)"})
        with pytest.raises(psycopg.errors.NumericValueOutOfRange):
            copy_binary(conn, "small", [batch])
        create_table(conn, "narrower", {"n": "numeric(37,0)"})
        with pytest.raises(psycopg.errors.NumericValueOutOfRange):
            copy_binary(conn, "narrower", [big])
        assert conn.execute("SELECT count(*) FROM small").fetchone()[0] == 0


def decimal_from_unscaled(unscaled: list[int], precision: int, scale: int, valid: list[bool]) -> pa.Array:
    """A decimal128 array from raw unscaled integers, which Arrow does not check against precision."""
    data = b"".join(u.to_bytes(16, "little", signed=True) for u in unscaled)
    bitmap = pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(pa.decimal128(precision, scale), len(unscaled), [bitmap, pa.py_buffer(data)])


def test_decimal_beyond_its_arrow_precision_is_exact_or_raises(pg_connect):
    # 9999.99 exceeds decimal128(5, 2) but still fits its digit groups: stored exactly, or
    # refused by a numeric(5,2) column. A NULL slot's junk value (10^30) is ignored.
    fits = decimal_from_unscaled([999999, 10**30, -999999], 5, 2, [True, False, True])
    with pg_connect() as conn:
        create_table(conn, "free", {"n": "numeric"})
        copy_binary(conn, "free", [pa.RecordBatch.from_arrays([fits], names=["n"])])
        assert conn.execute("SELECT n::text FROM free ORDER BY _ord").fetchall() == [
            ("9999.99",),
            (None,),
            ("-9999.99",),
        ]
        create_table(conn, "typed", {"n": "numeric(5,2)"})
        with pytest.raises(psycopg.errors.NumericValueOutOfRange):
            copy_binary(conn, "typed", [pa.RecordBatch.from_arrays([fits], names=["n"])])
    too_big = decimal_from_unscaled([1, 10**6], 5, 2, [True, True])
    encoder = BinaryCopyEncoder.for_columns([too_big.type], ["numeric"], ["amount"])
    with pytest.raises(DataConversionError, match="amount"):
        encoder.encode(pa.RecordBatch.from_arrays([too_big], names=["amount"]))


@pytest.mark.parametrize(
    "arrow_type, pg_type, values",
    [
        (pa.int64(), "int4", [1, 2**31, None]),
        (pa.int64(), "int4", [-(2**31) - 1]),
        (pa.int32(), "int2", [0, 40000]),
        (pa.int64(), "int2", [None, -32769]),
    ],
)
def test_integer_overflow_raises_naming_the_column(arrow_type, pg_type, values):
    encoder = BinaryCopyEncoder.for_columns([arrow_type], [pg_type], ["qty"])
    batch = pa.RecordBatch.from_arrays([pa.array(values, arrow_type)], names=["qty"])
    with pytest.raises(DataConversionError, match=f"'qty'.*out of range for PostgreSQL {pg_type}"):
        encoder.encode(batch)


def test_null_slots_are_not_range_checked(pg_connect):
    # An int64 NULL slot holding 2**40 must not trip the int4 range check.
    data = pa.py_buffer(np.array([5, 2**40, -5], dtype=np.int64))
    arr = pa.Array.from_buffers(pa.int64(), 3, [pa.array([True, False, True]).buffers()[1], data])
    with pg_connect() as conn:
        create_table(conn, "t", {"v": "integer"})
        copy_binary(conn, "t", [pa.RecordBatch.from_arrays([arr], names=["v"])])
        assert conn.execute("SELECT v FROM t ORDER BY _ord").fetchall() == [(5,), (None,), (-5,)]


def test_sub_microsecond_nanoseconds_raise():
    arr = pa.array([0, 1_000, 1_001], pa.timestamp("ns"))
    encoder = BinaryCopyEncoder.for_columns([arr.type], ["timestamp"], ["at"])
    with pytest.raises(DataConversionError, match="'at'"):
        encoder.encode(pa.RecordBatch.from_arrays([arr], names=["at"]))
    whole = pa.array([0, 1_000, None], pa.timestamp("ns"))
    assert encoder.encode(pa.RecordBatch.from_arrays([whole], names=["at"]))


def test_out_of_range_dates_and_times_are_refused(pg_connect):
    # Values that would land on PostgreSQL's ±infinity markers or overflow are ours to refuse...
    for arr, pg_type in [
        (pa.array([I64.min], pa.int64()).view(pa.timestamp("us")), "timestamp"),
        (pa.array([I64.min + 1], pa.int64()).view(pa.timestamp("us", "UTC")), "timestamptz"),
        (pa.array([I32.min + 10_957], pa.int32()).view(pa.date32()), "date"),
    ]:
        encoder = BinaryCopyEncoder.for_columns([arr.type], [pg_type], ["when"])
        with pytest.raises(DataConversionError, match="'when'"):
            encoder.encode(pa.RecordBatch.from_arrays([arr], names=["when"]))
    # ...the rest of PostgreSQL's range checks are its own: an error, never a wrong value.
    with pg_connect() as conn:
        for arr, ddl in [
            (pa.array([-3 * 10**17], pa.int64()).view(pa.timestamp("us")), "timestamp"),
            (pa.array([2_147_000_000], pa.int32()).view(pa.date32()), "date"),
            (pa.array([86_400_000_001], pa.int64()).view(pa.time64("us")), "time"),
        ]:
            create_table(conn, f"r_{ddl}", {"v": ddl})
            with pytest.raises(psycopg.errors.DatetimeFieldOverflow):
                copy_binary(conn, f"r_{ddl}", [pa.RecordBatch.from_arrays([arr], names=["v"])])


def test_postgres_validates_json_and_varchar_length(pg_connect):
    with pg_connect() as conn:
        create_table(conn, "j", {"v": "jsonb"})
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            copy_binary(conn, "j", [pa.RecordBatch.from_pydict({"v": ['{"a": 1}', "{not json"]})])
        create_table(conn, "s", {"v": "varchar(3)"})
        with pytest.raises(psycopg.errors.StringDataRightTruncation):
            copy_binary(conn, "s", [pa.RecordBatch.from_pydict({"v": ["abc", "abcd"]})])


@pytest.mark.parametrize(
    "arrow_type, pg_type",
    [
        (pa.float64(), "float4"),
        (pa.float32(), "float8"),
        (pa.int64(), "text"),
        (pa.string(), "int4"),
        (pa.string(), "bytea"),
        (pa.binary(), "text"),
        (pa.string(), "uuid"),
        (pa.uint64(), "int8"),
        (pa.uint8(), "int2"),
        (pa.timestamp("us"), "timestamptz"),
        (pa.timestamp("us", "UTC"), "timestamp"),
        (pa.date64(), "date"),
        (pa.decimal256(40, 2), "numeric"),
        (pa.decimal128(10, -2), "numeric"),
        (pa.decimal128(10, 2), "float8"),
        (pa.null(), "text"),
        (pa.dictionary(pa.int32(), pa.string()), "text"),
        (pa.string_view(), "text"),
        (pa.int32(), "_int4"),
        (pa.int32(), "my_domain"),
    ],
)
def test_unsupported_pairs_return_none(arrow_type, pg_type):
    assert BinaryCopyEncoder.for_columns([pa.int64(), arrow_type], ["int8", pg_type], ["id", "x"]) is None


def test_for_columns_needs_one_type_per_name():
    assert BinaryCopyEncoder.for_columns([pa.int64()], ["int8", "int8"], ["a", "b"]) is None


def test_encode_refuses_a_batch_of_other_types():
    encoder = BinaryCopyEncoder.for_columns([pa.int64()], ["int8"], ["a"])
    with pytest.raises(ValueError, match="types"):
        encoder.encode(pa.RecordBatch.from_pydict({"a": pa.array([1], pa.int32())}))


def test_empty_batch(pg_connect):
    batch = wide_batch().slice(0, 0)
    ddl = {name: spec[1] for name, spec in WIDE.items()}
    with pg_connect() as conn:
        create_table(conn, "wide", ddl)
        names = batch.schema.names
        typnames = target_typnames(conn, sql.Identifier("wide").as_string(conn), names)
        assert BinaryCopyEncoder.for_columns(batch.schema.types, typnames, names).encode(batch) == b""
        copy_binary(conn, "wide", [batch])
        copy_binary(conn, "wide", [batch, wide_batch().slice(1, 1), batch])
        assert_table_holds(conn, "wide", ddl, wide_batch().slice(1, 1).to_pylist())


def test_target_typnames(pg_connect):
    with pg_connect() as conn:
        conn.execute('CREATE SCHEMA "My Schema"')
        conn.execute(
            'CREATE TABLE "My Schema"."T" (a integer, "B c" character varying(5), d timestamp with time zone, '
            "dropped int, e numeric(10,2), f character(3), g jsonb, h double precision, i bigint[])"
        )
        conn.execute('ALTER TABLE "My Schema"."T" DROP COLUMN dropped')
        ident = sql.Identifier("My Schema", "T").as_string(conn)
        assert target_typnames(conn, ident, ["i", "h", "g", "f", "e", "d", "B c", "a"]) == [
            "_int8",
            "float8",
            "jsonb",
            "bpchar",
            "numeric",
            "timestamptz",
            "varchar",
            "int4",
        ]
        with pytest.raises(TargetGuardError, match="dropped"):
            target_typnames(conn, ident, ["a", "dropped"])
        with pytest.raises(TargetGuardError):
            target_typnames(conn, sql.Identifier("nope").as_string(conn), ["a"])
