"""Load a validated chunk into the target, then reconcile the target's counts with it."""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import BaseModel

from blocks.errors import ValidationFailed
from blocks.seam import LoadMode
from tasks.config import MigrationSpec
from tasks.connections import build_target
from tasks.load_points import PointsLoaded, reconcile_points, write_points
from tasks.plan import Chunk, TablePlan
from tasks.validate import ChunkManifest, staged_rows


class LoadedChunk(BaseModel):
    """What one chunk's load into a row target committed (`PointsLoaded` for point targets;
    both give `written`, `unit`, `rows_dropped` and `problems`)."""

    rows_loaded: int
    rows_before: int
    rows_after: int
    already_loaded: bool
    seconds: float
    verified: str = "counts"  # how the load checked the chunk: "content" or "counts"
    unit: ClassVar[str] = "rows"
    rows_dropped: ClassVar[int] = 0  # a row target loads every staged row, or none
    problems: ClassVar[list[str]] = []

    @property
    def written(self) -> int:
        return self.rows_loaded


def load_manifest(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, manifest: ChunkManifest
) -> LoadedChunk:
    """COPY the chunk's rows in one transaction with the chunk's ledger row (exactly once): the
    rows the export holds in memory, or the staged file's."""
    started = time.perf_counter()
    target = build_target(spec)
    with staged_rows(spec, manifest) as data:
        result = target.load_chunk(
            job_id=job_id,
            source_table=plan.spec.name,
            chunk_id=chunk.chunk_id,
            table=plan.target,
            mode=plan.spec.load_mode,
            batches=data.batches(),
            staged_rows=manifest.rows,
            staged_uri=manifest.uri,
            lower=chunk.lower,
            upper=chunk.upper,
            verify_against=data if spec.verify == "content" else None,
        )
    return LoadedChunk(**result.model_dump(), seconds=time.perf_counter() - started)


def reconcile_loaded(
    spec: MigrationSpec, plan: TablePlan, chunk: Chunk, manifest: ChunkManifest, loaded: LoadedChunk
) -> int:
    """The target's count for the chunk's range matches what the load committed.

    append/replace: the range gained exactly the staged rows. upsert: the range holds at least
    as many rows as the chunk has keys. In every mode the count now equals the count at commit.
    Returns the target's count for the range.
    """
    target = build_target(spec)
    with target.connect() as conn:
        now = target.count_range(conn, plan.target, chunk.lower, chunk.upper)
    where = f"{plan.spec.name} chunk {chunk.chunk_id} [{chunk.lower}, {chunk.upper})"
    if now != loaded.rows_after:
        raise ValidationFailed(f"{where}: target holds {now} rows in range, {loaded.rows_after} at commit")
    gained = loaded.rows_after - loaded.rows_before
    if plan.spec.load_mode is LoadMode.UPSERT:
        if loaded.rows_after < manifest.rows:
            raise ValidationFailed(
                f"{where}: target holds {loaded.rows_after} rows in range, staged {manifest.rows}"
            )
    elif gained != manifest.rows:
        raise ValidationFailed(
            f"{where}: target gained {gained} rows in range, staged file holds {manifest.rows}"
        )
    return now


def load_step(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, manifest: ChunkManifest
) -> LoadedChunk | PointsLoaded:
    """Load the validated chunk into its target: PostgreSQL by COPY, InfluxDB as points."""
    if plan.points is not None:
        return write_points(spec, job_id, plan, chunk, manifest)
    return load_manifest(spec, job_id, plan, chunk, manifest)


def reconcile_step(
    spec: MigrationSpec,
    job_id: str,
    plan: TablePlan,
    chunk: Chunk,
    manifest: ChunkManifest,
    loaded: LoadedChunk | PointsLoaded,
) -> int:
    """The target's count for the chunk's range agrees with the load; returns that count."""
    if plan.points is not None:
        return reconcile_points(spec, job_id, plan, chunk, manifest, loaded)
    return reconcile_loaded(spec, plan, chunk, manifest, loaded)
