"""A dry run's answer on the job: which one a run would take up, and whether another run holds it."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from blocks.errors import TargetGuardError
from blocks.preview import GuardDecision
from blocks.seam import Ledger
from tasks.config import MigrationSpec, RunWindow
from tasks.jobs import fingerprint, job_window


class JobPlan(BaseModel):
    """What the run would do with its job."""

    action: Literal["new", "resume", "completed", "refused", "up_to_date"]
    job_id: str | None = None
    chunks_loaded: int = 0
    chunks_total: int = 0
    summary: str


def job_decision(
    spec: MigrationSpec,
    ledger: Ledger,
    window: RunWindow,
    job_id: str | None,
    no_resume: bool,
    within: timedelta,
    explicit_window: bool,
    catch_up: list[dict] | None = None,
) -> tuple[JobPlan, RunWindow]:
    """The job `start_job` would take up (and the window it runs with), read from the ledger;
    `catch_up`: a catch-up job's cursor ranges, part of its fingerprint."""
    try:
        window = job_window(ledger, spec.name, window, job_id, explicit_window)
        run = ledger.job_to_take_up(
            job_id=job_id,
            migration=spec.name,
            fingerprint=fingerprint(spec, window, catch_up),
            no_resume=no_resume,
            resumable_within=within,
        )
    except TargetGuardError as exc:
        return JobPlan(action="refused", job_id=job_id, summary=str(exc)), window
    if run is None:
        return JobPlan(
            action="new", job_id=job_id, summary=f"start a new job {job_id or '(its id is made at start)'}"
        ), window
    states = ledger.chunk_states(run["job_id"])
    loaded, total = sum(s == "loaded" for s in states.values()), len(states)
    if run["status"] == "completed":
        summary = (
            f"job {run['job_id']} already completed with the same tables and window: nothing to load "
            f"({loaded} of {total} chunks loaded; no_resume starts a new job)"
        )
        return JobPlan(
            action="completed",
            job_id=run["job_id"],
            chunks_loaded=loaded,
            chunks_total=total,
            summary=summary,
        ), window
    summary = f"resume job {run['job_id']} ({run['status']}): {loaded} of {total} chunks loaded"
    return JobPlan(
        action="resume", job_id=run["job_id"], chunks_loaded=loaded, chunks_total=total, summary=summary
    ), window


def run_lock_decision(ledger: Ledger, job: JobPlan) -> GuardDecision | None:
    """Whether another run holds the job's run lock (a new job's lock is free)."""
    if job.action not in ("resume", "completed"):
        return None
    holder = ledger.run_lock_holder(job.job_id)
    if holder is None:
        return GuardDecision(guard="run lock", outcome="pass", reason=f"no other run holds job {job.job_id}")
    reason = f"job {job.job_id} is already running in {holder}; a run now would stop before loading anything"
    return GuardDecision(guard="run lock", outcome="refuse", reason=reason)
