"""The `migrate` flow: one named migration, chunk by chunk, exact and resumable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect import Task, get_run_logger
from prefect.context import get_run_context
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.errors import MigrationFailed, TargetGuardError
from blocks.seam import JobStart
from flows.heartbeats import migration_flow
from flows.rollback import rollback
from tasks.catch_up import (
    RunKind,
    catch_up_parameters,
    catch_up_spec,
    choose_run,
    describe_catch_up,
    for_run,
    high_water_marks,
    incremental,
    one_catch_up_at_a_time,
    plan_catch_up,
)
from tasks.config import MigrationSpec
from tasks.connections import check_connections, validate_config
from tasks.dry_run import MigrationPlan, dry_run_plan
from tasks.dry_run_render import publish_plan
from tasks.jobs import (
    finish_job,
    forget_refused_job,
    hold_job_run,
    load_recorded_plan,
    prepare_targets,
    record_plan,
    start_job,
)
from tasks.pipeline import ChunkReport, ledger_states, migrate_chunk, migrate_chunk_afresh
from tasks.plan import TablePlan, inspect_source, plan_chunks
from tasks.progress import ProgressTracker, label_flow_run, unlabel_flow_run
from tasks.report import (
    MigrationReport,
    build_report,
    publish_recorded_report,
    publish_report,
    record_report,
    recorded_report,
)
from tasks.storage_keys import check_job_id


def run_name() -> str:
    """A flow run's name before its job is known: the migration, and the job id when given.
    `label_flow_run` renames it "<migration> job <job_id>" once the job is picked."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    name = params.get("source_name") or "analytics"
    return f"{name} job {params['job_id']}" if params.get("job_id") else f"{name} (picking job)"


@migration_flow(
    name="migrate",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=64),
    flow_run_name=run_name,
)
def migrate(
    source_name: str = "analytics",
    job_id: str | None = None,
    job_name: str | None = None,
    start_time: str | None = None,
    end_time: str | None = None,
    batch_size: int | None = None,
    validation_enabled: bool = True,
    rollback_enabled: bool = False,
    no_resume: bool = False,
    resume_max_age_hours: float = 12,
    migrations_file: str | None = None,
    window: str | None = None,
    resume_attempt: int = 0,
    resume_attempt_count: int = 3,
    dask_address: str | None = None,
    catch_up: bool = False,
    dry_run: bool = False,
) -> MigrationReport | MigrationPlan:
    """Move the tables of migration `source_name` into its target, chunk by chunk.

    Bad config, bad times and unreachable servers fail before anything is written. A rerun
    with the same job_id (or, without one, within resume_max_age_hours) skips finished chunks.
    A job runs in one flow run at a time: a run that finds its job running elsewhere raises
    TargetGuardError naming that flow run, before it loads anything.
    `window` ("previous_day", "previous_hour") sets start_time and end_time relative to the
    run's scheduled time, for scheduled incremental runs. `resume_attempt` counts automatic resumes after a crash (the auto-resume automation sets
    it); past `resume_attempt_count` the run fails at once instead of trying again.
    `dask_address` (or env MIGRATE_DASK_ADDRESS) is a Dask scheduler ("tcp://host:8786"): chunks
    then run on that cluster's workers instead of this process's threads.
    Tables with `incremental` take catch-up runs once their backfill completed: a run without
    job_id moves only what changed since the last high-water mark (`tasks.catch_up`).
    `catch_up=true` asks for a catch-up only, and is refused while the backfill is unfinished.
    `dry_run` checks the config and connections and reads the source, then returns what a run
    would do (`tasks.dry_run.MigrationPlan`: the job, each table's chunks with estimated rows,
    DDL, guard decisions, type mapping, refusals) as artifacts `migration-plan-<name>` and
    `migration-plan-details-<name>` and in the log. It starts no job and writes nothing.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    if resume_attempt > resume_attempt_count:
        raise MigrationFailed(
            f"migration {source_name!r}: giving up after {resume_attempt_count} automatic resume attempts; "
            "resume it by hand once the cause is fixed"
        )
    check_job_id(job_id)
    scheduled = getattr(get_run_context().flow_run, "expected_start_time", None)
    spec, run_window = validate_config(
        source_name, migrations_file, start_time, end_time, batch_size, window, scheduled
    )
    picked = job_id is None
    explicit = any(v is not None for v in (start_time, end_time, batch_size))
    args = (spec, run_window, job_id, no_resume, resume_max_age_hours, explicit, picked)
    if dry_run:  # what a run would do; no job starts, nothing is written
        check_connections(spec)
        plan = dry_run_plan(
            spec,
            run_window,
            inspect_source(spec),
            job_id=job_id,
            no_resume=no_resume,
            resume_max_age_hours=resume_max_age_hours,
            explicit_window=explicit,
            catch_up=catch_up,
        )
        publish_plan(plan)
        return plan
    may_catch_up = catch_up or (picked and not no_resume and bool(incremental(spec)))
    if not may_catch_up and (recorded := recorded_report(*args)):  # no source, no plan
        report = recorded.model_copy(update={"seconds": time.perf_counter() - started})
        publish_recorded_report(report)
        logger.info(report.summary())
        return report
    check_connections(spec)
    follows_cursors = catch_up or bool(incremental(spec))  # else every run goes the full way
    run = choose_run(spec, job_id, catch_up, no_resume) if follows_cursors else RunKind(kind="full")
    if run.kind == "up_to_date":
        return up_to_date(spec.name, run, time.perf_counter() - started)
    job_id = run.job_id or job_id
    if run.kind == "catch_up":
        spec = catch_up_spec(spec, run.tables)
        logger.info("Catch-up run: %s", describe_catch_up(run))
    tables = for_run(inspect_source(spec), run)

    with one_catch_up_at_a_time(spec, run):  # two at once could each upsert a row, the older read last
        job_id, how, run_window = start_job(
            spec,
            run_window,
            job_id,
            job_name,
            no_resume,
            resume_max_age_hours,
            explicit,
            catch_up_parameters(run.tables) if run.kind == "catch_up" else None,
        )
        resumed = how is not JobStart.NEW
        kept = True
        with hold_job_run(spec, job_id, picked):  # one live run per job; a second one refuses here
            logger.info(JOB_START_LOG[how], job_id)
            label_flow_run(job_id, spec.name)
            reports: list[ChunkReport] = []
            failures: list[BaseException] = []
            loaded_before: set[tuple[str, str]] = set()
            try:
                plans, marks = (load_recorded_plan(spec, job_id, tables) if resumed else None), None
                if not plans:  # marks first: every row that changes after them is past them
                    marks = high_water_marks(spec, run.tables or None) if incremental(spec) else None
                    plans = plan_job(spec, tables, run_window, run)
                if how is not JobStart.COMPLETED:
                    record_plan(spec, job_id, plans, marks)
                    prepare_targets(spec, job_id, plans, resume_max_age_hours)
                states = ledger_states(spec, job_id, plans, new_job=how is JobStart.NEW and picked)
                loaded_before = {key for key, state in states.items() if state == "loaded"}
                error = run_chunks(
                    spec, job_id, plans, validation_enabled, reports, dask_address, states, failures
                )
            except Exception as exc:
                error = str(exc)
                failures.append(exc)

            status = "failed" if error else "completed"
            refused = bool(failures) and all(isinstance(e, TargetGuardError) for e in failures)
            if how is JobStart.NEW and refused and forget_refused_job(spec, job_id):
                kept = False
                unlabel_flow_run(job_id, spec.name)
                logger.warning(
                    "job %s was refused before it wrote anything; it is not kept in the ledger", job_id
                )
            elif not (how is JobStart.COMPLETED and error):  # a failed check leaves a completed job as it was
                finish_job(spec, job_id, status, error)
    report = build_report(
        job_id,
        spec.name,
        status,
        resumed,
        reports,
        time.perf_counter() - started,
        error,
        loaded_before=loaded_before,
        already_complete=how is JobStart.COMPLETED and not error,
    )
    if run.kind == "catch_up":
        report.catch_up = describe_catch_up(run)
    if status == "completed":  # a rerun reports it from the ledger (`recorded_report`)
        record_report(spec, report, keep_recorded=how is JobStart.COMPLETED)
    publish_report(report, loaded_before)
    logger.info(report.summary())
    if error:
        if rollback_enabled and kept:
            error += rollback_after_failure(job_id, spec.name, migrations_file)
        job = f"job {job_id}" if kept else "a new job (refused, not kept in the ledger)"
        raise MigrationFailed(f"migration {spec.name!r} {job} failed: {error}")
    return report


def plan_job(spec: MigrationSpec, tables: list[TablePlan], window, run: RunKind) -> list[TablePlan]:
    """A new job's chunks: a catch-up's over its cursor ranges, any other's from the source's bounds."""
    if run.kind == "catch_up":
        return plan_catch_up(spec, tables, run.tables)
    return plan_chunks(spec, tables, window)


def up_to_date(migration: str, run: RunKind, seconds: float) -> MigrationReport:
    """The report of a catch-up that found nothing changed: no job started, nothing written."""
    report = MigrationReport(
        job_id=run.job_id or "",
        migration=migration,
        status="completed",
        resumed=False,
        rows=0,
        bytes=0,
        seconds=seconds,
        tables=[],
        chunks=[],
        catch_up=run.note,
        up_to_date=True,
    )
    publish_report(report)  # the UI, and `prefect-migrate run --wait`, show why nothing moved
    get_run_logger().info(report.summary())
    return report


JOB_START_LOG = {
    JobStart.NEW: "Starting job %s",
    JobStart.RESUMED: "Resuming job %s",
    JobStart.COMPLETED: "Job %s already completed with the same tables, modes and window; "
    "checking its chunks against the ledger (no_resume=true starts a new job)",
}


def rollback_after_failure(job_id: str, migration: str, migrations_file: str | None) -> str:
    """Run the rollback subflow for a failed job; returns what to add to the error message."""
    logger = get_run_logger()
    logger.warning("rollback_enabled: rolling back job %s", job_id)
    try:
        rollback(job_id=job_id, source_name=migration, migrations_file=migrations_file)
    except Exception as exc:
        logger.error("rollback of job %s failed: %s", job_id, exc)
        return f" (rollback failed too: {exc}; rerun the rollback deployment with job_id={job_id})"
    return " (rolled back: everything the job wrote was removed)"


def run_chunks(
    spec: MigrationSpec,
    job_id: str,
    plans: list[TablePlan],
    validation_enabled: bool,
    reports: list[ChunkReport],
    dask_address: str | None = None,
    ledger: dict[tuple[str, str], str] | None = None,
    failures: list[BaseException] | None = None,
) -> str | None:
    """Run every chunk's pipeline, at most `spec.concurrency` at once; returns the run's error,
    or None when every chunk finished. Each chunk's error is appended to `failures`.

    `ledger` holds each chunk's ledger status before the run: a chunk the ledger shows loaded
    may come from its cached result; any other runs afresh, whatever Prefect cached for it,
    and a chunk another job's `replace` superseded does not run at all.

    A circuit breaker guards the rest of the run: once `spec.max_consecutive_chunk_failures`
    chunks have failed in a row (a finished chunk resets the count), no new chunk starts;
    those in flight finish, so their work is kept. With the default of 1 the first failure
    stops new chunks and the error is that chunk's; with more, the error says the breaker
    opened, how many chunks were not started, and the first chunk error. Chunks run on the
    flow's threads, or on the Dask cluster at `dask_address` (default: env
    MIGRATE_DASK_ADDRESS); a scheduler that cannot be reached raises OSError.
    """
    ledger = ledger or {}
    failures = failures if failures is not None else []
    state = {
        (p.spec.name, c.chunk_id): ledger.get((p.spec.name, c.chunk_id)) for p in plans for c in p.chunks
    }
    superseded = [key for key, s in state.items() if s == "superseded"]
    if superseded:
        get_run_logger().warning(
            "job %s: %d chunk(s) were superseded by another job's replace and are not loaded again",
            job_id,
            len(superseded),
        )
    pending = [
        (p.model_copy(update={"chunks": []}), c)
        for p in plans
        for c in p.chunks
        if state[(p.spec.name, c.chunk_id)] != "superseded"
    ]
    progress = ProgressTracker(job_id, spec.name, len(pending))
    shared = {"spec": spec, "job_id": job_id, "validation_enabled": validation_enabled}
    limit = spec.max_consecutive_chunk_failures
    futures = []
    first_error: str | None = None
    failed = in_a_row = 0
    breaker: str | None = None
    try:
        with chunk_runner(dask_address or os.environ.get("MIGRATE_DASK_ADDRESS") or None) as submit:
            while pending or futures:
                while pending and len(futures) < spec.concurrency:
                    plan, chunk = pending.pop(0)
                    loaded = state[(plan.spec.name, chunk.chunk_id)] == "loaded"
                    task = migrate_chunk if loaded else migrate_chunk_afresh()
                    futures.append(
                        submit(task, {**shared, "plan": plan, "chunk": chunk, "ledger_says_loaded": loaded})
                    )
                done = next(as_completed(futures))
                futures.remove(done)
                try:
                    report = done.result()
                    reports.append(report)
                    progress.chunk_done(f"{report.table}/{report.chunk_id}", report.rows)
                except Exception as exc:
                    failures.append(exc)
                    first_error = first_error or str(exc)
                    failed += 1
                    in_a_row += 1
                    if in_a_row >= limit and pending:
                        breaker = (
                            f"circuit breaker open: {in_a_row} consecutive chunk"
                            f"{'s' if in_a_row > 1 else ''} failed (max_consecutive_chunk_failures: {limit}); "
                            f"{len(pending)} chunk{'s' if len(pending) > 1 else ''} not started"
                        )
                        in_flight = f"; the {len(futures)} in flight finish" if futures else ""
                        get_run_logger().error("%s%s", breaker, in_flight)
                        pending.clear()
                    continue
                in_a_row = 0
    finally:
        progress.close()
    if first_error is None or limit == 1:
        return first_error
    if breaker:
        return f"{breaker}; first error: {first_error}"
    return f"{failed} chunk{'s' if failed > 1 else ''} failed; first error: {first_error}"


@contextmanager
def chunk_runner(dask_address: str | None) -> Iterator[Callable[[Task, dict], PrefectFuture[ChunkReport]]]:
    """A function submitting a chunk task with the given parameters: to the flow's own task
    runner, or, given a scheduler address, to that Dask cluster."""
    if not dask_address:
        yield lambda task, parameters: task.submit(**parameters)
        return
    # Imported here: distributed is heavy, and only scale-out runs need it.
    from prefect_dask import DaskTaskRunner

    get_run_logger().info("Chunks run on the Dask cluster at %s", dask_address)
    # Workers run the task in their own processes: they need the project importable and the
    # flow's PREFECT_API_URL, result storage, and secrets env vars.
    with DaskTaskRunner(address=dask_address) as runner:
        yield lambda task, parameters: runner.submit(task, parameters=parameters, wait_for=None)


if __name__ == "__main__":
    import sys

    print(migrate(source_name=sys.argv[1] if len(sys.argv) > 1 else "analytics").summary())
