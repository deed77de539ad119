"""Job bookkeeping in the target's ledger: start or resume a job, fix its plan, prepare tables."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from prefect.context import get_run_context

from blocks.columns import Column
from blocks.errors import ConfigError, TargetGuardError
from blocks.seam import JobStart, Ledger, LoadMode
from tasks.config import MigrationSpec, RunWindow
from tasks.connections import build_ledger, build_staging, build_target
from tasks.guards import claims_in_the_way, refuse_overlap, refuse_point_overlap
from tasks.load_points import time_ns
from tasks.plan import Chunk, TablePlan, bound_text, check_schema_drift, parse_bound
from tasks.policy import run_step, step_task


def fingerprint(spec: MigrationSpec, window: RunWindow, catch_up: list[dict] | None = None) -> str:
    """What decides which rows a job moves and how; a job only resumes with the same fingerprint.
    A catch-up job's includes its cursor ranges (`catch_up`)."""
    # Guard overrides change what a run may do, not which rows it moves.
    overrides = {"allow_truncate_foreign_rows", "allow_rewrite_loaded_points"}
    # A table without `incremental` leaves the key out, so jobs planned before it existed resume.
    tables = [
        t.model_dump(mode="json", exclude=overrides | ({"incremental"} if t.incremental is None else set()))
        for t in spec.tables
    ]
    target = spec.target.scope(spec.lowercase_identifiers)
    what = {"tables": tables, "target": target, "window": window.model_dump(mode="json")}
    if catch_up is not None:
        what["catch_up"] = catch_up
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@step_task("start-job")
def start_job(
    spec: MigrationSpec,
    window: RunWindow,
    job_id: str | None,
    job_name: str | None,
    no_resume: bool,
    resume_max_age_hours: float,
    explicit_window: bool = False,
    catch_up: list[dict] | None = None,
) -> tuple[str, JobStart, RunWindow]:
    """The job to run: the given one, the newest resumable one, the newest completed one with
    the same tables, modes and window (nothing left to do), or a new one. Returns (job_id,
    how, the job's window).

    A job given by id keeps the window it started with (start_time, end_time, batch_size), so
    it resumes by its id alone. When the run also sets some of them (`explicit_window`) and
    they differ, it raises `TargetGuardError` naming both. `catch_up`: a catch-up job's cursor
    ranges (`tasks.catch_up`), kept in its parameters."""
    ledger = build_ledger(spec)
    parameters = {"window": window.model_dump(mode="json"), "job_name": job_name}
    window = job_window(ledger, spec.name, window, job_id, explicit_window)
    context = get_run_context()
    flow_run = getattr(context.task_run, "flow_run_id", None)
    job_id, how = ledger.start_job(
        job_id=job_id,
        migration=spec.name,
        job_name=job_name,
        fingerprint=fingerprint(spec, window, catch_up),
        parameters={**parameters, "catch_up": catch_up} if catch_up is not None else parameters,
        flow_run_id=str(flow_run) if flow_run else None,
        no_resume=no_resume,
        resumable_within=timedelta(hours=resume_max_age_hours),
    )
    return job_id, how, window


def job_window(
    ledger: Ledger, migration: str, window: RunWindow, job_id: str | None, explicit: bool
) -> RunWindow:
    """The window a run of `job_id` runs with: the one the job started with, if the ledger
    holds it, else `window`. Raises `TargetGuardError` when the run also set some of them
    (`explicit`) and they differ."""
    run = ledger.job_run(job_id) if job_id else None
    if run is None or run["migration"] != migration or "window" not in (run["parameters"] or {}):
        return window
    recorded = RunWindow.model_validate(run["parameters"]["window"])
    if explicit and recorded != window:
        raise TargetGuardError(
            f"job {job_id} was started with {describe_window(recorded)}; this run asks for "
            f"{describe_window(window)}. Run it again without start_time, end_time and batch_size "
            "(it keeps its own), or start a new job for the new window"
        )
    return recorded


def describe_window(window: RunWindow) -> str:
    parts = [f"{name}={value}" for name, value in window.model_dump().items() if value is not None]
    return ", ".join(parts) if parts else "no start_time, end_time or batch_size"


@contextmanager
def hold_job_run(spec: MigrationSpec, job_id: str, picked: bool) -> Iterator[None]:
    """Hold the job's run lock (`Ledger.run_lock`) in its ledger database for the body.

    Raises `TargetGuardError` at once when another run holds it: two runs of one job would
    export the same chunks over each other and record the job's end under each other.
    `picked` says no job_id was given and the job was picked to resume (the message says so).
    The lock goes back when the body ends, however it ends; a killed process's goes with its
    connection.
    """
    from prefect.runtime import flow_run

    lock = build_ledger(spec).run_lock(job_id, flow_run.id)
    holder = run_step(lock.acquire, spec.retries, f"lock job {job_id}")
    if holder is not None:
        picked_note = " (no job_id was given, so this run picked that job to resume)" if picked else ""
        raise TargetGuardError(
            f"job {job_id} is already running in {holder}{picked_note}; this run stops before "
            "loading anything. Wait for that run to finish, or cancel it, then start this one again. "
            + lock.how_to_free()
        )
    try:
        yield
    finally:
        lock.release()


@step_task("record-plan")
def record_plan(
    spec: MigrationSpec, job_id: str, plans: list[TablePlan], marks: list[dict] | None = None
) -> None:
    """Record the job's chunks, the columns they were planned with and, for `incremental`
    tables, the high-water marks read before planning (`tasks.catch_up.high_water_marks`)."""
    rows = [
        (
            c.table,
            c.chunk_id,
            p.target.qualified,
            p.spec.chunk_column,
            bound_text(c.lower),
            bound_text(c.upper),
        )
        for p in plans
        for c in p.chunks
    ]
    # The source columns each table was planned with; a resume compares the source with them.
    columns = {p.spec.name: [c.model_dump(mode="json") for c in p.source_columns] for p in plans}
    build_ledger(spec).record_plan(job_id, rows, columns, marks)


@step_task("load-plan")
def load_recorded_plan(spec: MigrationSpec, job_id: str, plans: list[TablePlan]) -> list[TablePlan] | None:
    """The chunks a resumed job planned when it first ran, or None if it recorded none.

    Raises `SourceSchemaError` ("schema drift in ...") when a table's source columns differ
    from those the job recorded when it first planned them."""
    ledger = build_ledger(spec)
    rows = ledger.planned_chunks(job_id)
    if not rows:
        return None
    recorded = ledger.planned_columns(job_id)
    resumed = []
    for plan in plans:
        if plan.spec.name in recorded:  # jobs planned before columns were recorded have none
            planned = [Column.model_validate(c) for c in recorded[plan.spec.name]]
            check_schema_drift(plan, plan.source_columns, planned)
        mine = sorted((r for r in rows if r["table_name"] == plan.spec.name), key=lambda r: r["chunk_id"])
        chunks = [
            Chunk(
                table=plan.spec.name,
                chunk_id=r["chunk_id"],
                index=int(r["chunk_id"].split("-")[0]),
                lower=parse_bound(plan.chunk_kind, r["lower_bound"]),
                upper=parse_bound(plan.chunk_kind, r["upper_bound"]),
            )
            for r in mine
        ]
        resumed.append(plan.model_copy(update={"chunks": chunks}))
    return resumed


@step_task("prepare-targets")
def prepare_targets(
    spec: MigrationSpec, job_id: str, plans: list[TablePlan], resume_max_age_hours: float
) -> None:
    """Check the guards for every table first, then prepare each: PostgreSQL creates missing
    tables and truncates `replace` tables once per job, behind the truncation guard.

    Refuses (`TargetGuardError`) before preparing anything when the job would load over data
    another job (not rolled back) loaded: a PostgreSQL `append` range (that would duplicate its
    rows), or InfluxDB points of the same measurement and time range (unless the table sets
    `allow_rewrite_loaded_points`; a measurement taken from a column is checked as each chunk
    loads, once its measurements are known).
    """
    target = build_target(spec)
    if target.writes_points:
        ledger = build_ledger(spec)
        for plan in plans:
            if plan.spec.allow_rewrite_loaded_points or plan.points.measurement is None:
                continue
            ranges = [(time_ns(c.lower), time_ns(c.upper)) for c in plan.chunks]
            claims = ledger.point_claims(job_id, target.describe_target(), [plan.points.measurement], ranges)
            refuse_point_overlap(plan, job_id, claims_in_the_way(plan, spec.name, claims))
        return  # nothing to create; the connection check proved the bucket or database exists
    for plan in plans:
        if plan.spec.load_mode is LoadMode.APPEND:
            refuse_overlap(plan, job_id, target.loaded_ranges(plan.target.qualified, exclude_job=job_id))
    for plan in plans:
        target.prepare_table(
            job_id,
            plan.spec.name,
            spec.name,
            plan.target,
            plan.spec.load_mode,
            plan.spec.allow_truncate_foreign_rows,
            timedelta(hours=resume_max_age_hours),
        )


def migration_job(spec: MigrationSpec, job_id: str) -> tuple[Any, dict]:
    """The migration's ledger and the job's row in it. Raises `ConfigError` for a job the
    ledger does not hold, or one of another migration."""
    ledger = build_ledger(spec)
    run = ledger.job_run(job_id)
    if run is None:
        raise ConfigError(
            f"job {job_id} is not in the ledger of migration {spec.name!r} ({ledger.describe_target()}); "
            "check the job id (python -m flows.status lists recent jobs) and the migration"
        )
    if run["migration"] != spec.name:
        raise ConfigError(f"job {job_id} belongs to migration {run['migration']!r}, not {spec.name!r}")
    return ledger, run


def forget_refused_job(spec: MigrationSpec, job_id: str) -> bool:
    """Drop a new job that a guard refused before it prepared or loaded anything, so refused
    attempts do not pile up as failed jobs. Returns whether it was dropped."""
    return build_ledger(spec).discard_job(job_id)


@step_task("finish-job")
def finish_job(spec: MigrationSpec, job_id: str, status: str, error: str | None = None) -> dict:
    """Record the job's final status; a completed job's staged files go unless keep_staged_files.

    Refuses (`TargetGuardError`) when this run lost the job to another run while the ledger's
    server was down: the job's status is that run's to record."""
    ledger = build_ledger(spec)
    ledger.ensure_run_lock(job_id)
    ledger.set_job_status(job_id, status, error)
    if status == "completed" and not spec.keep_staged_files:
        build_staging(spec).delete_prefix(job_id)
    return ledger.job_run(job_id) or {}
