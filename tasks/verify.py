"""Verify a job after the fact: re-read each chunk it loaded from the source and from the
target, and diff the two (`blocks.diff`), writing nothing.

The ranges checked are the chunks the ledger marks loaded, plus, where the job's scope was
open (an integer chunk column; a time column with no `start_time` or `end_time`; never a
catch-up job's cursor ranges), the rows the source gained beyond the job's first and last
chunk since it was planned: those are
missing in the target unless something else loaded them. Each range is read whole from both
sides, so memory holds one chunk's worth (twice, plus the diff's join), never a table.

Both sides are compared in the target's canonical form: rows as `RowTarget.read_range` reads
them (PostgreSQL: read-only transactions; JSON made canonical through a temporary table that
goes with its transaction), keyed by the table's primary key or compared as multisets; points
as `PointTarget.expected_points` maps the source rows and `read_points` reads them back, keyed
by measurement, tag set and time. Nothing is written: no ledger row, no staged file, no
target row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from pydantic import BaseModel

from blocks.arrow_types import conform
from blocks.columns import LogicalType
from blocks.diff import diff_tables
from blocks.errors import ConfigError
from tasks.config import MigrationSpec, RunWindow
from tasks.connections import build_ledger, build_source, build_target
from tasks.jobs import migration_job
from tasks.load_points import time_ns
from tasks.plan import (
    DEFAULT_CHUNK_INTERVAL,
    Chunk,
    TablePlan,
    integer_step,
    key_ranges,
    plain_bound,
    split_range,
)
from tasks.policy import run_step, step_task

BEYOND = "beyond"  # the chunk id prefix of a range past the job's chunks
SAMPLE_TEXT = 200  # a sample value longer than this is cut, with "…"


class ChangedValue(BaseModel):
    """One changed value: the row's key (without a primary key, the row's other values), the
    column, the source's value and the target's."""

    key: dict[str, Any]
    column: str
    source: Any
    target: Any


class ChunkDiff(BaseModel):
    """How one range of the target differs from the source (`missing`: in the source, not in
    the target; `extra`: in the target, not in the source; `changed`: by key, some column
    differs)."""

    table: str
    chunk_id: str
    lower: str | None
    upper: str | None
    beyond: bool = False
    """A range past the job's chunks, checked for rows the source gained after the job planned."""
    key: list[str]
    source_rows: int
    target_rows: int
    missing: int
    extra: int
    changed: int
    changed_columns: dict[str, int] = {}
    sample_missing: list[dict[str, Any]] = []
    sample_extra: list[dict[str, Any]] = []
    sample_changed: list[ChangedValue] = []
    seconds: float = 0.0

    @property
    def same(self) -> bool:
        return not (self.missing or self.extra or self.changed)


class VerifyRange(BaseModel):
    """One range to check: a chunk the job loaded, or one beyond its chunks."""

    plan: TablePlan
    chunk: Chunk
    beyond: bool = False
    measurements: list[str] = []
    """Point targets: the measurements the job's chunks of the table wrote (the ledger's)."""


class VerifyPlan(BaseModel):
    """What `verify` checks of a job: its ledger row, the ranges, and per table the planned
    chunks the ledger does not show loaded (not checked)."""

    run: dict[str, Any]
    ranges: list[VerifyRange]
    not_loaded: dict[str, int]
    tables: list[TablePlan]


@step_task("check-job")
def check_job(spec: MigrationSpec, job_id: str) -> dict[str, Any]:
    """The job's ledger row. Raises `ConfigError` for a job the migration's ledger does not
    hold, one of another migration, and one that was rolled back (nothing left to verify)."""
    _, run = migration_job(spec, job_id)
    if run["status"] == "rolled_back":
        raise ConfigError(f"job {job_id} was rolled back: its data is gone, there is nothing to verify")
    return run


@step_task("plan-verify")
def plan_verify(spec: MigrationSpec, job_id: str, run: dict[str, Any], plans: list[TablePlan]) -> VerifyPlan:
    """The ranges to check: each chunk the ledger marks loaded, then the rows the source holds
    beyond the job's chunks where its scope was open (see the module docstring), cut into
    pieces no wider than the table's chunks."""
    ledger = build_ledger(spec)
    states = ledger.chunk_states(job_id)
    written: dict[str, set[str]] = {}
    for row in ledger.loaded_chunks(job_id):
        written.setdefault(row["table_name"], set()).update((row["details"] or {}).get("measurements", []))
    window = RunWindow.model_validate((run.get("parameters") or {}).get("window") or {})
    # A catch-up job's scope is its cursor ranges, closed on both sides: nothing lies beyond.
    closed = "catch_up" in (run.get("parameters") or {})
    source = build_source(spec)
    ranges: list[VerifyRange] = []
    not_loaded: dict[str, int] = {}
    for plan in plans:
        loaded = [c for c in plan.chunks if states.get((plan.spec.name, c.chunk_id)) == "loaded"]
        not_loaded[plan.spec.name] = len(plan.chunks) - len(loaded)
        bare = plan.model_copy(update={"chunks": []})
        measurements = sorted(written.get(plan.spec.name, ()))
        beyond = [
            VerifyRange(plan=bare, chunk=c, beyond=True, measurements=measurements)
            for c in ([] if closed else beyond_chunks(source, plan, window))
        ]
        # In key order: the pieces before the job's first chunk, its chunks, the pieces after.
        ranges += [r for r in beyond if r.chunk.index < 0]
        ranges += [VerifyRange(plan=bare, chunk=c, measurements=measurements) for c in loaded]
        ranges += [r for r in beyond if r.chunk.index >= 0]
    return VerifyPlan(run=run, ranges=ranges, not_loaded=not_loaded, tables=plans)


def beyond_chunks(source: Any, plan: TablePlan, window: RunWindow) -> list[Chunk]:
    """Ranges past the job's planned chunks that hold source rows now, where the job's scope
    was open on that side: before its first chunk and from its last chunk's upper bound on.
    Cut by the table's chunk width; the outermost piece is open, so rows the source gains
    meanwhile are read too. None for a table planned empty (its one chunk is open both ways)."""
    chunks = sorted(plan.chunks, key=lambda c: c.index)
    if not chunks or chunks[0].lower is None or chunks[-1].upper is None:
        return []
    integer = plan.chunk_kind is LogicalType.INTEGER
    open_before = integer or window.start_time is None
    open_after = integer or window.end_time is None
    if not (open_before or open_after):
        return []
    data_min, data_max = (plain_bound(b) for b in source.bounds(plan.spec.name, plan.spec.chunk_column))
    if data_min is None:
        return []
    first, last = chunks[0].lower, chunks[-1].upper
    before: list[tuple[Any, Any]] = []
    after: list[tuple[Any, Any]] = []
    if open_before and data_min < first:
        pieces = _pieces(source, plan, window, data_min, first)
        before = [(None, pieces[0][1]), *pieces[1:]]
    if open_after and data_max >= last:
        pieces = _pieces(source, plan, window, last, data_max + _ONE[integer])
        after = [*pieces[:-1], (pieces[-1][0], None)]
    # Indexes: negative before the job's chunks, from 0 after them.
    return [
        Chunk(
            table=plan.spec.name,
            chunk_id=f"{BEYOND}-before-{i:05d}",
            index=i - len(before),
            lower=lo,
            upper=hi,
        )
        for i, (lo, hi) in enumerate(before)
    ] + [
        Chunk(table=plan.spec.name, chunk_id=f"{BEYOND}-after-{i:05d}", index=i, lower=lo, upper=hi)
        for i, (lo, hi) in enumerate(after)
    ]


_ONE = {True: 1, False: timedelta(microseconds=1)}


def _pieces(source: Any, plan: TablePlan, window: RunWindow, lower: Any, upper: Any) -> list[tuple[Any, Any]]:
    """[lower, upper) cut as the plan cuts a table: integer keys into the occupied buckets of
    the chunk width only, times by the chunk interval."""
    if plan.chunk_kind is LogicalType.INTEGER:
        step = integer_step(plan, window)
        occupied = source.occupied_buckets(plan.spec.name, plan.spec.chunk_column, lower, step)
        return key_ranges(lower, upper - 1, step, occupied)
    return split_range(lower, upper, plan.spec.chunk_interval or DEFAULT_CHUNK_INTERVAL)


def read_source(spec: MigrationSpec, plan: TablePlan, chunk: Chunk) -> pa.Table:
    """The chunk's source rows, cast to the staged schema exactly as the export casts them."""
    schema = plan.staged_schema()
    batches = build_source(spec).read_chunk(
        plan.spec.name, plan.source_names, plan.spec.chunk_column, chunk.lower, chunk.upper
    )
    conformed = [conform(b, schema, plan.source_names, plan.spec.name) for b in batches]
    # An empty range as one empty chunk per column, as every reader of the table expects.
    return pa.Table.from_batches(conformed, schema) if conformed else schema.empty_table()


def both_sides(
    spec: MigrationSpec, plan: TablePlan, chunk: Chunk, measurements: list[str]
) -> tuple[pa.Table, pa.Table, list[str]]:
    """(the source's rows, the target's, the key to diff by) for one range, each side in the
    target's canonical form. Rows: by the table's primary key. Points: by measurement, tag set
    and time; `measurements` are those the job's chunks of the table wrote (the ledger's), read
    together with those the source rows map to, so points of a measurement the source no longer
    has show as extra."""
    staged = read_source(spec, plan, chunk)
    target = build_target(spec)
    if target.writes_points:
        expected = target.expected_points(staged, plan.points)
        names = set(measurements)
        if plan.points.measurement is not None:
            names.add(plan.points.measurement)
        else:
            names |= {m for m in pc.unique(staged[plan.points.measurement_column]).to_pylist() if m}
        actual = target.read_points(sorted(names), time_ns(chunk.lower), time_ns(chunk.upper))
        return target.align_points(expected, actual)
    actual = target.read_range(plan.target, plan.staged_schema(), chunk.lower, chunk.upper)
    return target.canonical(plan.target, staged), actual, list(plan.target.primary_key)


@task(
    name="verify-chunk",
    task_run_name="verify {chunk.table}/{chunk.chunk_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def verify_chunk(
    spec: MigrationSpec, plan: TablePlan, chunk: Chunk, beyond: bool, measurements: list[str], samples: int
) -> ChunkDiff:
    """Diff one range of the target with the source; retried on transient errors by the
    migration's `retries` policy. Writes nothing."""
    started = time.perf_counter()
    label = f"{plan.spec.name}/{chunk.chunk_id}"
    expected, actual, key = run_step(
        lambda: both_sides(spec, plan, chunk, measurements), spec.retries, f"verify {label}"
    )
    diff = diff_tables(expected, actual, key, samples)
    result = ChunkDiff(
        table=plan.spec.name,
        chunk_id=chunk.chunk_id,
        lower=None if chunk.lower is None else str(chunk.lower),
        upper=None if chunk.upper is None else str(chunk.upper),
        beyond=beyond,
        key=diff.key,
        source_rows=expected.num_rows,
        target_rows=actual.num_rows,
        missing=diff.missing,
        extra=diff.extra,
        changed=diff.changed,
        changed_columns=diff.changed_columns,
        sample_missing=[plain_row(r) for r in diff.sample_missing],
        sample_extra=[plain_row(r) for r in diff.sample_extra],
        sample_changed=[
            ChangedValue(
                key=plain_row(c.key), column=c.column, source=plain(c.expected), target=plain(c.actual)
            )
            for c in diff.sample_changed
        ],
        seconds=time.perf_counter() - started,
    )
    what = (
        "same" if result.same else f"{result.missing} missing, {result.extra} extra, {result.changed} changed"
    )
    get_run_logger().info(
        "verify %s [%s, %s): %d source rows, %d target rows: %s",
        label,
        result.lower,
        result.upper,
        result.source_rows,
        result.target_rows,
        what,
    )
    return result


def verify_ranges(
    spec: MigrationSpec, ranges: list[VerifyRange], samples: int
) -> Iterator[tuple[int, PrefectFuture[ChunkDiff]]]:
    """Submit `verify_chunk` for each range, at most `spec.concurrency` at once (each holds a
    chunk's rows in memory), and yield (the range's index in `ranges`, its future) as each
    finishes."""
    pending, futures = list(enumerate(ranges)), {}
    while pending or futures:
        while pending and len(futures) < spec.concurrency:
            i, r = pending.pop(0)
            futures[verify_chunk.submit(spec, r.plan, r.chunk, r.beyond, r.measurements, samples)] = i
        done = next(as_completed(list(futures)))
        yield futures.pop(done), done


def plain(value: Any) -> Any:
    """A sample value as JSON keeps it: numbers, text, booleans and None as they are; times,
    decimals and bytes as text; long text cut."""
    if isinstance(value, bytes):
        value = "\\x" + value.hex()
    elif isinstance(value, Decimal) or hasattr(value, "isoformat"):
        value = value.isoformat() if hasattr(value, "isoformat") else str(value)
    elif isinstance(value, float) and not math.isfinite(value):
        value = str(value)  # JSON has no NaN or infinity
    elif not isinstance(value, (str, int, float, bool, type(None))):
        value = str(value)
    if isinstance(value, str) and len(value) > SAMPLE_TEXT:
        return value[:SAMPLE_TEXT] + "…"
    return value


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in row.items()}
