"""Test support, not production code: a Timestream table served by moto's timestream-query.

moto answers `Query` from results queued for an exact query string, one result per call
(NextToken is ignored, so a query's pages are queued in order). `queue_table` queues, for the
strings `TimestreamSource` itself builds, everything a migration asks about one table: the
connection check, DESCRIBE, bounds, null counts, and for every window its COUNT and its SELECT
of every column in DESCRIBE order, split into pages the way Timestream sends them (values as
ScalarValue text, NULL as NullValue, and an empty first page with a NextToken in some windows).
"""

from __future__ import annotations

import math
import secrets
from datetime import datetime

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from blocks.timestream.scalars import scalar_field
from blocks.timestream.source import CHECK_SQL, TimestreamSource

ACCOUNT = "123456789012"  # moto's default account
DESCRIBE_COLUMNS = ("Column", "Type", "Timestream attribute type")


def scalar_column(name: str, kind: str) -> dict:
    return {"Name": name, "Type": {"ScalarType": kind}}


def cell(value: str | None) -> dict:
    return {"NullValue": True} if value is None else {"ScalarValue": value}


def result_page(columns: list[dict], rows: list[list[str | None]], next_token: str | None = None) -> dict:
    """One `Query` response page as the real API shapes it."""
    page = {
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
        page["NextToken"] = next_token
    return page


def queue_results(moto_port: int, region: str, results: dict[str, list[dict]]) -> None:
    """Queue result pages for exact query strings (appended after any already queued)."""
    response = httpx.post(
        f"http://127.0.0.1:{moto_port}/moto-api/static/timestream/query-results",
        json={"account_id": ACCOUNT, "region": region, "results": results},
    )
    response.raise_for_status()


def _double_text(value: float | None) -> str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def render(values: pa.ChunkedArray | pa.Array, kind: str) -> list[str | None]:
    """A column as Timestream's ScalarValue strings (None for NULL)."""
    if kind == "TIMESTAMP":  # 'YYYY-MM-DD HH:MM:SS.fffffffff', UTC
        return pc.strftime(values.cast(pa.timestamp("ns")), "%Y-%m-%d %H:%M:%S").to_pylist()
    if kind == "TIME":
        return pc.strftime(values.cast(pa.time64("ns")), "%H:%M:%S").to_pylist()
    if kind == "DOUBLE":
        return [_double_text(v) for v in values.to_pylist()]
    return values.cast(pa.string()).to_pylist()  # BOOLEAN as true/false, integers, dates, varchar


def rows_of(data: pa.Table, kind_by_column: dict[str, str]) -> list[list[str | None]]:
    columns = [render(data.column(name), kind_by_column[name]) for name in data.column_names]
    return [list(row) for row in zip(*columns, strict=True)]


def paged(columns: list[dict], rows: list[list], page_rows: int, empty_first: bool, tag: str) -> list[dict]:
    """Rows split into pages linked by NextToken; optionally led by an empty page, as Timestream does."""
    pieces = [rows[i : i + page_rows] for i in range(0, len(rows), page_rows)] or [[]]
    if empty_first:
        pieces.insert(0, [])
    return [
        result_page(columns, piece, f"{tag}-{n + 1}" if n + 1 < len(pieces) else None)
        for n, piece in enumerate(pieces)
    ]


def window_of(data: pa.Table, column: str, lower: datetime | None, upper: datetime | None) -> pa.Table:
    """The rows with lower <= column < upper, compared in UTC nanoseconds."""
    times = data.column(column).cast(pa.timestamp("ns", tz="UTC"))
    mask = pc.is_valid(times)
    if lower is not None:
        mask = pc.and_(mask, pc.greater_equal(times, pa.scalar(lower, pa.timestamp("ns", tz="UTC"))))
    if upper is not None:
        mask = pc.and_(mask, pc.less(times, pa.scalar(upper, pa.timestamp("ns", tz="UTC"))))
    return data.filter(mask)


def as_source_types(data: pa.Table, kind_by_column: dict[str, str]) -> pa.Table:
    """The table as the source's batches type it (the query API's Arrow types)."""
    schema = pa.schema([scalar_field(name, kind_by_column[name]) for name in data.column_names])
    return data.cast(schema)


def time_column_of(roles: dict[str, str]) -> str:
    times = [name for name, role in roles.items() if role == "TIMESTAMP"]
    if len(times) != 1:
        raise ValueError(f"exactly one column needs the TIMESTAMP role, got {times}")
    return times[0]


def table_results(
    source: TimestreamSource,
    table: str,
    data: pa.Table,
    kind_by_column: dict[str, str],
    roles: dict[str, str],
    windows: list[tuple[datetime, datetime]],
    page_rows: int,
) -> dict[str, list[dict]]:
    """Every statement `source` sends about `table`, with its result pages."""
    time_column = time_column_of(roles)
    names = data.column_names
    bigint = scalar_column("n", "BIGINT")
    results: dict[str, list[dict]] = {
        CHECK_SQL: [result_page([scalar_column("_col0", "INTEGER")], [["1"]])],
        source.describe_sql(table): [
            result_page(
                [scalar_column(c, "VARCHAR") for c in DESCRIBE_COLUMNS],
                [[n, kind_by_column[n].lower(), roles[n]] for n in names],
            )
        ],
    }
    lo_hi = pc.min_max(data.column(time_column))
    bounds_rows = rows_of(
        pa.table({"lo": [lo_hi["min"]], "hi": [lo_hi["max"]]}), {"lo": "TIMESTAMP", "hi": "TIMESTAMP"}
    )
    results[source.bounds_sql(table, time_column)] = [
        result_page([scalar_column("lo", "TIMESTAMP"), scalar_column("hi", "TIMESTAMP")], bounds_rows)
    ]
    for name in names:
        if name != time_column:
            nulls = str(data.column(name).null_count)
            results[source.count_nulls_sql(table, name)] = [result_page([bigint], [[nulls]])]
    info = [scalar_column(n, kind_by_column[n]) for n in names]
    for i, (lower, upper) in enumerate(windows):
        rows = rows_of(window_of(data, time_column, lower, upper), kind_by_column)
        results[source.count_sql(table, time_column, lower, upper)] = [
            result_page([bigint], [[str(len(rows))]])
        ]
        sql = source.window_sql(table, names, time_column, lower, upper)
        results[sql] = paged(info, rows, page_rows, empty_first=i % 2 == 0, tag=f"w{i}")
    return results


def queue_table(
    moto_port: int,
    source: TimestreamSource,
    table: str,
    data: pa.Table,
    *,
    kind_by_column: dict[str, str],
    roles: dict[str, str],
    windows: list[tuple[datetime, datetime]],
    page_rows: int = 500,
    repeat: int = 1,
) -> list[pa.Table]:
    """Queue moto results so `source` sees `data` as Timestream table `table`.

    `kind_by_column` gives each column's Timestream scalar type (VARCHAR, DOUBLE, BIGINT,
    BOOLEAN, TIMESTAMP, DATE, TIME), `roles` its attribute type (DIMENSION, MEASURE_NAME,
    MEASURE_VALUE, MULTI, TIMESTAMP; exactly one TIMESTAMP column, the window column). Every
    statement's result is queued `repeat` times (one per run of a flow; leftovers are harmless
    when table names are unique). Returns each window's rows as `read_chunk` must yield them.
    """
    results = table_results(source, table, data, kind_by_column, roles, windows, page_rows)
    queue_results(moto_port, source.credentials.region_name, {k: v * repeat for k, v in results.items()})
    time_column = time_column_of(roles)
    typed = as_source_types(data, kind_by_column)
    return [window_of(typed, time_column, lower, upper) for lower, upper in windows]
