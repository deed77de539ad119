"""The job report: returned by the flow, published as a table artifact, and recorded in the
ledger when the job completes, so a rerun of the completed job reports it from there."""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.config import MigrationSpec, RunWindow
from tasks.connections import build_ledger, build_target
from tasks.jobs import fingerprint, hold_job_run, job_window
from tasks.pipeline import ChunkReport
from tasks.policy import run_step
from tasks.progress import artifact_slug, label_flow_run, publish_done


class TableTotals(BaseModel):
    table: str
    target: str
    chunks: int
    rows: int
    bytes: int
    unit: str = "rows"
    rows_dropped: int = 0
    verified: str = "counts"


def verification(chunks: list[ChunkReport]) -> str:
    """How a set of chunks was verified: "content", "counts", e.g. "mixed (3 content, 1 counts)",
    or "no chunks"."""
    kinds = sorted({c.verified for c in chunks})
    if not kinds:
        return "no chunks"
    if len(kinds) == 1:
        return kinds[0]
    return "mixed (" + ", ".join(f"{sum(c.verified == k for c in chunks)} {k}" for k in kinds) + ")"


# The summary lists every chunk up to this many; the artifact always does.
SUMMARY_CHUNK_LINES = 40


class MigrationReport(BaseModel):
    job_id: str
    migration: str
    status: str
    resumed: bool
    rows: int
    bytes: int
    seconds: float
    tables: list[TableTotals]
    chunks: list[ChunkReport]
    error: str | None = None
    rows_loaded_now: int = 0
    """Rows (points) this run loaded; the rest of `rows` were loaded by earlier runs of the job."""
    chunks_loaded_now: int = 0
    already_complete: bool = False
    """The job had completed before this run, which found every chunk loaded and loaded nothing."""
    verified: str = "no chunks"
    """How the job's chunks were verified: "content" (every value read back and compared with
    the staged chunk), "counts" (row counts only), or "mixed (…)" when its runs differed."""
    catch_up: str = ""
    """For a catch-up run: what it caught up on, or why it had nothing to load."""
    up_to_date: bool = False
    """A catch-up run that found no table changed since its high-water mark: no job, nothing loaded."""

    def summary(self) -> str:
        unit = self.tables[0].unit if self.tables else "rows"
        if self.already_complete:
            head = (
                f"Migration {self.migration!r}, job {self.job_id}: already completed, nothing to load; "
                f"{self.rows:,} {unit} in {len(self.chunks)} chunks, all loaded by earlier runs"
            )
        else:
            earlier = self.rows - self.rows_loaded_now
            split = (
                f" ({self.rows_loaded_now:,} loaded by this run, {earlier:,} earlier)" if self.resumed else ""
            )
            head = (
                f"Migration {self.migration!r}, job {self.job_id}: {self.status}"
                f"{' (resumed)' if self.resumed else ''}, {self.rows:,} {unit}{split}, "
                f"{self.bytes:,} staged bytes, {self.seconds:.1f} s"
            )
        if self.up_to_date:
            return f"Migration {self.migration!r} is up to date, nothing to load: {self.catch_up}"
        lines = [head, f"  verified: {self.verified}"]
        if self.catch_up:
            lines.append(f"  catch-up: {self.catch_up}")
        for t in self.tables:
            dropped = f", {t.rows_dropped:,} rows left out (see problems)" if t.rows_dropped else ""
            lines.append(
                f"  {t.table} -> {t.target}: {t.rows:,} {t.unit} in {t.chunks} chunks{dropped}, "
                f"verified: {t.verified}"
            )
        if len(self.chunks) <= SUMMARY_CHUNK_LINES:
            for c in self.chunks:
                lines.append(
                    f"    {c.table} {c.chunk_id} [{c.lower}, {c.upper}): {c.rows:,} {c.unit}, verified: {c.verified}"
                )
                lines.extend(f"      problem: {p}" for p in c.problems)
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


def build_report(
    job_id: str,
    migration: str,
    status: str,
    resumed: bool,
    chunks: list[ChunkReport],
    seconds: float,
    error: str | None = None,
    loaded_before: set[tuple[str, str]] | frozenset = frozenset(),
    already_complete: bool = False,
) -> MigrationReport:
    """The job's report from its chunk reports. A chunk counts as loaded by this run unless the
    ledger showed it loaded before the run (`loaded_before`) or its load found it so."""
    now = [c for c in chunks if not c.already_loaded and (c.table, c.chunk_id) not in loaded_before]
    totals: dict[str, TableTotals] = {}
    for c in chunks:
        t = totals.setdefault(
            c.table, TableTotals(table=c.table, target=c.target, chunks=0, rows=0, bytes=0, unit=c.unit)
        )
        t.chunks += 1
        t.rows_dropped += c.rows_dropped
        t.rows += c.rows
        t.bytes += c.bytes
    for t in totals.values():
        t.verified = verification([c for c in chunks if c.table == t.table])
    return MigrationReport(
        job_id=job_id,
        migration=migration,
        status=status,
        resumed=resumed,
        rows=sum(c.rows for c in chunks),
        bytes=sum(c.bytes for c in chunks),
        seconds=seconds,
        tables=list(totals.values()),
        chunks=sorted(chunks, key=lambda c: (c.table, c.chunk_id)),
        error=error,
        rows_loaded_now=sum(c.rows for c in now),
        chunks_loaded_now=len(now),
        already_complete=already_complete,
        verified=verification(chunks),
    )


def publish_report(
    report: MigrationReport, loaded_before: set[tuple[str, str]] | frozenset = frozenset()
) -> None:
    rows = [
        {
            "table": c.table,
            "chunk": c.chunk_id,
            "lower": c.lower,
            "upper": c.upper,
            c.unit: c.rows,
            "bytes": c.bytes,
            "export_s": round(c.export_seconds, 3),
            "validate_s": round(c.validate_seconds, 3),
            "load_s": round(c.load_seconds, 3),
            "skipped_reload": c.already_loaded,
            "verified": c.verified,
            "loaded_by": "earlier run"
            if c.already_loaded or (c.table, c.chunk_id) in loaded_before
            else "this run",
            **({"left_out": c.rows_dropped, "problems": "; ".join(c.problems)} if c.unit == "points" else {}),
        }
        for c in report.chunks
    ]
    create_table_artifact(
        table=rows or [{"table": "(no chunks)"}],
        key=f"migration-report-{artifact_slug(report.migration)}",
        description=f"```\n{report.summary()}\n```",
    )


@task(name="recorded-report")
def recorded_report(
    spec: MigrationSpec,
    window: RunWindow,
    job_id: str | None,
    no_resume: bool,
    resume_max_age_hours: float,
    explicit_window: bool,
    picked: bool,
) -> MigrationReport | None:
    """The report of the completed job this run takes up, from its ledger, when the target
    still holds what the ledger says the job loaded: no source is read and nothing planned.

    The job is the one `tasks.jobs.start_job` would take up with the same arguments (the same
    fingerprint: tables, modes, target and window). The check, under the job's run lock: the
    ledger's loaded chunks are the report's, and each target table still holds what they
    wrote as far as one cheap query per table tells (`RowTarget.loaded_mismatch`,
    `PointTarget.loaded_mismatch`).
    Returns None, and the run goes the full way, when it takes up no completed job, the job has
    no recorded report (its ledger predates them), the check disagrees or cannot be made; the
    log says which. Raises `TargetGuardError` when another run holds the job.
    """
    logger = get_run_logger()
    try:  # anything wrong with the settings is for the connection checks to name
        ledger = build_ledger(spec)
        run = ledger.completed_job(
            job_id=job_id,
            migration=spec.name,
            fingerprint=fingerprint(spec, job_window(ledger, spec.name, window, job_id, explicit_window)),
            no_resume=no_resume,
            resumable_within=timedelta(hours=resume_max_age_hours),
        )
    except Exception as exc:  # noqa: BLE001 - the full way checks every connection and says what is wrong
        logger.info(
            "no recorded report looked up (%s: %s); checking the job the full way", type(exc).__name__, exc
        )
        return None
    if run is None:
        return None
    job = run["job_id"]
    if run["report"] is None:
        logger.info("job %s completed before its ledger recorded reports; checking it the full way", job)
        return None
    with hold_job_run(spec, job, picked):
        try:
            report = MigrationReport.model_validate(run["report"])
            why = disagreement(spec, run, report)
        except Exception as exc:  # noqa: BLE001 - the full way gives the real error, if any
            why = f"the check could not be made ({type(exc).__name__}: {exc})"
    if why:
        logger.warning("job %s completed, but %s; checking it the full way (source, plan, chunks)", job, why)
        return None
    logger.info(
        "Job %s already completed with the same tables, modes and window, and its target agrees with "
        "its ledger; its report comes from the ledger (no_resume=true starts a new job)",
        job,
    )
    chunks = [c.model_copy(update={"already_loaded": True}) for c in report.chunks]
    return report.model_copy(
        update={
            "status": "completed",
            "resumed": True,
            "already_complete": True,
            "rows_loaded_now": 0,
            "chunks_loaded_now": 0,
            "error": None,
            "chunks": chunks,
        }
    )


def disagreement(spec: MigrationSpec, run: dict, report: MigrationReport) -> str | None:
    """None when the ledger and the target agree with a completed job's recorded report, else
    what differs, as a clause ("its ledger shows ...", "target table ... holds ...")."""
    loaded = build_ledger(spec).loaded_chunks(run["job_id"])
    in_ledger = {(c["table_name"], c["chunk_id"]): c["rows_loaded"] for c in loaded}
    recorded = {(c.table, c.chunk_id): c.rows for c in report.chunks}
    if in_ledger != recorded or run["chunks_total"] != len(in_ledger):
        return (
            f"its ledger shows {len(in_ledger)} of {run['chunks_total']} chunks loaded "
            f"({sum(r or 0 for r in in_ledger.values()):,} rows), its recorded report {len(recorded)} "
            f"({report.rows:,} rows)"
        )
    by_table: dict[str, list[dict]] = {}
    for c in loaded:
        by_table.setdefault(c["target_table"], []).append(c)
    target = build_target(spec)
    for table, chunks in sorted(by_table.items()):
        why = run_step(lambda chunks=chunks: target.loaded_mismatch(chunks), spec.retries, f"check {table}")
        if why:
            return why
    return None


def record_report(spec: MigrationSpec, report: MigrationReport, keep_recorded: bool = False) -> None:
    """Record a completed job's report in its ledger, for its reruns (`recorded_report`); with
    `keep_recorded`, only when it has none. A failure is only logged: the job stays completed,
    and its reruns check it the full way."""
    try:
        run_step(
            lambda: build_ledger(spec).record_report(
                report.job_id, report.model_dump(mode="json"), keep_recorded
            ),
            spec.retries,
            f"record the report of job {report.job_id}",
        )
    except Exception as exc:  # noqa: BLE001 - the report is a shortcut for reruns, never the truth
        get_run_logger().warning("job %s: its report was not recorded in the ledger: %s", report.job_id, exc)


def publish_recorded_report(report: MigrationReport) -> None:
    """Label the flow run with its job and publish a report taken from the ledger as a run
    publishes its own: the progress artifact at its end (every chunk done) and the report
    artifact, every chunk loaded by an earlier run. The three API calls do not depend on each
    other, so they go side by side (each in a copy of this run's context, which links the
    artifacts to it); the first error, if any, is raised."""
    loaded = {(c.table, c.chunk_id) for c in report.chunks}
    calls = [
        (label_flow_run, (report.job_id, report.migration)),
        (publish_done, (report.job_id, report.migration, len(report.chunks), report.rows)),
        (publish_report, (report, loaded)),
    ]
    with ThreadPoolExecutor(len(calls), thread_name_prefix="publish-recorded") as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, *args) for fn, args in calls]
    for future in futures:
        future.result()
