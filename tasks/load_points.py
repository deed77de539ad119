"""Load a validated chunk into InfluxDB as points, then reconcile InfluxDB's count with it.

InfluxDB has no transactions, so exactly-once rests on idempotence instead: a point with the
same measurement, tag set and time overwrites, so writing a chunk again (after a crash in the
middle of a write, say) leaves the same points. The ledger (in PostgreSQL) marks a chunk
loaded only once InfluxDB's count for the chunk's range matches what was written; a rerun
skips a chunk marked loaded.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from blocks.errors import ValidationFailed
from blocks.postgres.target import refuse_final_chunk
from tasks.config import MigrationSpec
from tasks.connections import build_ledger, build_staging, build_target
from tasks.guards import refuse_point_overlap
from tasks.plan import Bound, Chunk, TablePlan
from tasks.validate import ChunkManifest

READ_BATCH_ROWS = 65_536
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PointsLoaded(BaseModel):
    """What one chunk's write sent, and what the encoder left out (reported, never silent)."""

    rows_in: int
    points_written: int
    rows_dropped: int
    measurements: list[str]
    problems: list[str]
    already_loaded: bool
    seconds: float
    count_field: str | None = None  # a field every written point carries: counts with COUNT(field)
    target: str = ""  # the InfluxDB bucket or database written, as the ledger names it
    shared_with: list[str] = []  # other jobs that loaded points in this chunk's ranges (allowed rewrite)


def time_ns(value: Bound) -> int | None:
    """A chunk bound as integer nanoseconds since the epoch (naive times are UTC), exactly."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"an InfluxDB chunk bound must be a time, not {value!r}")
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1) * 1000


def _label(plan: TablePlan, chunk: Chunk) -> str:
    return f"{plan.spec.name}/{chunk.chunk_id}"


def _measurements(path, plan: TablePlan) -> list[str]:
    points = plan.points
    if points.measurement is not None:
        return [points.measurement]
    column = pq.read_table(path, columns=[points.measurement_column]).column(0)
    names = pc.unique(column).drop_null().to_pylist()
    return sorted(n for n in names if n)


def write_points(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, manifest: ChunkManifest
) -> PointsLoaded:
    """Write the staged file's rows as points, batch by batch; a chunk the ledger shows as
    loaded is not written again. Raises `ValidationFailed` when the rows the encoder saw differ
    from the staged file's."""
    started = time.perf_counter()
    prior = build_ledger(spec).chunk_status(job_id, plan.spec.name, chunk.chunk_id)
    if prior is None:
        raise ValidationFailed(f"chunk {chunk.chunk_id} of {plan.spec.name} is not in job {job_id}'s plan")
    refuse_final_chunk(job_id, prior)
    if prior["status"] == "loaded":
        details = prior.get("details") or {}
        return PointsLoaded(
            rows_in=manifest.rows,
            points_written=prior["rows_loaded"],
            rows_dropped=details.get("rows_dropped", 0),
            measurements=details.get("measurements", []),
            problems=details.get("problems", []),
            already_loaded=True,
            seconds=time.perf_counter() - started,
            count_field=details.get("count_field"),
            target=details.get("target", ""),
            shared_with=details.get("shared_with", []),
        )
    target = build_target(spec)
    where = target.describe_target()
    with build_staging(spec).local_copy(manifest.key) as path:
        measurements = _measurements(path, plan)
        shared = other_jobs_in_range(spec, job_id, plan, chunk, where, measurements)
        batches = pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS)
        load = target.write_chunk(batches, plan.points.point_mapping(), chunk=_label(plan, chunk))
        count_field = plan.points.count_field or _field_on_every_point(path, plan, load)
    if load.rows_in != manifest.rows:
        raise ValidationFailed(
            f"chunk {_label(plan, chunk)}: the encoder read {load.rows_in} rows, the staged file holds {manifest.rows}"
        )
    return PointsLoaded(
        rows_in=load.rows_in,
        points_written=load.points_written,
        rows_dropped=load.rows_in - load.points_written,
        measurements=measurements,
        problems=load.problems,
        already_loaded=False,
        seconds=time.perf_counter() - started,
        count_field=count_field,
        target=where,
        shared_with=shared,
    )


def other_jobs_in_range(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, target: str, measurements: list[str]
) -> list[str]:
    """Other live jobs that loaded points of these measurements in the chunk's time range.

    Raises `TargetGuardError` naming them, unless the table sets `allow_rewrite_loaded_points`;
    then returns them, for the ledger to record that the jobs share the range."""
    ranges = [(time_ns(chunk.lower), time_ns(chunk.upper))]
    claims = build_ledger(spec).point_claims(job_id, target, measurements, ranges)
    if not plan.spec.allow_rewrite_loaded_points:
        refuse_point_overlap(plan, job_id, claims, where=f"chunk {chunk.chunk_id}'s points")
    return sorted({c["job_id"] for c in claims})


def _field_on_every_point(path, plan: TablePlan, load) -> str | None:
    """A field key every written point carries, or None: no row was dropped, the column has
    no NULL in the staged file (Parquet statistics), and the encoder left out none of its
    values. InfluxDB then counts the points with a cheap `COUNT(field)`."""
    if load.points_written != load.rows_in:
        return None
    metadata = pq.ParquetFile(path).metadata
    names = metadata.schema.to_arrow_schema().names
    left_out = {
        key
        for kind in ("non_finite_values", "oversized_strings", "out_of_range_values")
        for key in load.report[kind]
    }
    for field in plan.points.fields:
        if field.key in left_out or field.column not in names:
            continue
        index = names.index(field.column)
        stats = [metadata.row_group(g).column(index).statistics for g in range(metadata.num_row_groups)]
        if all(s is not None and s.has_null_count and s.null_count == 0 for s in stats):
            return field.key
    return None


def count_points(chunk: Chunk, target, measurements: list[str], field: str | None) -> int:
    """InfluxDB's count of points in the chunk's time range, over the chunk's measurements:
    `COUNT(field)` when every point carries `field`, else by listing the points."""
    start, stop = time_ns(chunk.lower), time_ns(chunk.upper)
    return sum(target.count(m, start, stop, field=field) for m in measurements)


def reconcile_points(
    spec: MigrationSpec,
    job_id: str,
    plan: TablePlan,
    chunk: Chunk,
    manifest: ChunkManifest,
    loaded: PointsLoaded,
) -> int:
    """InfluxDB holds exactly the points written for the chunk's range, and the staged rows
    are all accounted for (written, or left out and reported). Then the ledger marks the chunk
    loaded. Returns InfluxDB's count."""
    where = f"chunk {_label(plan, chunk)} [{chunk.lower}, {chunk.upper})"
    if loaded.points_written + loaded.rows_dropped != manifest.rows:
        raise ValidationFailed(
            f"{where}: {loaded.points_written} points written and {loaded.rows_dropped} rows left out, "
            f"but the staged file holds {manifest.rows} rows"
        )
    counted = count_points(chunk, build_target(spec), loaded.measurements, loaded.count_field)
    if counted != loaded.points_written:
        more = counted > loaded.points_written
        why = (
            "the range also holds points this chunk did not write (another job's, or data that was "
            "there before): pick another bucket or measurement, or delete them first"
            if more
            else "rows that share measurement, tags and time collapse into one point in InfluxDB, "
            "or points were lost: check the source for duplicate series and time"
        )
        raise ValidationFailed(
            f"{where}: InfluxDB counts {counted} points in {plan.target.schema_name} "
            f"({', '.join(loaded.measurements) or 'no measurement'}), {loaded.points_written} were written; {why}"
        )
    if not loaded.already_loaded:
        details = {
            "measurements": loaded.measurements,
            "rows_dropped": loaded.rows_dropped,
            "problems": loaded.problems,
            "start_ns": time_ns(chunk.lower),
            "stop_ns": time_ns(chunk.upper),
            "count_field": loaded.count_field,
            "target": loaded.target,
            **({"shared_with": loaded.shared_with} if loaded.shared_with else {}),
        }
        build_ledger(spec).mark_chunk_written(
            job_id, plan.spec.name, chunk.chunk_id, loaded.points_written, manifest.uri, details
        )
    return counted
