"""(b) Staged Parquet into InfluxDB 1.x: the `migrate` flow (`verify: counts`, as the target was
set on such runs) against posting precomputed line protocol (encoded beforehand with
blocks/line_protocol.py) in 10k-line batches, 2 writers.

After both timed runs, every point of both databases is read back one day at a time and
compared value by value with the source rows (tags, fields with their types, time in ns)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import urllib3

from bench import influx_check
from bench.migrate_runs import pg_settings, run_migrate, verified_as, write_migration
from bench.pg_to_pg import VERIFY
from bench.report import Row, met
from bench.stack import Stack
from blocks.influxdb.line_protocol import FieldSpec, PointMapping, encode_batch
from devstack.servers import influxql

DAYS = 4  # chunk_interval 1d: four chunks, 250k points each at 1M
DAY_NS = 86_400 * 10**9
START_NS = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z
BATCH_LINES = 10_000
WRITERS = 2
MEASUREMENT = "readings"
TAGS = ["region", "host", "sensor"]
FIELDS = ["value", "units"]


def points_table(n: int, seed: int = 11) -> pa.Table:
    """n points, one per distinct time, in 4 x 50 x 10 = 2,000 series (a fleet of sensors)."""
    rng = np.random.default_rng(seed)
    step = DAYS * DAY_NS // n
    return pa.table(
        {
            "time": pa.array(START_NS + np.arange(n, dtype=np.int64) * step, pa.timestamp("ns", "UTC")),
            "region": pa.array(
                np.array(["us-east", "eu-west", "ap-south", "sa-east"])[rng.integers(0, 4, n)]
            ),
            "host": pa.array(np.char.add("host-", rng.integers(0, 50, n).astype(str))),
            "sensor": pa.array(np.char.add("s", rng.integers(0, 10, n).astype(str))),
            "value": rng.normal(20.0, 5.0, n),
            "units": rng.integers(-(10**9), 10**9, n),
        }
    )


def stage_files(stack: Stack, points: pa.Table) -> str:
    """One Parquet file per day under <root>/points/readings; returns the source location."""
    folder = stack.root / "points" / MEASUREMENT
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-points.num_rows // DAYS)
    for i in range(DAYS):
        pq.write_table(points.slice(i * per_file, per_file), folder / f"part-{i}.parquet")
    return str(stack.root / "points")


def post_lines(stack: Stack, database: str, bodies: list[bytes]) -> float:
    """Seconds to POST every body to /write with WRITERS requests in flight; any non-204 raises."""
    extra = stack.influx.extra
    http = urllib3.PoolManager(maxsize=WRITERS)
    headers = urllib3.make_headers(basic_auth=f"{extra['user']}:{extra['password']}")
    url = f"{extra['url']}/write?db={database}&precision=ns"

    def post(body: bytes) -> None:
        resp = http.request("POST", url, body=body, headers=headers)
        if resp.status != 204:
            raise RuntimeError(f"InfluxDB answered {resp.status}: {resp.data[:300]!r}")

    started = time.perf_counter()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(post, bodies))
    return time.perf_counter() - started


def stored_points(stack: Stack, database: str) -> int:
    result = influxql(stack.influx, f'SELECT count("value") FROM "{MEASUREMENT}"', db=database)
    return result[0]["series"][0]["values"][0][1] if result[0].get("series") else 0


def migrate_points(
    stack: Stack,
    location: str,
    database: str,
    job_id: str,
    verify: str | None = None,
    servers_cpu: Callable[[], float] | None = None,
) -> dict:
    """Run `migrate` for the staged points into a new InfluxDB `database` (`verify`: the
    migration's setting, its default when None); the database must then hold every point of
    the source files, or AssertionError. `servers_cpu`: see `run_migrate`."""
    influxql(stack.influx, f'CREATE DATABASE "{database}"')
    extra = stack.influx.extra
    name = f"bench_{database}"
    path = write_migration(
        stack,
        name,
        {
            "source": {"type": "parquet", "location": location},
            "target": {
                "type": "influxdb",
                "api": "v1",
                "url": extra["url"],
                "database": database,
                "username": extra["user"],
                "password_env": "INFLUX_PASSWORD",
                # Loopback: the raw writer sends plain text too, so gzip would only add CPU here.
                "gzip": False,
                "batch_lines": BATCH_LINES,
                "writers": WRITERS,
            },
            "ledger": pg_settings(stack),
            "concurrency": 2,
            "tables": [
                {
                    "name": MEASUREMENT,
                    "chunk_column": "time",
                    "chunk_interval": "1d",
                    "mapping": {"measurement": MEASUREMENT, "tags": TAGS, "fields": FIELDS},
                }
            ],
        }
        | ({"verify": verify} if verify else {}),
    )
    result = run_migrate(path, name, job_id, servers_cpu) | {"job_id": job_id}
    if verify:
        verified_as(stack, job_id, verify)  # the setting took effect
    want = sum(pq.ParquetFile(f).metadata.num_rows for f in Path(location, MEASUREMENT).glob("*.parquet"))
    if (stored := stored_points(stack, database)) != want:
        raise AssertionError(f"InfluxDB database {database} holds {stored} points, expected {want}")
    return result


def measure(stack: Stack, n: int) -> list[Row]:
    points = points_table(n)
    location = stage_files(stack, points)
    mapping = PointMapping(
        measurement=MEASUREMENT,
        tags=tuple(TAGS),
        fields=tuple(FieldSpec(f) for f in FIELDS),
        time_column="time",
    )
    bodies = [encode_batch(points.slice(i, BATCH_LINES), mapping)[0] for i in range(0, n, BATCH_LINES)]

    influxql(stack.influx, 'CREATE DATABASE "raw_points"')
    raw = post_lines(stack, "raw_points", bodies)
    print(f"  raw line-protocol POSTs: {raw:.1f} s")

    result = migrate_points(stack, location, "mig_points", f"bench-b-{n}", VERIFY)
    flow = result["seconds"]
    if (stored := stored_points(stack, "raw_points")) != n:
        raise AssertionError(f"InfluxDB database raw_points holds {stored} points, expected {n}")
    print(
        f"  migrate: {flow:.1f} s in {result['chunks']} chunks (export {result['export_seconds']:.1f} s, "
        f"validate {result['validate_seconds']:.1f} s, load+reconcile {result['load_seconds']:.1f} s "
        f"summed over chunks); both databases hold {n:,} points",
        flush=True,
    )
    started = time.perf_counter()
    checked = assert_points_equal(stack, points, ["raw_points", "mig_points"])
    print(
        f"  read back and compared value by value: {checked:,} points of each database "
        f"in {time.perf_counter() - started:.0f} s"
    )
    ratio = raw / flow
    return [
        Row(
            f"b: Parquet->InfluxDB migrate (verify: {VERIFY}), {n:,} points",
            f"{flow:.1f} s, {n / flow:,.0f} points/s",
            f"raw POSTs {raw:.1f} s, {n / raw:,.0f} points/s",
            f"{ratio:.2f}x raw",
            ">= 0.70x",
            met(ratio >= 0.7),
        )
    ]


def assert_points_equal(stack: Stack, points: pa.Table, databases: list[str]) -> int:
    """Every database must hold exactly the points `points` map to, value by value; read back
    one day at a time. Returns the points compared per database."""
    plan = influx_check.points_plan(TAGS, FIELDS, measurement=MEASUREMENT)
    times = points.column("time").cast(pa.int64())
    checked = 0
    for day in range(DAYS + 1):  # the last day holds nothing; a point there would be extra
        lower, upper = START_NS + day * DAY_NS, START_NS + (day + 1) * DAY_NS
        mask = pc.and_(pc.greater_equal(times, lower), pc.less(times, upper))
        rows = points.filter(mask)
        for database in databases:
            db = influx_check.target(stack, database)
            influx_check.assert_range_equal(
                db, rows, plan, [MEASUREMENT], lower, upper, f"{database}, day {day}"
            )
        checked += rows.num_rows
    if checked != points.num_rows:
        raise AssertionError(f"{checked} points compared, the source has {points.num_rows}")
    return checked
