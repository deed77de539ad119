"""(h) A Timestream-sized run: a multi-measure Timestream table (3 dimensions, measure_name, time,
a DOUBLE and a BIGINT measure) exported with UNLOAD to S3 and loaded into InfluxDB 1.x by the
`migrate` flow (`export_mode: unload`, `verify: counts`, concurrency 2, one chunk per day),
against the raw line-protocol writer of (b) (10k-line POSTs, 2 writers) in the same run.

moto stands in for AWS, as in tests/test_energy_migration.py and tests/test_pairs.py: its
timestream-query answers only canned results (`/moto-api/static/timestream/query-results`,
popped per exact query string) and its UNLOAD writes nothing. So the bench writes each chunk's
Parquet files (naive nanosecond time, as UNLOAD writes it) and a Timestream-style manifest
under the S3 prefix the source derives from the chunk's SELECT (`unload_prefix`), and queues,
for the strings the source builds, the answers a migration asks for: the connection check,
DESCRIBE (once more per chunk in unload mode), the bounds, null counts, each window's COUNT
and its UNLOAD (rows, metadataFile, manifestFile). One UNLOAD per chunk. The window SELECTs
of the query API are not queued: in unload mode they are never run.

GB/h: the line-protocol bytes the points make (encoded with blocks/influxdb/line_protocol's
`encode_batch` while the raw writer's bodies are prepared; uncompressed) per hour of wall
time. The raw writer's bodies are written to a file and streamed from it, so the points
never sit in memory at once; the data of a chunk is generated from its index whenever needed.

Checked after the timed runs: both databases hold, per series and per day, exactly the
source's count of each field, and the flow's database is read back one quarter-day at a time
and compared value by value with the source rows (blocks/influxdb/verify.py). See
`FULL_READ_BACK_MAX` for which chunks are read back.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import urllib3

from bench import influx_check
from bench.migrate_runs import pg_settings, run_migrate, verified_as, write_migration
from bench.pg_to_pg import VERIFY
from bench.report import Row
from bench.stack import AWS_REGION, Stack
from blocks.influxdb.line_protocol import encode_batch
from blocks.timestream import TimestreamSettings
from blocks.timestream.source import CHECK_SQL, TimestreamSource
from devstack.servers import influxql
from tests.timestream_fake import DESCRIBE_COLUMNS, queue_results, render, result_page, scalar_column

TABLE = "sensor_readings"
TS_DATABASE = "bench_ts"
BUCKET = "bench-unload"
MEASURE_NAME = "readings"  # the measurement, from measure_name (the default mapping)
TAGS = ["region", "host", "sensor"]  # DIMENSIONs: tags by default
FIELDS = ["value", "units"]  # MULTI measures: fields under their own names
NAMES = [*TAGS, "measure_name", "time", *FIELDS]  # DESCRIBE order
KINDS = {**dict.fromkeys(TAGS, "VARCHAR"), "measure_name": "VARCHAR", "time": "TIMESTAMP"}
KINDS |= {"value": "DOUBLE", "units": "BIGINT"}
ROLES = {**dict.fromkeys(TAGS, "DIMENSION"), "measure_name": "MEASURE_NAME", "time": "TIMESTAMP"}
ROLES |= dict.fromkeys(FIELDS, "MULTI")
CHUNKS = 10  # days; chunk_interval 1d
FILES_PER_CHUNK = 2  # UNLOAD writes a chunk as several files
START = datetime(2024, 3, 1, tzinfo=UTC)
DAY_NS = 86_400 * 10**9
START_NS = int(START.timestamp()) * 10**9
BATCH_LINES = 10_000
WRITERS = 2
CONCURRENCY = 2
READ_BACK_PARTS = 4  # each chunk is read back in quarter days, a quarter of its points at a time
# Value by value, every chunk is read back up to FULL_READ_BACK_MAX points (or with
# `--ts-full-check`); above it, only SAMPLE_CHUNKS (chosen in advance: the first and the last
# chunk, whose ranges start and end at the run's window). Here (2 CPUs, load average about 8)
# the read-back compared 2M points in 39 s, so all 10M would take about 3.3 minutes, above the
# ~3 minutes allowed for it. Every chunk's counts per series and day are checked regardless.
FULL_READ_BACK_MAX = 2_000_000
SAMPLE_CHUNKS = (0, CHUNKS - 1)


def chunk_rows(n: int, k: int) -> pa.Table:
    """Chunk k's rows (day k) as Timestream's query API types them: n / CHUNKS points at
    distinct nanosecond times over 4 x 50 x 10 = 2,000 series; the same every call."""
    m = (k + 1) * n // CHUNKS - k * n // CHUNKS
    rng = np.random.default_rng([17, k])
    step = DAY_NS // max(m, 1)
    local = np.arange(m, dtype=np.int64)
    return pa.table(
        {
            "region": pa.array(
                np.array(["us-east", "eu-west", "ap-south", "sa-east"])[rng.integers(0, 4, m)]
            ),
            "host": pa.array(np.char.add("host-", rng.integers(0, 50, m).astype(str))),
            "sensor": pa.array(np.char.add("s", rng.integers(0, 10, m).astype(str))),
            "measure_name": pa.array(np.full(m, MEASURE_NAME)),
            "time": pa.array(START_NS + k * DAY_NS + local * step + local % 997, pa.timestamp("ns", "UTC")),
            "value": rng.normal(20.0, 5.0, m),
            "units": rng.integers(-(10**12), 10**12, m),
        }
    )


def windows() -> list[tuple[datetime, datetime]]:
    """The chunks the flow plans for start_time=START, end_time=START + CHUNKS days, chunk_interval 1d."""
    return [(START + timedelta(days=k), START + timedelta(days=k + 1)) for k in range(CHUNKS)]


def source_settings(stack: Stack) -> dict:
    return {
        "type": "timestream",
        "database": TS_DATABASE,
        "region": AWS_REGION,
        "endpoint_url": stack.moto_url,
        "access_key_id_env": "AWS_ACCESS_KEY_ID",
        "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
        "export_mode": "unload",
        "unload_location": f"s3://{BUCKET}/exports/",
    }


def put_unload(s3, source: TimestreamSource, select_sql: str, files: list[pa.Table], chunk: int) -> str:
    """Write the files and a Timestream-style manifest where UNLOAD would (as
    tests/test_timestream_source.py's put_unload does); return the manifest's URI."""
    bucket, _, key_prefix = source.unload_prefix(select_sql).removeprefix("s3://").partition("/")
    entries = []
    for i, table in enumerate(files):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="gzip")  # as UNLOAD writes them
        body = sink.getvalue().to_pybytes()
        key = f"{key_prefix}results/AEDAQANBENCH{chunk:04d}_{i}.parquet"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        metadata = {"content_length_in_bytes": len(body), "row_count": table.num_rows}
        entries.append({"url": f"s3://{bucket}/{key}", "file_metadata": metadata})
    manifest_key = f"{key_prefix}AEDAQANBENCH{chunk:04d}_manifest.json"
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


def stage_unloads(stack: Stack, n: int) -> None:
    """Every chunk's UNLOAD files and manifest on S3, and every answer the flow asks for queued."""
    source = TimestreamSettings.model_validate(source_settings(stack)).build("source")
    s3 = boto3.client("s3", endpoint_url=stack.moto_url, region_name=AWS_REGION)
    s3.create_bucket(Bucket=BUCKET)
    bigint = scalar_column("n", "BIGINT")
    describe = result_page(
        [scalar_column(c, "VARCHAR") for c in DESCRIBE_COLUMNS],
        [[name, KINDS[name].lower(), ROLES[name]] for name in NAMES],
    )
    results: dict[str, list[dict]] = {
        CHECK_SQL: [result_page([scalar_column("_col0", "INTEGER")], [["1"]])] * 2,
        # inspect-source, then once per chunk (the types UNLOAD's files are read back as); spares harmless
        source.describe_sql(TABLE): [describe] * (CHUNKS + 2),
    }
    first, last = chunk_rows(n, 0).column("time")[0], chunk_rows(n, CHUNKS - 1).column("time")[-1]
    bounds = [render(pa.array([first, last]), "TIMESTAMP")]
    results[source.bounds_sql(TABLE, "time")] = [
        result_page([scalar_column("lo", "TIMESTAMP"), scalar_column("hi", "TIMESTAMP")], bounds)
    ] * 2
    for name in NAMES:
        if name != "time":
            results[source.count_nulls_sql(TABLE, name)] = [result_page([bigint], [["0"]])]
    unload_columns = [scalar_column("rows", "BIGINT"), scalar_column("metadataFile", "VARCHAR")]
    unload_columns.append(scalar_column("manifestFile", "VARCHAR"))
    for k, (lower, upper) in enumerate(windows()):
        rows = chunk_rows(n, k)
        naive = rows.set_column(4, "time", rows.column("time").cast(pa.timestamp("ns")))  # as UNLOAD writes
        per_file = -(-naive.num_rows // FILES_PER_CHUNK)
        files = [naive.slice(i * per_file, per_file) for i in range(FILES_PER_CHUNK)]
        select_sql = source.window_sql(TABLE, NAMES, "time", lower, upper)
        manifest = put_unload(s3, source, select_sql, files, k)
        metadata = manifest.replace("_manifest.json", "_metadata.json")
        count = [result_page([bigint], [[str(rows.num_rows)]])]
        results[source.count_sql(TABLE, "time", lower, upper)] = count * 2
        results[source.unload_sql(select_sql)] = [
            result_page(unload_columns, [[str(rows.num_rows), metadata, manifest]])
        ]
    queue_results(stack.moto.port, AWS_REGION, results)


def write_bodies(stack: Stack, n: int) -> tuple[Path, list[tuple[int, int]], int]:
    """The raw writer's preparation: every point as line protocol in BATCH_LINES-line bodies,
    written one after another to a file. Returns the file, each body's (offset, length), and
    the total bytes (the line protocol the points make)."""
    mapping = influx_check.points_plan(TAGS, FIELDS, measurement_column="measure_name").point_mapping()
    path = stack.root / "timestream_bodies.lp"
    spans, offset = [], 0
    with open(path, "wb") as out:
        for k in range(CHUNKS):
            rows = chunk_rows(n, k)
            for i in range(0, rows.num_rows, BATCH_LINES):
                body, report = encode_batch(rows.slice(i, BATCH_LINES), mapping)
                if report.lines_out != min(BATCH_LINES, rows.num_rows - i):
                    raise AssertionError(f"the encoder left out points of chunk {k}: {report}")
                out.write(body)
                spans.append((offset, len(body)))
                offset += len(body)
    return path, spans, offset


def post_file(stack: Stack, database: str, path: Path, spans: list[tuple[int, int]]) -> float:
    """Seconds to POST every body of the file to /write, WRITERS requests in flight, each
    writer reading its next body from the file; any non-204 raises."""
    extra = stack.influx.extra
    http = urllib3.PoolManager(maxsize=WRITERS)
    headers = urllib3.make_headers(basic_auth=f"{extra['user']}:{extra['password']}")
    url = f"{extra['url']}/write?db={database}&precision=ns"
    lock, queue = threading.Lock(), iter(spans)

    def writer(source) -> None:
        while True:
            with lock:
                span = next(queue, None)
                if span is None:
                    return
                source.seek(span[0])
                body = source.read(span[1])
            resp = http.request("POST", url, body=body, headers=headers)
            if resp.status != 204:
                raise RuntimeError(f"InfluxDB answered {resp.status}: {resp.data[:300]!r}")

    with open(path, "rb") as source:
        started = time.perf_counter()
        with ThreadPoolExecutor(WRITERS) as pool:
            for future in [pool.submit(writer, source) for _ in range(WRITERS)]:
                future.result()
        return time.perf_counter() - started


def migrate_points(stack: Stack, n: int, database: str) -> dict:
    influxql(stack.influx, f'CREATE DATABASE "{database}"')
    extra = stack.influx.extra
    name = "bench_timestream"
    path = write_migration(
        stack,
        name,
        {
            "source": source_settings(stack),
            "target": {
                "type": "influxdb",
                "api": "v1",
                "url": extra["url"],
                "database": database,
                "username": extra["user"],
                "password_env": "INFLUX_PASSWORD",
                "gzip": False,  # loopback, as in (b): the raw writer sends plain text too
                "batch_lines": BATCH_LINES,
                "writers": WRITERS,
            },
            "ledger": pg_settings(stack),
            "concurrency": CONCURRENCY,
            "verify": VERIFY,
            "tables": [{"name": TABLE, "chunk_column": "time", "chunk_interval": "1d"}],
        },
    )
    job_id = f"bench-h-{n}"
    window = {"start_time": START.isoformat(), "end_time": (START + timedelta(days=CHUNKS)).isoformat()}
    result = run_migrate(path, name, job_id, flow_kwargs=window)
    verified_as(stack, job_id, VERIFY)
    if result["rows"] != n or result["chunks"] != CHUNKS:
        raise AssertionError(f"migrate reported {result['rows']} rows in {result['chunks']} chunks")
    return result


def check_counts(stack: Stack, n: int, databases: list[str]) -> None:
    """Per day and per series, each database holds exactly the source's count of every field."""
    for k in range(CHUNKS + 1):  # the day after the last holds nothing
        rows = chunk_rows(n, k) if k < CHUNKS else chunk_rows(n, 0).slice(0, 0)
        want = influx_check.expected_series_counts(rows, TAGS, FIELDS)
        lower = START_NS + k * DAY_NS
        for database in databases:
            got = influx_check.series_counts(stack, database, MEASURE_NAME, FIELDS, lower, lower + DAY_NS)
            if got != want:
                wrong = sorted(key for key in set(got) | set(want) if got[key] != want[key])[:3]
                raise AssertionError(
                    f"{database}, day {k}: counts per series differ, e.g. "
                    + "; ".join(f"{key}: {got[key]} stored, {want[key]} in the source" for key in wrong)
                )


def check_values(stack: Stack, n: int, database: str, chunks: list[int]) -> int:
    """The chunks' points read back a part of a day at a time and compared value by value."""
    plan = influx_check.points_plan(TAGS, FIELDS, measurement_column="measure_name")
    db = influx_check.target(stack, database)
    part_ns = DAY_NS // READ_BACK_PARTS
    checked = 0
    for k in chunks:
        rows = chunk_rows(n, k)
        times = np.asarray(rows.column("time").cast(pa.int64()))
        for p in range(READ_BACK_PARTS):
            lower = START_NS + k * DAY_NS + p * part_ns
            upper = lower + part_ns if p < READ_BACK_PARTS - 1 else START_NS + (k + 1) * DAY_NS
            part = rows.filter(pa.array((times >= lower) & (times < upper)))
            checked += influx_check.assert_range_equal(
                db, part, plan, [MEASURE_NAME], lower, upper, f"{database}, chunk {k} part {p}"
            )
    return checked


def measure(stack: Stack, n: int, full_check: bool = False) -> list[Row]:
    started = time.perf_counter()
    stage_unloads(stack, n)
    print(
        f"  UNLOAD files of {CHUNKS} chunks on S3 (moto), answers queued: {time.perf_counter() - started:.0f} s"
    )
    started = time.perf_counter()
    path, spans, lp_bytes = write_bodies(stack, n)
    print(
        f"  line protocol: {lp_bytes / 1e9:.2f} GB in {len(spans)} bodies, "
        f"encoded in {time.perf_counter() - started:.0f} s",
        flush=True,
    )

    influxql(stack.influx, 'CREATE DATABASE "raw_ts"')
    raw = post_file(stack, "raw_ts", path, spans)
    path.unlink()
    print(f"  raw line-protocol POSTs: {raw:.1f} s", flush=True)
    result = migrate_points(stack, n, "mig_ts")
    flow = result["seconds"]
    print(
        f"  migrate: {flow:.1f} s in {result['chunks']} chunks (export {result['export_seconds']:.1f} s, "
        f"validate {result['validate_seconds']:.1f} s, load+reconcile {result['load_seconds']:.1f} s "
        f"summed over chunks), peak RSS {result['max_rss_mb']:.0f} MB",
        flush=True,
    )

    started = time.perf_counter()
    check_counts(stack, n, ["raw_ts", "mig_ts"])
    print(f"  counts per series and day equal in both databases: {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    value_chunks = list(range(CHUNKS)) if full_check or n <= FULL_READ_BACK_MAX else list(SAMPLE_CHUNKS)
    checked = check_values(stack, n, "mig_ts", value_chunks)
    print(
        f"  read back and compared value by value: {checked:,} points of mig_ts "
        f"(chunks {value_chunks}) in {time.perf_counter() - started:.0f} s"
    )
    scope = (
        "all points"
        if len(value_chunks) == CHUNKS
        else f"every point of chunks {' and '.join(map(str, value_chunks))} (of 0-{CHUNKS - 1})"
    )

    def gb_per_hour(seconds: float) -> float:
        return lp_bytes / seconds * 3600 / 1e9

    return [
        Row(
            f"h: Timestream UNLOAD (S3) -> InfluxDB migrate (verify: {VERIFY}), {n:,} points, "
            f"{CHUNKS} chunks, concurrency {CONCURRENCY}",
            f"{flow:.1f} s, {n / flow:,.0f} points/s, {gb_per_hour(flow):.2f} GB/h of line protocol "
            f"({lp_bytes / 1e9:.2f} GB), peak RSS {result['max_rss_mb']:.0f} MB",
            f"raw POSTs {raw:.1f} s, {n / raw:,.0f} points/s, {gb_per_hour(raw):.2f} GB/h",
            f"{raw / flow:.2f}x raw",
            f"reported; checked: counts per series and day (both), {scope} value by value",
        )
    ]
