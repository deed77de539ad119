"""Load a validated chunk into a point target, then reconcile the target's count with it.

A point target has no transactions, so exactly-once rests on idempotence instead: a point with
the same measurement, tag set and time overwrites, so writing a chunk again (after a crash in
the middle of a write, say) leaves the same points. The ledger marks a chunk loaded only once
the target's count for the chunk's range matches what was written and (with `verify: content`,
the default) the points read back match the staged chunk value for value; a rerun skips a chunk
marked loaded. Everything the target does goes through `blocks.seam.PointTarget`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from pydantic import BaseModel

from blocks.errors import ValidationFailed
from blocks.timeunits import EPOCH_UTC, NS_PER_UNIT
from tasks.config import MigrationSpec
from tasks.connections import build_ledger, build_target
from tasks.guards import claims_in_the_way, refuse_point_overlap
from tasks.plan import Bound, Chunk, TablePlan
from tasks.validate import ChunkManifest, staged_rows


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
    verified: str = "counts"  # "content": read back and compared before the ledger marked it loaded
    unit: ClassVar[str] = "points"

    @property
    def written(self) -> int:
        return self.points_written


def time_ns(value: Bound) -> int | None:
    """A chunk bound as integer nanoseconds since the epoch (naive times are UTC), exactly."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"a point chunk bound must be a time, not {value!r}")
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - EPOCH_UTC) // timedelta(microseconds=1) * NS_PER_UNIT["us"]


def _label(plan: TablePlan, chunk: Chunk) -> str:
    return f"{plan.spec.name}/{chunk.chunk_id}"


def write_points(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, manifest: ChunkManifest
) -> PointsLoaded:
    """Write the staged file's rows as points, batch by batch; a chunk the ledger shows as
    loaded is not written again. Raises `ValidationFailed` when the rows the encoder saw differ
    from the staged file's."""
    started = time.perf_counter()
    prior = build_ledger(spec).chunk_to_load(job_id, plan.spec.name, chunk.chunk_id)
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
            verified=details.get("verified", "counts"),
        )
    target = build_target(spec)
    where = target.describe_target()
    with staged_rows(spec, manifest) as data:
        measurements = target.chunk_measurements(data, plan.points)
        shared = other_jobs_in_range(spec, job_id, plan, chunk, where, measurements)
        load = target.write_chunk_points(data, plan.points, _label(plan, chunk))
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
        count_field=load.count_field,
        target=where,
        shared_with=shared,
        verified=spec.verify,
    )


def other_jobs_in_range(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, target: str, measurements: list[str]
) -> list[str]:
    """Other live jobs that loaded points of these measurements in the chunk's time range.

    Raises `TargetGuardError` naming them, unless the table sets `allow_rewrite_loaded_points`
    (or the job is a catch-up and they are its own migration's); then returns them, for the
    ledger to record that the jobs share the range."""
    ranges = [(time_ns(chunk.lower), time_ns(chunk.upper))]
    claims = build_ledger(spec).point_claims(job_id, target, measurements, ranges)
    if not plan.spec.allow_rewrite_loaded_points:
        in_the_way = claims_in_the_way(plan, spec.name, claims)
        refuse_point_overlap(plan, job_id, in_the_way, where=f"chunk {chunk.chunk_id}'s points")
    return sorted({c["job_id"] for c in claims})


def reconcile_points(
    spec: MigrationSpec,
    job_id: str,
    plan: TablePlan,
    chunk: Chunk,
    manifest: ChunkManifest,
    loaded: PointsLoaded,
) -> int:
    """The target holds exactly the points written for the chunk's range, and the staged rows
    are all accounted for (written, or left out and reported). With `verify: content` the
    target then reads the range back and compares every point with what the staged file maps
    to. Only then does the ledger mark the chunk loaded (recording how it was verified). A
    chunk loaded before is counted, not verified again. Returns the target's count."""
    if loaded.points_written + loaded.rows_dropped != manifest.rows:
        raise ValidationFailed(
            f"chunk {_label(plan, chunk)} [{chunk.lower}, {chunk.upper}): {loaded.points_written} points "
            f"written and {loaded.rows_dropped} rows left out, but the staged file holds {manifest.rows} rows"
        )
    start_ns, stop_ns = time_ns(chunk.lower), time_ns(chunk.upper)
    target = build_target(spec)
    counted = target.reconcile_points(
        _label(plan, chunk), start_ns, stop_ns, loaded.measurements, loaded.points_written, loaded.count_field
    )
    if not loaded.already_loaded:
        if spec.verify == "content":
            with staged_rows(spec, manifest) as data:
                target.verify_chunk_points(
                    data, plan.points, _label(plan, chunk), start_ns, stop_ns, loaded.measurements
                )
        details = {
            "measurements": loaded.measurements,
            "rows_dropped": loaded.rows_dropped,
            "problems": loaded.problems,
            "start_ns": start_ns,
            "stop_ns": stop_ns,
            "count_field": loaded.count_field,
            "target": loaded.target,
            "verified": spec.verify,
            **({"shared_with": loaded.shared_with} if loaded.shared_with else {}),
        }
        build_ledger(spec).mark_chunk_written(
            job_id, plan.spec.name, chunk.chunk_id, loaded.points_written, manifest.uri, details
        )
    return counted
