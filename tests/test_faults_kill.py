"""kill -9 in the middle of a migration, then the same job again: the target ends equal to the
source, with no row lost, none twice, and no finished chunk loaded again.

The migration runs in a child process (`tests/crash_child.py`) that SIGKILLs itself when the
third chunk reaches one of four points: inside the staging write, inside the load (PostgreSQL:
COPY done, not committed; InfluxDB: the first write request answered), between the load's
commit and Prefect persisting the chunk's result, and inside validation. The test checks the
state the kill left, reruns the job in this process, and compares the target with the source
value by value and through an order-independent checksum over every column.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
from psycopg.types.json import Jsonb

from tasks.load_points import time_ns
from tests.energy_support import (
    assert_same_points,
    expected_points,
    influx_migrations,
    single_measure_records,
    stored,
)
from tests.prefect_support import ROOT
from tests.support import assert_same_rows, normalise, target_rows, write_migrations
from tests.test_energy_migration import FIELDS, FLOAT_KEYS, TAGS, energy_table, unload_source

POINTS = ["export", "load", "commit", "validate"]
KILLED = "00002"  # the chunk id prefix of the third chunk: two chunks finish before the kill
EVENTS_JSON = {"PAYLOAD", "ATTRS", "TAGS"}
CHILD_TIMEOUT = 300


@dataclass
class Case:
    """One migration under test, and how to look at its source and target."""

    path: Path
    source_name: str
    table: str
    window: dict[str, str]  # the flow's start_time and end_time, if any
    source_count: Callable[[str, str], int]  # rows of the source in a chunk's [lower, upper)
    target_count: Callable[[str, str], int]  # rows (points) of the target in that range
    assert_exact: Callable[[], None]
    reads_in_place: bool = False  # the source stages by reference: no staged files at all


# --- the PostgreSQL case: a day of Snowflake's demo EVENTS table ---------------------------------

# EVENT_TIME is a TIMESTAMP_NTZ, one row every 3 s: the window holds 28,800 of EVENTS' rows, in
# six 4-hour chunks of 4,800 rows.
EVENTS_START, EVENTS_END = datetime(2024, 1, 1), datetime(2024, 1, 2)
EVENTS_WINDOW = {"start_time": f"{EVENTS_START.isoformat()}Z", "end_time": f"{EVENTS_END.isoformat()}Z"}


@dataclass
class Events:
    names: list[str]
    rows: list[tuple]  # normalised, as tests/support.py compares them
    exact: list[tuple]  # as Snowflake returns them (JSON parsed): what the checksum copies


@pytest.fixture(scope="module")
def events(snowflake_kwargs, demo_source) -> Events:
    """EVENTS' rows in the window, ordered by EVENT_ID (read once: tests only read them)."""
    import snowflake.connector

    conn = snowflake.connector.connect(**snowflake_kwargs, database="ANALYTICS", schema="PUBLIC")
    try:
        cur = conn.cursor()
        cur.execute(
            'SELECT * FROM "ANALYTICS"."PUBLIC"."EVENTS" WHERE "EVENT_TIME" >= %s AND "EVENT_TIME" < %s '
            'ORDER BY "EVENT_ID"',
            (EVENTS_START, EVENTS_END),
        )
        names = [d[0].lower() for d in cur.description]
        fetched = cur.fetchall()
    finally:
        conn.close()
    json_at = {names.index(c.lower()) for c in EVENTS_JSON}
    exact = [
        tuple(json.loads(v) if i in json_at and v is not None else v for i, v in enumerate(row))
        for row in fetched
    ]
    assert exact, "no EVENTS row in the window"
    return Events(names, [tuple(normalise(v) for v in row) for row in exact], exact)


@pytest.fixture
def postgres_case(tmp_path, servers, pg_database, pg_connect, events) -> Case:
    # No primary key: a chunk loaded twice would show as duplicate rows instead of a refused COPY.
    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        [{"name": "EVENTS", "chunk_column": "EVENT_TIME", "chunk_interval": "4h"}],
        extra={"concurrency": 1},
    )
    names, expected = events.names, events.rows
    times = [row[names.index("event_time")] for row in expected]

    def source_count(lower: str, upper: str) -> int:
        lo, hi = datetime.fromisoformat(lower), datetime.fromisoformat(upper)
        return sum(lo <= t < hi for t in times)

    def target_count(lower: str, upper: str) -> int:
        with pg_connect() as conn:
            if conn.execute("SELECT to_regclass('analytics.events')").fetchone() == (None,):
                return 0
            return conn.execute(
                "SELECT count(*) FROM analytics.events WHERE event_time >= %s AND event_time < %s",
                (datetime.fromisoformat(lower), datetime.fromisoformat(upper)),
            ).fetchone()[0]

    def assert_exact() -> None:
        got = target_rows(pg_connect, "analytics.events", names, "event_id")
        assert_same_rows(expected, got, names)
        with pg_connect() as conn:
            total, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM analytics.events"
            ).fetchone()
        assert total == distinct == len(expected), (total, distinct, len(expected))
        target_sums, expected_sums = pg_checksums(pg_connect, names, events.exact)
        differ = [n for n, a, b in zip(["(row)", *names], target_sums, expected_sums, strict=True) if a != b]
        assert not differ, f"checksums differ in {differ}"

    return Case(path, "analytics", "EVENTS", EVENTS_WINDOW, source_count, target_count, assert_exact)


def pg_checksums(pg_connect, names: list[str], expected: list[tuple]) -> tuple[tuple, tuple]:
    """Order-independent checksums of analytics.events, and the same over the source rows that
    psycopg copies into a scratch table of the same column types: the sum of a 64-bit hash of
    each row's text, then of each column's text."""
    json_columns = {name.lower() for name in EVENTS_JSON}
    json_at = [i for i, name in enumerate(names) if name in json_columns]
    cols = ", ".join(f'"{n}"' for n in names)
    sums = ", ".join(f'sum(hashtextextended("{n}"::text, 0))' for n in names)
    with pg_connect() as conn:
        conn.execute(f"CREATE TEMP TABLE expected_events AS SELECT {cols} FROM analytics.events LIMIT 0")
        with conn.cursor().copy(f"COPY expected_events ({cols}) FROM STDIN") as copy:
            for row in expected:
                values = list(row)
                for i in json_at:
                    values[i] = None if values[i] is None else Jsonb(values[i])
                copy.write_row(values)
        query = f"SELECT sum(hashtextextended(t::text, 0)), {sums} FROM (SELECT {cols} FROM {{}}) t"
        target = conn.execute(query.format("analytics.events")).fetchone()
        source = conn.execute(query.format("expected_events")).fetchone()
    return target, source


# --- the InfluxDB case: a Timestream UNLOAD (Parquet files, read in place) into the suite's InfluxDB


@pytest.fixture
def influxdb_case(tmp_path, servers, pg_database, influx_database) -> Case:
    records = single_measure_records(30_000, days=6)
    path = influx_migrations(
        tmp_path / "migrations.yaml",
        servers,
        pg_database,
        influx_database,
        [energy_table(mapping={"tags": TAGS})],
        source=unload_source(tmp_path, records),
        # Small requests, one in flight: the load of a chunk takes ten requests, one after another.
        target={"batch_lines": 500, "writers": 1},
        extra={"concurrency": 1},
    )
    times = records.column("time").cast(pa.int64()).to_pylist()
    want = expected_points(records, TAGS, FIELDS, "measure_name", None)

    def ns(bound: str) -> int:
        return time_ns(datetime.fromisoformat(bound))

    def source_count(lower: str, upper: str) -> int:
        return sum(ns(lower) <= t < ns(upper) for t in times)

    def target_count(lower: str, upper: str) -> int:
        got, _ = stored(servers, influx_database)
        return sum(ns(lower) <= key[2] < ns(upper) for key in got)

    def assert_exact() -> None:
        got, _ = stored(servers, influx_database)
        assert_same_points(got, want, FLOAT_KEYS)
        assert len(got) == records.num_rows  # one point per source row: none lost, none twice
        assert points_digest(got) == points_digest(want)

    return Case(path, "energy", "generation_data", {}, source_count, target_count, assert_exact, True)


def points_digest(points: dict[tuple, dict]) -> str:
    """sha256 over every point (measurement, tags, time, each field and its type), in sorted order.
    InfluxDB's JSON drops the ".0" of whole floats, so float fields are compared as floats."""
    lines = sorted(
        json.dumps(
            [
                name,
                list(tags),
                ns,
                sorted(
                    (k, "float", float(v)) if k in FLOAT_KEYS else (k, type(v).__name__, v)
                    for k, v in values.items()
                ),
            ]
        )
        for (name, tags, ns), values in points.items()
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- the test ----------------------------------------------------------------------------------


def ledger(pg_connect, job_id: str) -> dict[str, dict]:
    """chunk_id -> the chunk's ledger row, in chunk order."""
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT chunk_id, status, loaded_at, rows_loaded, lower_bound, upper_bound "
            "FROM migration_status.migration_chunk_status WHERE job_id = %s ORDER BY chunk_id",
            (job_id,),
        ).fetchall()
    keys = ("status", "loaded_at", "rows_loaded", "lower", "upper")
    return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}


def persisted_results(job_id: str, table: str) -> set[str]:
    """Chunk ids whose `migrate-chunk` result Prefect has persisted for the job (the result's
    storage key is migrate/<job>/<where>/<table>/<chunk>/<lower>/<upper>/chunk)."""
    root = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"]) / "migrate" / job_id
    return {path.parents[2].name for path in root.glob(f"*/{table}/*/*/*/chunk")}


def run_child(case: Case, job_id: str, point: str) -> int:
    """Run the migration in a child process that kills itself at `point` of chunk KILLED;
    returns the child's pid once it died there."""
    child = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.crash_child", str(case.path), case.source_name, job_id, point),
            *(KILLED, *(case.window[k] for k in ("start_time", "end_time") if case.window)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = child.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        output, _ = child.communicate()
        pytest.fail(f"the child did not die within {CHILD_TIMEOUT} s:\n{output[-3000:]}")
    assert child.returncode == -signal.SIGKILL, f"exit {child.returncode}:\n{output[-3000:]}"
    assert f"CRASH_CHILD killed at {point} of chunk {KILLED}" in output, output[-3000:]
    return child.pid


@pytest.mark.parametrize("target", ["postgres", "influxdb"])
@pytest.mark.parametrize("point", POINTS)
def test_kill_9_then_rerun_ends_exact(point, target, request, tmp_path, pg_connect):
    from flows.migrate import migrate

    case: Case = request.getfixturevalue(f"{target}_case")
    job_id = f"kill-{point}-{target}"
    staging = tmp_path / "staging" / job_id / case.table

    child_pid = run_child(case, job_id, point)

    # --- what the kill left ---
    crashed = ledger(pg_connect, job_id)
    killed = next(cid for cid in crashed if cid.startswith(KILLED))
    before = [cid for cid in crashed if cid < killed]
    after = [cid for cid in crashed if cid > killed]
    assert len(before) == 2 and after, list(crashed)
    for cid in before:  # finished before the kill: loaded, whole, with their results persisted
        chunk = crashed[cid]
        rows = case.source_count(chunk["lower"], chunk["upper"])
        assert chunk["status"] == "loaded" and chunk["rows_loaded"] == rows > 0, (cid, chunk)
        assert case.target_count(chunk["lower"], chunk["upper"]) == rows, cid
    assert persisted_results(job_id, case.table) == set(before)
    for cid in after:  # never started
        assert crashed[cid]["status"] != "loaded", (cid, crashed[cid])
        assert case.target_count(crashed[cid]["lower"], crashed[cid]["upper"]) == 0, cid
        assert not list(staging.glob(f"{cid}.*")), cid

    chunk = crashed[killed]
    rows = case.source_count(chunk["lower"], chunk["upper"])
    in_target = case.target_count(chunk["lower"], chunk["upper"])
    partial = staging / f"{killed}.parquet.partial"
    final = staging / f"{killed}.parquet"
    if case.reads_in_place:  # the source's Parquet files are read where they are: nothing staged
        assert not list((tmp_path / "staging").rglob("*.parquet*"))
    elif point == "export":  # half a file under its temporary name, nothing under the final one
        assert partial.exists() and not final.exists()
    else:
        assert final.exists() and not partial.exists()
    if point == "commit":  # loaded and recorded, only the Prefect result is missing
        assert chunk["status"] == "loaded" and chunk["rows_loaded"] == rows, chunk
        assert in_target == rows
    elif point == "load" and target == "influxdb":  # a partial write: some points, not all
        assert chunk["status"] != "loaded", chunk
        assert 0 < in_target < rows, (in_target, rows)
    else:  # nothing of the chunk in the target (PostgreSQL's uncommitted COPY went with its session)
        assert chunk["status"] != "loaded", chunk
        assert in_target == 0, in_target

    # --- the same job again ---
    state = migrate(
        source_name=case.source_name,
        job_id=job_id,
        migrations_file=str(case.path),
        return_state=True,
        **case.window,
    )
    report = state.result()
    assert report.status == "completed" and report.resumed, report.summary()

    rerun = ledger(pg_connect, job_id)
    assert rerun.keys() == crashed.keys()
    assert all(c["status"] == "loaded" for c in rerun.values()), rerun
    kept = before + [killed] if point == "commit" else before
    for cid in kept:  # loaded before the kill, never again
        assert rerun[cid]["loaded_at"] == crashed[cid]["loaded_at"], cid
        assert rerun[cid]["rows_loaded"] == crashed[cid]["rows_loaded"], cid
    reports = {c.chunk_id: c for c in report.chunks}
    assert reports.keys() == rerun.keys()
    for cid in before:  # the crashed run's persisted results: the rerun did not run them at all
        assert reports[cid].pid == child_pid and not reports[cid].already_loaded, reports[cid]
    assert reports[killed].pid == os.getpid()
    assert reports[killed].already_loaded == (point == "commit"), reports[killed]
    for cid in after:
        assert reports[cid].pid == os.getpid() and not reports[cid].already_loaded, reports[cid]
    assert sum(c.rows for c in report.chunks) == sum(c["rows_loaded"] for c in rerun.values())

    assert not list((tmp_path / "staging").rglob("*.partial")), "a .partial staging file was left behind"
    case.assert_exact()
