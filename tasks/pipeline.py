"""One chunk's whole path, export → validate → load → reconcile, as one cached Prefect task.

The chunk is the unit of resume: its task result is persisted, so a rerun of the job skips a
finished chunk at once. Inside, the steps are plain calls, each retried in-process on
transient errors; a chunk that failed part way runs its steps again on resume, which is safe
because staging writes replace the file whole and the load checks the ledger first. One task
run per chunk keeps Prefect's orchestration cost per chunk low.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from pydantic import BaseModel

from blocks.errors import ValidationFailed
from tasks.config import MigrationSpec
from tasks.export import export_chunk_to_staging
from tasks.load import load_step, reconcile_step
from tasks.load_points import PointsLoaded
from tasks.plan import Chunk, TablePlan
from tasks.policy import chunk_cache_key, run_step
from tasks.progress import report_stage, report_validation_failed
from tasks.validate import ChunkManifest, validate_staged_chunk


class ChunkReport(BaseModel):
    table: str
    target: str
    chunk_id: str
    lower: str | None
    upper: str | None
    rows: int
    bytes: int
    export_seconds: float
    validate_seconds: float
    load_seconds: float
    already_loaded: bool
    unit: str = "rows"  # "points" for InfluxDB targets
    pid: int = 0  # the process that ran the chunk (Dask spreads chunks over worker processes)
    rows_dropped: int = 0  # InfluxDB: rows the encoder left out, with the reasons in `problems`
    problems: list[str] = []


@contextmanager
def validation_events(job_id: str, table: str, chunk_id: str) -> Iterator[None]:
    """Emit `migration.validation.failed` when a check inside fails, then let the error go on."""
    try:
        yield
    except ValidationFailed as exc:
        report_validation_failed(job_id, table, chunk_id, str(exc))
        raise


@task(
    name="migrate-chunk",
    task_run_name="chunk {chunk.table}/{chunk.chunk_id}",
    persist_result=True,
    cache_key_fn=chunk_cache_key("chunk"),
)
def migrate_chunk(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, validation_enabled: bool
) -> ChunkReport:
    """Export → validate → load → reconcile one chunk; the load happens at most once per job."""
    args = (spec, job_id, plan, chunk)
    table, cid = plan.spec.name, chunk.chunk_id
    label = f"{table}/{cid}"

    report_stage(job_id, table, cid, "export", "started")
    staged = run_step(lambda: export_chunk_to_staging(*args), spec.retries, f"export {label}")
    report_stage(job_id, table, cid, "export", "finished", rows=staged.rows, bytes=staged.bytes)

    if validation_enabled:
        report_stage(job_id, table, cid, "validation", "started")
        with validation_events(job_id, table, cid):
            manifest = run_step(
                lambda: validate_staged_chunk(*args, staged), spec.retries, f"validate {label}"
            )
        report_stage(job_id, table, cid, "validation", "finished", rows=manifest.rows)
    else:
        manifest = ChunkManifest(
            key=staged.key,
            uri=staged.uri,
            rows=staged.rows,
            bytes=staged.bytes,
            source_rows=staged.rows,
            export_seconds=staged.seconds,
            validate_seconds=0.0,
        )

    report_stage(job_id, table, cid, "migration", "started")
    started = time.perf_counter()
    loaded = run_step(lambda: load_step(*args, manifest), spec.retries, f"load {label}")
    with validation_events(job_id, table, cid):
        run_step(lambda: reconcile_step(*args, manifest, loaded), spec.retries, f"reconcile {label}")
    points = isinstance(loaded, PointsLoaded)
    rows = loaded.points_written if points else loaded.rows_loaded
    report_stage(job_id, table, cid, "migration", "finished", rows=rows)
    if points and loaded.problems:
        get_run_logger().warning("chunk %s/%s: %s", table, cid, "; ".join(loaded.problems))
    return ChunkReport(
        table=table,
        target=plan.target.qualified,
        chunk_id=cid,
        lower=None if chunk.lower is None else str(chunk.lower),
        upper=None if chunk.upper is None else str(chunk.upper),
        rows=rows,
        bytes=manifest.bytes,
        export_seconds=manifest.export_seconds,
        validate_seconds=manifest.validate_seconds,
        load_seconds=time.perf_counter() - started,
        already_loaded=loaded.already_loaded,
        unit="points" if points else "rows",
        pid=os.getpid(),
        rows_dropped=loaded.rows_dropped if points else 0,
        problems=loaded.problems if points else [],
    )
