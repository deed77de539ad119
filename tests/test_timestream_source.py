"""Timestream's query API and UNLOAD (moto's server, with results shaped as the real API returns them)."""

from __future__ import annotations

import json
import math
import os
import secrets
from datetime import UTC, date, datetime, time

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from blocks.columns import LogicalType, TableSchema
from blocks.errors import ConfigError, SourceSchemaError, ValidationFailed
from blocks.timestream.scalars import conform_unloaded, table_arrow_schema, timestream_column
from blocks.timestream.source import TimestreamSource, timestream_time
from tests.timestream_fake import (
    DESCRIBE_COLUMNS,
    queue_results,
    queue_table,
    result_page,
    scalar_column,
)

col, page = scalar_column, result_page
DAY = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))


def endpoint(servers) -> str:
    return f"http://127.0.0.1:{servers['moto'].port}"


def credentials(servers):
    from prefect_aws import AwsClientParameters, AwsCredentials

    return AwsCredentials(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint(servers)),
    )


@pytest.fixture
def source(servers) -> TimestreamSource:
    """A source over a database of its own: moto's queued results are per exact query string."""
    return TimestreamSource(credentials=credentials(servers), database="ons_" + secrets.token_hex(4))


def queue(servers, sql: str, pages: list[dict]) -> None:
    queue_results(servers["moto"].port, "us-east-1", {sql: pages})


def multi_schema() -> TableSchema:
    return TableSchema(table="plants", columns=tuple(timestream_column(*r) for r in MULTI_DESCRIBE))


def describe_page(rows: list[list[str]]) -> dict:
    """DESCRIBE's answer: three VARCHAR columns, one row per table column."""
    return page([col(c, "VARCHAR") for c in DESCRIBE_COLUMNS], rows)


SINGLE = [
    col("region", "VARCHAR"),
    col("plant", "VARCHAR"),
    col("measure_name", "VARCHAR"),
    col("time", "TIMESTAMP"),
    col("measure_value::double", "DOUBLE"),
    col("measure_value::bigint", "BIGINT"),
    col("measure_value::varchar", "VARCHAR"),
    col("measure_value::boolean", "BOOLEAN"),
]
SINGLE_DESCRIBE = [
    ["region", "varchar", "DIMENSION"],
    ["plant", "varchar", "DIMENSION"],
    ["measure_name", "varchar", "MEASURE_NAME"],
    ["time", "timestamp", "TIMESTAMP"],
    ["measure_value::double", "double", "MEASURE_VALUE"],
    ["measure_value::bigint", "bigint", "MEASURE_VALUE"],
    ["measure_value::varchar", "varchar", "MEASURE_VALUE"],
    ["measure_value::boolean", "boolean", "MEASURE_VALUE"],
]
MULTI_DESCRIBE = [
    ["region", "varchar", "DIMENSION"],
    ["measure_name", "varchar", "MEASURE_NAME"],
    ["time", "timestamp", "TIMESTAMP"],
    ["power_mw", "double", "MULTI"],
    ["units", "bigint", "MULTI"],
    ["online", "boolean", "MULTI"],
    ["day", "date", "MULTI"],
]


def test_pages_follow_next_token_with_types_and_nulls(servers, source):
    lower, upper = DAY
    sql = source.window_sql("generation_data", None, "time", lower, upper)
    assert sql == (
        f'SELECT * FROM "{source.database}"."generation_data" WHERE '
        "\"time\" >= from_iso8601_timestamp('2024-01-01T00:00:00.000000000Z') AND "
        "\"time\" < from_iso8601_timestamp('2024-01-02T00:00:00.000000000Z')"
    )
    rows = [
        ['N, "east"', "p=1", "power", "2024-01-01 00:00:00.000000001", "1.5", None, None, None],
        ["S\\west", None, "units", "2024-01-01 06:30:00.123456789", None, "-9223372036854775807", None, None],
        ["ünï", "p 3", "status", "2024-01-01 12:00:00.000000000", None, None, 'ok, "fine"', None],
        ["N", "p4", "online", "2024-01-01 23:59:59.999999999", None, None, None, "true"],
    ]
    queue(
        servers,
        sql,
        [
            page(SINGLE, [], next_token="t1"),  # an empty first page is normal
            page(SINGLE, rows[:2], next_token="t2"),
            page(SINGLE, [], next_token="t3"),
            page(SINGLE, rows[2:]),
        ],
    )
    batches = list(source.read_chunk("generation_data", None, "time", lower, upper))
    table = pa.Table.from_batches(batches)
    assert [f.type for f in table.schema] == [
        pa.string(),
        pa.string(),
        pa.string(),
        pa.timestamp("ns", tz="UTC"),
        pa.float64(),
        pa.int64(),
        pa.string(),
        pa.bool_(),
    ]
    assert table.num_rows == 4
    times = table.column("time").cast(pa.int64()).to_pylist()
    assert times == [1704067200000000001, 1704090600123456789, 1704110400000000000, 1704153599999999999]
    assert table.column("region").to_pylist() == ['N, "east"', "S\\west", "ünï", "N"]
    assert table.column("plant").to_pylist() == ["p=1", None, "p 3", "p4"]
    assert table.column("measure_value::double").to_pylist() == [1.5, None, None, None]
    assert table.column("measure_value::bigint").to_pylist() == [None, -9223372036854775807, None, None]
    assert table.column("measure_value::varchar").to_pylist() == [None, None, 'ok, "fine"', None]
    assert table.column("measure_value::boolean").to_pylist() == [None, None, None, True]


def test_multi_measure_rows_and_other_scalar_types(servers, source):
    columns = [
        col("plant", "VARCHAR"),
        col("measure_name", "VARCHAR"),
        col("time", "TIMESTAMP"),
        col("power_mw", "DOUBLE"),
        col("units", "BIGINT"),
        col("online", "BOOLEAN"),
        col("note", "VARCHAR"),
        col("day", "DATE"),
        col("clock", "TIME"),
        col("n", "INTEGER"),
    ]
    rows = [
        ["a", "metrics", "2024-03-01 00:00:00.000000000", "-0.0", "7", "false", None, "2024-03-01"]
        + ["00:00:00.000000001", "42"],
        ["b", "metrics", "2024-03-01 00:00:01.500000000", "1.7976931348623157E308", None, None, "x", None]
        + ["23:59:59.999999999", None],
    ]
    sql = f'SELECT * FROM "{source.database}"."multi"'
    queue(servers, sql, [page(columns, rows)])
    table = pa.Table.from_batches(list(source.query_batches(sql)))
    assert table.to_pylist()[0] | {"time": None} == {
        "plant": "a",
        "measure_name": "metrics",
        "time": None,
        "power_mw": -0.0,
        "units": 7,
        "online": False,
        "note": None,
        "day": date(2024, 3, 1),
        "clock": time(0, 0),
        "n": 42,
    }
    assert table.column("clock").cast(pa.int64()).to_pylist() == [1, 86_399_999_999_999]
    assert table.column("power_mw").to_pylist()[1] == 1.7976931348623157e308


def test_double_special_values(servers, source):
    sql = f'SELECT "v" FROM "{source.database}"."specials"'
    texts = ["NaN", "Infinity", "-Infinity", "1.0E-5", "4.9E-324", "-0.0"]
    queue(servers, sql, [page([col("v", "DOUBLE")], [[t] for t in texts])])
    values = pa.Table.from_batches(list(source.query_batches(sql))).column("v").to_pylist()
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 1e-05, 5e-324, -0.0]
    assert math.copysign(1, values[-1]) == -1


def test_window_literal_keeps_nanoseconds():
    exact = pd.Timestamp("2024-01-01T00:00:00.000000001Z")
    assert timestream_time(exact) == "from_iso8601_timestamp('2024-01-01T00:00:00.000000001Z')"
    assert timestream_time(pd.Timestamp("2024-01-01T02:00:00.123456789+02:00")) == (
        "from_iso8601_timestamp('2024-01-01T00:00:00.123456789Z')"
    )
    assert timestream_time(datetime(2024, 5, 6, 7, 8, 9, 123456)) == (
        "from_iso8601_timestamp('2024-05-06T07:08:09.123456000Z')"  # naive is UTC
    )
    with pytest.raises(ConfigError, match="time ranges"):
        timestream_time(17)  # type: ignore[arg-type]


def test_empty_result_and_count(servers, source):
    sql = source.window_sql("generation_data", None, "time", None, None)
    queue(servers, sql, [page(SINGLE, [])])
    assert list(source.query_batches(sql)) == []
    count_sql = f'SELECT COUNT(*) AS n FROM "{source.database}"."generation_data"'
    assert source.count_sql("generation_data", "time", None, None) == count_sql
    queue(servers, count_sql, [page([col("n", "BIGINT")], [["12345"]])])
    assert source.count("generation_data", "time", None, None) == 12345


def test_non_scalar_columns_are_refused(servers, source):
    sql = f'SELECT arr FROM "{source.database}"."x"'
    queue(
        servers,
        sql,
        [page([{"Name": "arr", "Type": {"ArrayColumnInfo": {"Type": {"ScalarType": "DOUBLE"}}}}], [])],
    )
    with pytest.raises(SourceSchemaError, match="'arr' is not a scalar"):
        list(source.query_batches(sql))


def test_describe_single_measure_table(servers, source):
    assert source.describe_sql("generation") == f'DESCRIBE "{source.database}"."generation"'
    queue(servers, source.describe_sql("generation"), [describe_page(SINGLE_DESCRIBE)])
    schema = source.describe("generation")
    assert schema.table == "generation"
    assert [(c.name, c.logical, c.role, c.nullable, c.source_type) for c in schema.columns] == [
        ("region", LogicalType.STRING, "dimension", True, "varchar"),
        ("plant", LogicalType.STRING, "dimension", True, "varchar"),
        ("measure_name", LogicalType.STRING, "measure_name", True, "varchar"),
        ("time", LogicalType.TIMESTAMP_TZ, "time", False, "timestamp"),
        ("measure_value::double", LogicalType.FLOAT, "measure", True, "double"),
        ("measure_value::bigint", LogicalType.INTEGER, "measure", True, "bigint"),
        ("measure_value::varchar", LogicalType.STRING, "measure", True, "varchar"),
        ("measure_value::boolean", LogicalType.BOOLEAN, "measure", True, "boolean"),
    ]
    # The query API's types for those columns, which UNLOAD batches are cast to.
    assert [f.type for f in table_arrow_schema(schema, None)] == [
        pa.string(),
        pa.string(),
        pa.string(),
        pa.timestamp("ns", tz="UTC"),
        pa.float64(),
        pa.int64(),
        pa.string(),
        pa.bool_(),
    ]


def test_describe_multi_measure_table(servers, source):
    rows = MULTI_DESCRIBE + [["n", "integer", "MULTI"], ["clock", "time", "MULTI"]]
    queue(servers, source.describe_sql("plants"), [describe_page(rows)])
    schema = source.describe("plants")
    assert [(c.name, c.logical, c.role, c.nullable) for c in schema.columns] == [
        ("region", LogicalType.STRING, "dimension", True),
        ("measure_name", LogicalType.STRING, "measure_name", True),
        ("time", LogicalType.TIMESTAMP_TZ, "time", False),
        ("power_mw", LogicalType.FLOAT, "measure", True),
        ("units", LogicalType.INTEGER, "measure", True),
        ("online", LogicalType.BOOLEAN, "measure", True),
        ("day", LogicalType.DATE, "measure", True),
        ("n", LogicalType.INTEGER, "measure", True),
        ("clock", LogicalType.TIME, "measure", True),
    ]


def test_describe_refuses_unmappable_types(servers, source):
    rows = [["time", "timestamp", "TIMESTAMP"], ["readings", "array(double)", "MULTI"]]
    queue(servers, source.describe_sql("arrays"), [describe_page(rows)])
    with pytest.raises(SourceSchemaError, match=r"'readings' has type array\(double\)"):
        source.describe("arrays")


def stub_error(monkeypatch, source: TimestreamSource, code: str, message: str) -> None:
    """Make the next query fail with an AWS error moto cannot produce."""
    client = boto3.client(
        "timestream-query", region_name="us-east-1", endpoint_url="http://127.0.0.1:9"
    )  # never contacted
    stubber = Stubber(client)
    stubber.add_client_error("query", service_error_code=code, service_message=message, http_status_code=400)
    stubber.activate()
    monkeypatch.setattr(TimestreamSource, "_client", lambda self: client)


def test_describe_unknown_table(servers, source, monkeypatch):
    with pytest.raises(
        SourceSchemaError, match=f"table nope not found in Timestream database {source.database}"
    ):
        source.describe("nope")  # Timestream (here moto) answers an empty result

    message = f"line 1:10: Table '{source.database}.gone' does not exist"
    stub_error(monkeypatch, source, "ValidationException", message)
    with pytest.raises(SourceSchemaError, match="table gone not found.*: line 1:10: Table .* does not exist"):
        source.describe("gone")

    stub_error(monkeypatch, source, "ResourceNotFoundException", "The table gone2 does not exist.")
    with pytest.raises(SourceSchemaError, match="table gone2 not found.*The table gone2 does not exist"):
        source.describe("gone2")

    stub_error(monkeypatch, source, "ThrottlingException", "Rate exceeded")
    with pytest.raises(ClientError, match="Rate exceeded"):  # left for the retry policy
        source.describe("busy")


def test_bounds_count_and_count_nulls(servers, source, monkeypatch):
    bounds_sql = source.bounds_sql("generation", "time")
    assert bounds_sql == f'SELECT MIN("time") AS lo, MAX("time") AS hi FROM "{source.database}"."generation"'
    lo_hi = [col("lo", "TIMESTAMP"), col("hi", "TIMESTAMP")]
    queue(
        servers,
        bounds_sql,
        [page(lo_hi, [["2024-01-01 00:00:00.000000001", "2024-02-29 23:59:59.999999999"]])],
    )
    lo, hi = source.bounds("generation", "time")
    assert isinstance(lo, datetime) and lo.utcoffset().total_seconds() == 0
    assert (lo.value, hi.value) == (1704067200000000001, 1709251199999999999)

    queue(servers, source.bounds_sql("empty", "time"), [page(lo_hi, [[None, None]])])
    assert source.bounds("empty", "time") == (None, None)
    assert source.bounds("never_queued", "time") == (None, None)

    lower, upper = datetime(2024, 1, 1, tzinfo=UTC), pd.Timestamp("2024-01-01T00:00:00.000000002Z")
    count_sql = source.count_sql("generation", "measure_time", lower, upper)
    assert count_sql == (
        f'SELECT COUNT(*) AS n FROM "{source.database}"."generation" WHERE '
        "\"measure_time\" >= from_iso8601_timestamp('2024-01-01T00:00:00.000000000Z') AND "
        "\"measure_time\" < from_iso8601_timestamp('2024-01-01T00:00:00.000000002Z')"
    )
    queue(servers, count_sql, [page([col("n", "BIGINT")], [["2"]])])
    assert source.count("generation", "measure_time", lower, upper) == 2

    nulls_sql = source.count_nulls_sql("generation", "plant")
    assert nulls_sql == f'SELECT COUNT(*) AS n FROM "{source.database}"."generation" WHERE "plant" IS NULL'
    queue(servers, nulls_sql, [page([col("n", "BIGINT")], [["17"]])])
    assert source.count_nulls("generation", "plant") == 17
    assert source.occupied_buckets("generation", "time", 0, 1) is None

    monkeypatch.setattr(TimestreamSource, "_client", lambda self: pytest.fail("time needs no query"))
    assert source.count_nulls("generation", "time") == 0


# UNLOAD mode.


def test_unload_mode_needs_an_s3_location(servers):
    with pytest.raises(ValueError, match="needs unload_location"):
        TimestreamSource(credentials=credentials(servers), database="db", export_mode="unload")
    with pytest.raises(
        ValueError, match=r"unload_location\n.*must be an S3 URI, s3://bucket/prefix, got '/tmp/x'"
    ):
        TimestreamSource(
            credentials=credentials(servers), database="db", export_mode="unload", unload_location="/tmp/x"
        )


def unloaded_files() -> list[pa.Table]:
    """Parquet as UNLOAD writes a multi-measure table: naive nanosecond time, typed measures."""
    start = 1_704_067_200_000_000_000
    files = []
    for f in range(2):
        n = 700 + f
        base = f * 1000
        files.append(
            pa.table(
                {
                    "region": pa.array([f'r,"{(base + i) % 5}"\\ü' if i % 9 else None for i in range(n)]),
                    "measure_name": pa.array(["generation"] * n),
                    "time": pa.array(
                        [start + (base + i) * 60_000_000_007 for i in range(n)], pa.int64()
                    ).cast(pa.timestamp("ns")),
                    "power_mw": pa.array(
                        [
                            [math.nan, math.inf, -math.inf, None, -0.0][i] if i < 5 else (base + i) / 3
                            for i in range(n)
                        ],
                        pa.float64(),
                    ),
                    "units": pa.array([(base + i) * 10**12 if i % 7 else None for i in range(n)], pa.int64()),
                    "online": pa.array([None if i % 11 == 0 else i % 2 == 0 for i in range(n)]),
                    "day": pa.array([date(2024, 1, 1 + i % 28) for i in range(n)], pa.date32()),
                }
            )
        )
    return files


def put_unload(
    servers, source: TimestreamSource, select_sql: str, files: list[pa.Table], *, skew: int = 0
) -> str:
    """Write the files and a Timestream-style manifest where UNLOAD would; return the manifest URI."""
    s3 = boto3.client("s3", endpoint_url=endpoint(servers), region_name="us-east-1")
    bucket, _, key_prefix = source.unload_prefix(select_sql).removeprefix("s3://").partition("/")
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)
    entries = []
    for i, table in enumerate(files):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="gzip")  # as UNLOAD writes them
        body = sink.getvalue().to_pybytes()
        key = f"{key_prefix}results/AEDAQAN{secrets.token_hex(8).upper()}_{i}.parquet"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        metadata = {"content_length_in_bytes": len(body), "row_count": table.num_rows + skew}
        entries.append({"url": f"s3://{bucket}/{key}", "file_metadata": metadata})
    manifest_key = f"{key_prefix}AEDAQAN{secrets.token_hex(8).upper()}_manifest.json"
    manifest = {
        "result_files": entries,
        "query_metadata": {
            "total_content_length_in_bytes": sum(
                e["file_metadata"]["content_length_in_bytes"] for e in entries
            ),
            "total_row_count": sum(t.num_rows for t in files),
            "result_format": "PARQUET",
            "result_version": "Amazon Timestream version 1.0.0",
        },
        "author": {"name": "Amazon Timestream", "manifest_file_version": "1.0"},
    }
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    return f"s3://{bucket}/{manifest_key}"


def queue_unload(servers, source: TimestreamSource, select_sql: str, rows: int, manifest: str) -> None:
    columns = [col("rows", "BIGINT"), col("metadataFile", "VARCHAR"), col("manifestFile", "VARCHAR")]
    metadata = manifest.replace("_manifest.json", "_metadata.json")
    queue(servers, source.unload_sql(select_sql), [page(columns, [[str(rows), metadata, manifest]])])


@pytest.fixture
def unload_source(servers, source) -> TimestreamSource:
    bucket = "unload-" + secrets.token_hex(4)
    return source.model_copy(update={"export_mode": "unload", "unload_location": f"s3://{bucket}/exports/"})


def test_unload_mode_end_to_end(servers, unload_source):
    source, names = unload_source, [r[0] for r in MULTI_DESCRIBE]
    select_sql = source.window_sql("plants", names, "time", *DAY)
    prefix = source.unload_prefix(select_sql)
    assert prefix.startswith(f"{source.unload_location}") and len(prefix.split("/")[-2]) == 16
    assert prefix == source.unload_prefix(select_sql)  # deterministic, so a retry writes beside it
    assert source.unload_sql(select_sql) == (
        f"UNLOAD ({select_sql}) TO '{prefix}' WITH (format = 'PARQUET', compression = 'GZIP')"
    )
    files = unloaded_files()
    manifest = put_unload(servers, source, select_sql, files)
    queue(servers, source.describe_sql("plants"), [describe_page(MULTI_DESCRIBE)])
    queue_unload(servers, source, select_sql, sum(t.num_rows for t in files), manifest)

    batches = list(source.read_chunk("plants", names, "time", *DAY))
    got = pa.Table.from_batches(batches)
    want_schema = table_arrow_schema(multi_schema(), names)
    assert got.schema.equals(want_schema, check_metadata=True)
    want = pa.concat_tables(files).cast(want_schema)  # naive time read as UTC, unchanged in value
    assert got.num_rows == want.num_rows == 1401
    for name in names:
        assert same_values(got.column(name), want.column(name)), name
    assert got.column("time").cast(pa.int64()).to_pylist()[1] == 1_704_067_200_000_000_000 + 60_000_000_007


def same_values(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Value by value, NaN equal to NaN and -0.0 told apart from 0.0."""
    left, right = a.to_pylist(), b.to_pylist()
    if pa.types.is_floating(a.type):
        left, right = ([None if v is None else repr(v) for v in side] for side in (left, right))
    return left == right


def test_unload_row_counts_must_agree(servers, unload_source):
    source, names = unload_source, [r[0] for r in MULTI_DESCRIBE]
    files = unloaded_files()
    total = sum(t.num_rows for t in files)

    select_sql = source.window_sql("plants", names, "time", *DAY)
    queue(servers, source.describe_sql("plants"), [describe_page(MULTI_DESCRIBE)])
    queue_unload(servers, source, select_sql, total, put_unload(servers, source, select_sql, files, skew=1))
    with pytest.raises(ValidationFailed, match="the UNLOAD manifest says 701"):
        list(source.read_chunk("plants", names, "time", *DAY))

    queue(servers, source.describe_sql("plants"), [describe_page(MULTI_DESCRIBE)])
    queue_unload(servers, source, select_sql, total + 5, put_unload(servers, source, select_sql, files))
    with pytest.raises(ValidationFailed, match=f"reported {total + 5} rows but .* hold {total}"):
        list(source.read_chunk("plants", names, "time", *DAY))


# The reusable fake (tests/timestream_fake.py), as later flow tests use it.


def test_queue_table_serves_every_window_exactly(servers, source):
    start = pd.Timestamp("2024-01-01T00:00:00Z").value
    n = 37
    data = pa.table(
        {
            "region": pa.array(['N, "east"', "S\\west", "ünï", None, "a=b c"] * 7 + ["x"] * 2),
            "measure_name": pa.array(["metrics"] * n),
            "time": pa.array([start + i * 3_600_000_000_001 for i in range(n)], pa.timestamp("ns", tz="UTC")),
            "power_mw": pa.array(
                [math.nan, math.inf, -math.inf, None, -0.0, 1e-05, 1.7976931348623157e308]
                + [i / 7 for i in range(n - 7)],
                pa.float64(),
            ),
            "units": pa.array([None if i % 5 == 0 else -(2**62) + i for i in range(n)], pa.int64()),
            "online": pa.array([None if i % 4 == 0 else i % 3 == 0 for i in range(n)]),
            "day": pa.array([date(2024, 1, 1 + i % 28) for i in range(n)], pa.date32()),
        }
    )
    kinds = {
        "region": "VARCHAR",
        "measure_name": "VARCHAR",
        "time": "TIMESTAMP",
        "power_mw": "DOUBLE",
        "units": "BIGINT",
        "online": "BOOLEAN",
        "day": "DATE",
    }
    roles = {"region": "DIMENSION", "measure_name": "MEASURE_NAME", "time": "TIMESTAMP"} | {
        m: "MULTI" for m in ("power_mw", "units", "online", "day")
    }
    edges = [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 12, tzinfo=UTC)]
    edges += [pd.Timestamp(start + 12 * 3_600_000_000_001 + 1, tz="UTC"), datetime(2024, 1, 3, tzinfo=UTC)]
    edges += [datetime(2024, 2, 1, tzinfo=UTC)]  # the last window is empty
    windows = list(zip(edges, edges[1:], strict=False))
    expected = queue_table(
        servers["moto"].port,
        source,
        "plants",
        data,
        kind_by_column=kinds,
        roles=roles,
        windows=windows,
        page_rows=4,
    )

    source.check()
    schema = source.describe("plants")
    names = [c.name for c in schema.columns]
    assert names == data.column_names
    assert [c.role for c in schema.columns] == ["dimension", "measure_name", "time"] + ["measure"] * 4
    lo, hi = source.bounds("plants", "time")
    assert (lo.value, hi.value) == (start, start + (n - 1) * 3_600_000_000_001)
    assert source.count_nulls("plants", "region") == 7
    assert source.count_nulls("plants", "units") == 8

    got_rows = 0
    for (lower, upper), want in zip(windows, expected, strict=True):
        assert source.count("plants", "time", lower, upper) == want.num_rows
        got = pa.Table.from_batches(
            list(source.read_chunk("plants", names, "time", lower, upper)), want.schema
        )
        assert got.schema.equals(want.schema, check_metadata=True)
        for name in names:
            assert same_values(got.column(name), want.column(name)), (lower, name)
        got_rows += got.num_rows
    assert got_rows == n
    assert [w.num_rows for w in expected] == [12, 1, 24, 0]


def test_unloaded_batches_take_the_query_apis_types():
    schema = table_arrow_schema(multi_schema(), ["time", "units", "day"])
    batch = pa.record_batch(
        {
            "day": pa.array([date(2024, 1, 2)], pa.date32()),
            "time": pa.array([1_704_067_200_123], pa.timestamp("ms")),  # naive milliseconds: UTC
            "units": pa.array([7], pa.int32()),
            "extra": pa.array(["dropped"]),
        }
    )
    got = conform_unloaded(batch, schema)
    assert got.schema.equals(schema, check_metadata=True)
    assert got.column("time").cast(pa.int64()).to_pylist() == [1_704_067_200_123_000_000]
    assert got.to_pylist()[0]["units"] == 7
    with pytest.raises(SourceSchemaError, match=r"lack columns \['units'\]"):
        conform_unloaded(batch.drop_columns(["units"]), schema)
