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

from prefect import get_run_logger, task
from pydantic import BaseModel

from blocks import pg_ledger
from blocks.errors import ConfigError, TargetGuardError
from tasks.config import MigrationSpec
from tasks.connections import build_ledger, build_staging, build_target
from tasks.policy import STEP_RETRIES


class RollbackReport(BaseModel):
    job_id: str
    migration: str
    tables: list[dict] = []
    points_deleted_ranges: int = 0
    staged_files_removed: bool = False
    already_rolled_back: bool = False

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
        return "\n".join(lines)


@task(name="check-rollback", **STEP_RETRIES)
def check_rollback(spec: MigrationSpec, job_id: str, force: bool) -> dict:
    """The job's ledger row. Refuses an unknown job; unless `force`, also a running one, and one
    whose rollback would lose rows that were in the target before it (`refuse_lossy_rollback`)."""
    ledger = build_ledger(spec)
    run = ledger.job_run(job_id)
    if run is None:
        raise ConfigError(f"job {job_id} is not in the ledger of migration {spec.name!r}")
    if run["migration"] != spec.name:
        raise ConfigError(f"job {job_id} belongs to migration {run['migration']!r}, not {spec.name!r}")
    if force or run["status"] == "rolled_back":
        return run
    losses: list[dict] = []
    with ledger.connect() as conn:
        holder = pg_ledger.run_lock_holder(conn, job_id)
        if spec.target.type == "postgres":
            pg_ledger.ensure_ledger(conn)  # a ledger an older version wrote gains its new columns
            losses = pg_ledger.rollback_losses(conn, job_id)
    if holder is not None:
        raise TargetGuardError(
            f"job {job_id} is still running ({holder} holds it): wait for it to end, or cancel it first"
        )
    refuse_lossy_rollback(job_id, losses)
    if run["status"] == "running":
        active = active_flow_runs(job_id)
        if active:
            raise TargetGuardError(
                f"job {job_id} is still running (flow run {active[0]}): cancel it first, "
                "or pass force=true if it crashed"
            )
        get_run_logger().info("job %s: the ledger says running, but none of its flow runs is active", job_id)
    return run


def refuse_lossy_rollback(job_id: str, losses: list[dict]) -> None:
    """Raise `TargetGuardError` naming each table where rolling back would lose rows that were
    there before the job (`pg_ledger.rollback_losses`), and how to go ahead anyway."""
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
            lines.append(
                f"{t['table']}: the job ({t['load_mode']}) truncated the table before loading; the {removed} "
                "it removed cannot be restored, and rolling back leaves the table without them"
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


@task(name="rollback-target", **STEP_RETRIES)
def rollback_target(spec: MigrationSpec, job_id: str) -> RollbackReport:
    """Remove the job's data from the target and mark it rolled back in the ledger."""
    report = RollbackReport(job_id=job_id, migration=spec.name)
    if spec.target.type == "postgres":
        tables = build_target(spec).rollback_job(job_id)
        report.tables = [t.model_dump() for t in tables]
        return report
    target, ledger = build_target(spec), build_ledger(spec)
    for chunk in ledger.loaded_chunks(job_id):
        details = chunk["details"] or {}
        for measurement in details.get("measurements", []):
            target.delete(measurement, details.get("start_ns"), details.get("stop_ns"))
            report.points_deleted_ranges += 1
    ledger.mark_rolled_back(job_id)
    return report


@task(name="remove-staged-files", **STEP_RETRIES)
def remove_staged_files(spec: MigrationSpec, job_id: str) -> None:
    build_staging(spec).delete_prefix(job_id)
    get_run_logger().info("removed staged files of job %s", job_id)
