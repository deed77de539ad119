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
from tasks.connections import build_ledger
from tasks.export import export_chunk_to_staging
from tasks.load import load_step, reconcile_step
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
    verified: str = "counts"  # "content": values read back and compared; "counts": row counts only


def report_from_ledger(plan: TablePlan, chunk: Chunk, row: dict) -> ChunkReport:
    """A chunk an earlier run loaded, as its ledger row tells it (timings and bytes unknown: 0)."""
    details = row.get("details") or {}
    points = plan.points is not None
    return ChunkReport(
        table=plan.spec.name,
        target=plan.target.qualified,
        chunk_id=chunk.chunk_id,
        lower=None if chunk.lower is None else str(chunk.lower),
        upper=None if chunk.upper is None else str(chunk.upper),
        rows=row["rows_loaded"] or 0,
        bytes=0,
        export_seconds=0.0,
        validate_seconds=0.0,
        load_seconds=0.0,
        already_loaded=True,
        unit="points" if points else "rows",
        pid=os.getpid(),
        rows_dropped=details.get("rows_dropped", 0) if points else 0,
        problems=details.get("problems", []) if points else [],
        verified=details.get("verified", "counts"),
    )


_MIGRATE_CHUNK_AFRESH: list = []


def migrate_chunk_afresh():
    """`migrate_chunk` that never takes a cached result (built once: with_options is slow)."""
    if not _MIGRATE_CHUNK_AFRESH:
        _MIGRATE_CHUNK_AFRESH.append(migrate_chunk.with_options(refresh_cache=True))
    return _MIGRATE_CHUNK_AFRESH[0]


def ledger_states(
    spec: MigrationSpec, job_id: str, plans: list[TablePlan], new_job: bool
) -> dict[tuple[str, str], str]:
    """(table, chunk_id) -> the ledger's status for each planned chunk, in one query per job.

    The ledger, where the data lives, is the truth: a chunk it does not show loaded runs again
    even if Prefect holds a cached result for it (a target dropped and created again, data
    another job removed). The run logs which chunks that is, and why."""
    states = run_step(
        lambda: build_ledger(spec).chunk_states(job_id), spec.retries, f"ledger of job {job_id}"
    )
    if new_job:
        return states  # a new job id has no cached results
    unconfirmed = [c for p in plans for c in p.chunks if states.get((p.spec.name, c.chunk_id)) != "loaded"]
    if not unconfirmed:
        return states
    from prefect.results import get_result_store

    store = get_result_store().update_for_task(migrate_chunk)
    key = chunk_cache_key("chunk")
    cached = [
        f"{c.table}/{c.chunk_id}"
        for c in unconfirmed
        if states.get((c.table, c.chunk_id)) != "superseded"
        and store.exists(key(None, {"spec": spec, "job_id": job_id, "chunk": c}))
    ]
    if cached:
        get_run_logger().warning(
            "job %s: %d chunk(s) have a cached result saying they finished, but the ledger (%s) does not "
            "show them loaded (was the target database recreated, or their data removed by another job?); "
            "they run again: %s%s",
            job_id,
            len(cached),
            build_ledger(spec).describe_target(),
            ", ".join(cached[:10]),
            " …" if len(cached) > 10 else "",
        )
    return states


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
    spec: MigrationSpec,
    job_id: str,
    plan: TablePlan,
    chunk: Chunk,
    validation_enabled: bool,
    ledger_says_loaded: bool = False,
) -> ChunkReport:
    """Export → validate → load → reconcile one chunk; the load happens at most once per job.

    `ledger_says_loaded`: the flow found the chunk loaded in the ledger before the run, and
    its cached result is gone; the chunk is reported from its ledger row, without reading the
    source again."""
    table, cid = plan.spec.name, chunk.chunk_id
    label = f"{table}/{cid}"
    if ledger_says_loaded:
        row = run_step(
            lambda: build_ledger(spec).chunk_status(job_id, table, cid), spec.retries, f"ledger {label}"
        )
        if row is not None and row["status"] == "loaded":
            return report_from_ledger(plan, chunk, row)

    manifest = export_and_validate(spec, job_id, plan, chunk, validation_enabled)
    return load_and_reconcile(spec, job_id, plan, chunk, manifest)


def export_and_validate(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, validation_enabled: bool
) -> ChunkManifest:
    """Export the chunk into staging and check it against the source (see `migrate_chunk`)."""
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
        ).holding(staged.data())
    return manifest


def load_and_reconcile(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, manifest: ChunkManifest
) -> ChunkReport:
    """Load the validated chunk and reconcile the target with it (see `migrate_chunk`)."""
    args = (spec, job_id, plan, chunk)
    table, cid = plan.spec.name, chunk.chunk_id
    label = f"{table}/{cid}"
    report_stage(job_id, table, cid, "migration", "started")
    started = time.perf_counter()
    with validation_events(job_id, table, cid):
        loaded = run_step(lambda: load_step(*args, manifest), spec.retries, f"load {label}")
        run_step(lambda: reconcile_step(*args, manifest, loaded), spec.retries, f"reconcile {label}")
    rows = loaded.written
    report_stage(job_id, table, cid, "migration", "finished", rows=rows)
    if loaded.problems:
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
        unit=loaded.unit,
        pid=os.getpid(),
        rows_dropped=loaded.rows_dropped,
        problems=loaded.problems,
        verified=loaded.verified,
    )
