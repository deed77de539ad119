"""Undo one job: remove exactly what it wrote to the target, and its staged files.

PostgreSQL: the rows each chunk's load transaction wrote (found through the transaction id
the ledger recorded), removed in one transaction with the ledger update; tables the job
created are dropped once empty. InfluxDB: a delete per measurement and chunk time range the
ledger recorded (the reconcile proved those ranges held only the job's points when it
loaded them). Then the job is recorded as rolled back, and it never resumes.

A rollback never takes rows that were there before the job: it refuses, unless forced, a job
that overwrote such rows (upsert) or truncated them away (replace), since it cannot give
them back.
"""

from __future__ import annotations

from prefect import get_run_logger
from pydantic import BaseModel

from blocks.errors import TargetGuardError
from blocks.seam import Ledger
from tasks.config import MigrationSpec
from tasks.connections import build_ledger, build_staging, build_target
from tasks.jobs import migration_job
from tasks.policy import step_task


class RollbackReport(BaseModel):
    job_id: str
    migration: str
    tables: list[dict] = []
    points_deleted_ranges: int = 0
    staged_files_removed: bool = False
    already_rolled_back: bool = False
    other_jobs_marked: list[str] = []

    def summary(self) -> str:
        if self.already_rolled_back:
            return f"Job {self.job_id} ({self.migration}) was already rolled back; nothing to do"
        lines = [f"Rolled back job {self.job_id} ({self.migration})"]
        for t in self.tables:
            dropped = ", table dropped" if t["dropped"] else ""
            kept = f", {t['rows_kept']:,} rows the job did not write kept" if t["rows_kept"] else ""
            lines.append(f"  {t['table']}: {t['rows_deleted']:,} rows removed{dropped}{kept}")
        if self.points_deleted_ranges:
            lines.append(f"  InfluxDB: {self.points_deleted_ranges} measurement time ranges deleted")
        if self.staged_files_removed:
            lines.append("  staged files removed")
        if self.other_jobs_marked:
            lines.append(
                f"  forced: chunks of job(s) {', '.join(self.other_jobs_marked)} lost data with it and are "
                "marked removed in the ledger; run those jobs again with their job_id to load them back"
            )
        return "\n".join(lines)


@step_task("check-rollback")
def check_rollback(spec: MigrationSpec, job_id: str, force: bool) -> dict:
    """The job's ledger row. Refuses an unknown job; unless `force`, also a running one, one
    whose rollback would lose rows that were in the target before it (`refuse_lossy_rollback`),
    and one whose rows or points other live jobs still claim (`refuse_claimed_rollback`)."""
    ledger, run = migration_job(spec, job_id)
    if force or run["status"] == "rolled_back":
        return run
    losses: list[dict] = []
    truncated: list[dict] = []
    holder = ledger.run_lock_holder(job_id)
    claims = other_jobs_claims(ledger, job_id)
    if spec.target.keeps_row_provenance:
        losses = ledger.rollback_losses(job_id)
        truncated = ledger.truncated_claims(job_id)
    if holder is not None:
        raise TargetGuardError(
            f"job {job_id} is still running ({holder} holds it): wait for it to end, or cancel it first"
        )
    refuse_claimed_rollback(job_id, claims)
    refuse_lossy_rollback(job_id, losses, truncated)
    if run["status"] == "running":
        active = active_flow_runs(job_id)
        if active:
            raise TargetGuardError(
                f"job {job_id} is still running (flow run {active[0]}): cancel it first, "
                "or pass force=true if it crashed"
            )
        get_run_logger().info("job %s: the ledger says running, but none of its flow runs is active", job_id)
    return run


def other_jobs_claims(ledger: Ledger, job_id: str) -> list[dict]:
    """Other live jobs' chunks whose data a rollback of `job_id` would remove: InfluxDB points in
    a shared measurement time range, PostgreSQL rows its upserts took over."""
    return ledger.job_point_claims(job_id) + ledger.overwritten_claims(job_id)


def refuse_claimed_rollback(job_id: str, claims: list[dict]) -> None:
    """Raise `TargetGuardError` naming each other job, its status and the overlapping ranges,
    when rolling back `job_id` would remove data those jobs still claim."""
    if not claims:
        return
    by_job: dict[str, list[dict]] = {}
    merged: dict[tuple, dict] = {}  # one entry per claimed chunk, however many chunks overwrote it
    for c in claims:
        key = (c["job_id"], c["table_name"], c["chunk_id"])
        if key in merged:
            merged[key]["rows"] = (merged[key].get("rows") or 0) + (c.get("rows") or 0)
            continue
        merged[key] = dict(c)
        by_job.setdefault(c["job_id"], []).append(merged[key])
    lines = []
    for other, chunks in sorted(by_job.items()):
        ranges = [
            f"{c['table_name']} {c['chunk_id']} [{c['lower_bound']}, {c['upper_bound']})"
            + (f" ({c['rows']:,} rows overwritten)" if c.get("rows") else "")
            for c in chunks
        ]
        more = f" and {len(ranges) - 3} more" if len(ranges) > 3 else ""
        lines.append(f"job {other} ({chunks[0]['job_status']}): {'; '.join(ranges[:3])}{more}")
    raise TargetGuardError(
        f"refusing to roll back job {job_id}: other jobs still claim data a rollback would delete "
        "(the same points, or rows this job's upserts took over)\n  "
        + "\n  ".join(lines)
        + "\nRoll those jobs back first, or pass force=true: their chunks are then marked removed in "
        "the ledger, and running those jobs again with their job_id loads them back"
    )


def refuse_lossy_rollback(job_id: str, losses: list[dict], truncated: list[dict] | None = None) -> None:
    """Raise `TargetGuardError` naming each table where rolling back would lose rows that were
    there before the job (`Ledger.rollback_losses`), the jobs whose rows a truncation
    removed, and how to go ahead anyway."""
    if not losses:
        return
    lines = []
    for t in losses:
        if t["rows_updated"]:
            lines.append(
                f"{t['table']}: the job ({t['load_mode']}) updated {t['rows_updated']:,} rows that existed "
                "before it; rolling back deletes them, and their old values cannot be restored"
            )
        if t["truncated"]:
            removed = "rows" if t["rows_truncated"] is None else f"{t['rows_truncated']:,} rows"
            jobs = sorted({c["job_id"] for c in truncated or [] if c["target_table"] == t["table"]})
            whose = f" (loaded by job{'s' if len(jobs) > 1 else ''} {', '.join(jobs)})" if jobs else ""
            lines.append(
                f"{t['table']}: the job ({t['load_mode']}) truncated the table before loading; the {removed}"
                f"{whose} it removed cannot be restored, and rolling back leaves the table without them"
            )
    raise TargetGuardError(
        f"refusing to roll back job {job_id}: it changed rows that were in the target before it\n  "
        + "\n  ".join(lines)
        + "\nPass force=true to roll back anyway (the job's rows go, those rows stay lost), "
        "or keep the job and correct the target by hand"
    )


def active_flow_runs(job_id: str) -> list[str]:
    """Names of the job's flow runs (tagged `job:<id>`) that have not reached a final state.

    A cancelled or crashed run cannot update the ledger, which then still says running; the
    Prefect API knows better.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=50,
            offset=0,
        )
    return [r.name for r in runs if r.state is None or not r.state.is_final()]


@step_task("rollback-target")
def rollback_target(spec: MigrationSpec, job_id: str) -> RollbackReport:
    """Remove the job's data from the target and mark it rolled back in the ledger. Other jobs'
    chunks whose data goes with it (a forced rollback) are marked removed."""
    report = RollbackReport(job_id=job_id, migration=spec.name)
    target, ledger = build_target(spec), build_ledger(spec)
    if target.keeps_row_provenance:
        claimed = ledger.overwritten_claims(job_id)
        tables = target.rollback_job(job_id)  # marks the claimed chunks in its transaction
        report.tables = [t.model_dump() for t in tables]
        report.other_jobs_marked = sorted({c["job_id"] for c in claimed})
        return report
    claimed = ledger.job_point_claims(job_id)
    for chunk in ledger.loaded_chunks(job_id, with_removed=True):
        details = chunk["details"] or {}
        for measurement in details.get("measurements", []):
            target.delete(measurement, details.get("start_ns"), details.get("stop_ns"))
            report.points_deleted_ranges += 1
    report.other_jobs_marked = ledger.mark_rolled_back(
        job_id,
        removed=claimed,
        reason=f"the forced rollback of job {job_id} deleted this job's points in the ranges both loaded",
    )
    return report


@step_task("remove-staged-files")
def remove_staged_files(spec: MigrationSpec, job_id: str) -> None:
    build_staging(spec).delete_prefix(job_id)
    get_run_logger().info("removed staged files of job %s", job_id)
