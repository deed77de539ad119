"""Timestream's query API (moto's server, with result pages shaped as the real API returns them)."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, date, datetime, time

import httpx
import pyarrow as pa
import pytest

from blocks.errors import SourceSchemaError
from blocks.timestream import TimestreamSource

ACCOUNT = "123456789012"


def col(name: str, kind: str) -> dict:
    return {"Name": name, "Type": {"ScalarType": kind}}


def cell(value) -> dict:
    return {"NullValue": True} if value is None else {"ScalarValue": value}


def page(columns: list[dict], rows: list[list], next_token: str | None = None) -> dict:
    result = {
        "QueryId": "q-" + secrets.token_hex(4),
        "Rows": [{"Data": [cell(v) for v in row]} for row in rows],
        "ColumnInfo": columns,
        "QueryStatus": {
            "ProgressPercentage": 100.0,
            "CumulativeBytesScanned": 1,
            "CumulativeBytesMetered": 1,
        },
    }
    if next_token:
        result["NextToken"] = next_token
    return result


@pytest.fixture
def source(servers) -> TimestreamSource:
    from prefect_aws import AwsClientParameters, AwsCredentials

    credentials = AwsCredentials(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=f"http://127.0.0.1:{servers['moto'].port}"),
    )
    return TimestreamSource(credentials=credentials, database="ons_energy_data")


def queue(servers, sql: str, pages: list[dict]) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{servers['moto'].port}/moto-api/static/timestream/query-results",
        json={"account_id": ACCOUNT, "region": "us-east-1", "results": {sql: pages}},
    )
    assert response.status_code == 201


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


def test_pages_follow_next_token_with_types_and_nulls(servers, source):
    lower, upper = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    sql = source.window_sql("generation_data", None, lower, upper)
    assert sql == (
        'SELECT * FROM "ons_energy_data"."generation_data" WHERE '
        "time >= from_iso8601_timestamp('2024-01-01T00:00:00.000000Z') AND "
        "time < from_iso8601_timestamp('2024-01-02T00:00:00.000000Z')"
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
    batches = list(source.read_chunk("generation_data", None, lower, upper))
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
        [
            "a",
            "metrics",
            "2024-03-01 00:00:00.000000000",
            "-0.0",
            "7",
            "false",
            None,
            "2024-03-01",
            "00:00:00.000000001",
            "42",
        ],
        [
            "b",
            "metrics",
            "2024-03-01 00:00:01.500000000",
            "1.7976931348623157E308",
            None,
            None,
            "x",
            None,
            "23:59:59.999999999",
            None,
        ],
    ]
    sql = 'SELECT * FROM "ons_energy_data"."multi"'
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


def test_empty_result_and_count(servers, source):
    sql = source.window_sql("generation_data", None, None, None)
    queue(servers, sql, [page(SINGLE, [])])
    assert list(source.query_batches(sql)) == []
    count_sql = 'SELECT COUNT(*) AS n FROM "ons_energy_data"."generation_data"'
    queue(servers, count_sql, [page([col("n", "BIGINT")], [["12345"]])])
    assert source.count("generation_data", None, None) == 12345


def test_non_scalar_columns_are_refused(servers, source):
    sql = 'SELECT arr FROM "ons_energy_data"."x"'
    queue(
        servers,
        sql,
        [page([{"Name": "arr", "Type": {"ArrayColumnInfo": {"Type": {"ScalarType": "DOUBLE"}}}}], [])],
    )
    with pytest.raises(SourceSchemaError, match="'arr' is not a scalar"):
        list(source.query_batches(sql))
