"""What an InfluxDB database of the bench holds, checked against the source rows after the timed
runs: every point value by value (the project's own canonical form, blocks/influxdb/verify.py,
read back through the target's `read_points`), and counts per series.

The read-back goes one time range at a time, so memory holds one range's points, not a table's."""

from __future__ import annotations

import os
from collections import Counter

import pyarrow as pa
from pydantic import SecretStr

from bench.stack import Stack
from blocks.influxdb.mapping import FieldPlan, PointsPlan
from blocks.influxdb.target import InfluxDBTarget
from blocks.influxdb.verify import compare_points, expected_points
from devstack.servers import influxql


def points_plan(
    tags: list[str],
    fields: list[str],
    measurement: str | None = None,
    measurement_column: str | None = None,
    time_column: str = "time",
) -> PointsPlan:
    """The mapping the bench's migrations resolve to: fields under their own names, typed by their columns."""
    return PointsPlan(
        time_column=time_column,
        measurement=measurement,
        measurement_column=measurement_column,
        tags=tuple(tags),
        fields=tuple(FieldPlan(column=f, key=f) for f in fields),
    )


def target(stack: Stack, database: str) -> InfluxDBTarget:
    extra = stack.influx.extra
    return InfluxDBTarget(
        api="v1",
        url=extra["url"],
        database=database,
        username=extra["user"],
        password=SecretStr(os.environ["INFLUX_PASSWORD"]),
    )


def assert_range_equal(
    db: InfluxDBTarget,
    rows: pa.Table,
    plan: PointsPlan,
    measurements: list[str],
    start_ns: int,
    stop_ns: int,
    where: str,
) -> int:
    """Every point of `measurements` with start_ns <= time < stop_ns in `db` must be exactly what
    `rows` (the source rows of that range) map to under `plan`: the same points (measurement,
    tag set, time in ns), each field with the same type and value, none missing or extra.
    Returns the number of points compared; AssertionError naming the first difference."""
    want = expected_points(rows, plan)
    got = db.read_points(measurements, start_ns, stop_ns)
    problem = compare_points(want, got, where)
    if problem is not None:
        raise AssertionError(problem)
    if got.num_rows != rows.num_rows:  # the bench's data has no row the encoder leaves out
        raise AssertionError(f"{where}: {got.num_rows} points for {rows.num_rows} source rows")
    return got.num_rows


def series_counts(
    stack: Stack, database: str, measurement: str, fields: list[str], start_ns: int, stop_ns: int
) -> Counter:
    """(tag values sorted by key, field) -> count of that field's values per series in the range."""
    select = ", ".join(f'count("{f}") AS "{f}"' for f in fields)
    results = influxql(
        stack.influx,
        f'SELECT {select} FROM "{measurement}" WHERE time >= {start_ns} AND time < {stop_ns} GROUP BY *',
        db=database,
    )
    counts: Counter = Counter()
    for series in results[0].get("series", []):
        tags = tuple(v for _, v in sorted(series.get("tags", {}).items()))
        columns = series["columns"]
        for row in series["values"]:
            for f in fields:
                counts[tags, f] += row[columns.index(f)]
    return counts


def expected_series_counts(rows: pa.Table, tags: list[str], fields: list[str]) -> Counter:
    """`series_counts` as the source rows make it (every field of every row has a value)."""
    grouped = rows.group_by(sorted(tags)).aggregate([([], "count_all")])
    counts: Counter = Counter()
    keys = [grouped.column(t).to_pylist() for t in sorted(tags)]
    for tag_values, n in zip(zip(*keys, strict=True), grouped.column("count_all").to_pylist(), strict=True):
        for f in fields:
            counts[tuple(tag_values), f] = n
    return counts
