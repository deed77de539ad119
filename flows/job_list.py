"""`python -m flows.status` without a job, or with `--list [MIGRATION]`: the recent migration
jobs, one line each, read from the `migrate` flow runs' `job:` tags in the Prefect API.

The newest run of each job decides its state, percent, chunks and rows (from its progress
artifact), as in `flows.status`; the job started when its first run did.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import Artifact, FlowRun
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from pydantic import BaseModel

from flows.ledger_view import apply_ledger, ledger_views, migration_lags, render_lag
from flows.status import (
    MIGRATE_FLOW,
    RUN_PAGE,
    JobState,
    ended_at,
    job_state_of,
    migration_of,
    progress_fields,
    tag_value,
    when,
)

# Read at most this many pages of flow runs looking for jobs.
_LIST_PAGES = 10


class JobSummary(BaseModel):
    """One line of `--list`: a job as its newest `migrate` flow run tells it."""

    job_id: str
    migration: str | None
    state: JobState
    """As `JobStatus.state`, except that a running run counts as running once it has a
    progress artifact (its chunks are planned), without looking at chunk events."""
    percent: float | None = None
    chunks_done: int | None = None
    chunks_total: int | None = None
    rows: int | None = None
    started: datetime | None = None
    """When the job's first run started."""
    ended: datetime | None = None
    """When its newest run ended, once it has."""
    runs: int
    flow_run_id: str
    """The newest run."""


class JobList(BaseModel):
    jobs: list[JobSummary]
    """Newest first."""
    lags: dict[str, list[dict]] = {}
    """migration -> each catch-up table's lag (`tasks.catch_up.TableLag`)."""
    runs_without_job: int = 0
    """`migrate` flow runs newer than the last job listed that carry no `job:` tag (not
    started yet, or failed before their job started)."""


def recent_jobs(migration: str | None = None, limit: int = 20) -> JobList:
    """The `limit` most recent jobs (of `migration`, when given), newest first, from the
    `migrate` flow runs' `job:` tags. Raises httpx errors when the Prefect API cannot be read."""
    tags = FlowRunFilterTags(all_=[f"migration:{migration}"]) if migration else None
    newest: dict[str, FlowRun] = {}
    untagged = 0
    with get_client(sync_client=True) as client:
        for page in range(_LIST_PAGES):
            runs = client.read_flow_runs(
                flow_filter=MIGRATE_FLOW,
                flow_run_filter=FlowRunFilter(tags=tags) if tags else None,
                sort=FlowRunSort.START_TIME_DESC,
                limit=RUN_PAGE,
                offset=page * RUN_PAGE,
            )
            for run in runs:
                if len(newest) == limit:
                    break
                job_id = tag_value(run, "job")
                if job_id is None:
                    untagged += 1
                elif job_id not in newest:
                    newest[job_id] = run
            if len(runs) < RUN_PAGE or len(newest) >= limit:
                break
        if not newest:
            return JobList(jobs=[], runs_without_job=untagged)
        all_runs = _runs_of_jobs(client, list(newest))
        progress = _progress_by_run(client, [run.id for run in newest.values()])

    jobs = []
    for job_id, run in newest.items():
        runs = all_runs.get(job_id) or [run]
        first = min((r.start_time for r in runs if r.start_time), default=None)
        summary = JobSummary(
            job_id=job_id,
            migration=migration_of(run),
            state=job_state_of(run),
            started=first,
            ended=ended_at(run),
            runs=len(runs),
            flow_run_id=str(run.id),
        )
        if artifact := progress.get(run.id):
            for name, value in progress_fields(artifact).items():
                if name != "stages":
                    setattr(summary, name, value)
        elif summary.state == "running":
            summary.state = "pending"  # still checking connections and planning
        jobs.append(summary)
    return JobList(jobs=jobs, runs_without_job=untagged)


def with_ledgers(found: JobList, migrations_file: str | None = None) -> JobList:
    """Where a job's ledger knows better than its newest flow run (rolled back, or data removed
    or replaced by another job since), the ledger's status and counts win, as in `flows.status`."""
    by_migration: dict[str, list[str]] = {}
    for job in found.jobs:
        if job.migration:
            by_migration.setdefault(job.migration, []).append(job.job_id)
    views = ledger_views(by_migration, migrations_file)
    for job in found.jobs:
        apply_ledger(job, views.get(job.job_id))
    for migration in by_migration:
        if lags := migration_lags(migration, migrations_file):
            found.lags[migration] = lags
    return found


def _runs_of_jobs(client: SyncPrefectClient, job_ids: list[str]) -> dict[str, list[FlowRun]]:
    """job id -> every `migrate` flow run tagged with it."""
    found: dict[str, list[FlowRun]] = {}
    offset = 0
    while True:
        runs = client.read_flow_runs(
            flow_filter=MIGRATE_FLOW,
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(any_=[f"job:{j}" for j in job_ids])),
            sort=FlowRunSort.ID_DESC,
            limit=RUN_PAGE,
            offset=offset,
        )
        for run in runs:
            found.setdefault(tag_value(run, "job") or "", []).append(run)
        if len(runs) < RUN_PAGE:
            return found
        offset += RUN_PAGE


def _progress_by_run(client: SyncPrefectClient, run_ids: list[UUID]) -> dict[UUID, Artifact]:
    """flow run id -> its most recently updated progress artifact."""
    found: dict[UUID, Artifact] = {}
    for artifact in client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=run_ids), type=ArtifactFilterType(any_=["progress"])
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=RUN_PAGE,
        offset=0,
    ):
        found.setdefault(artifact.flow_run_id, artifact)
    return found


def render_list(found: JobList) -> str:
    """The jobs as an aligned table, one line each, newest first."""
    header = ("JOB", "MIGRATION", "STATE", "PROGRESS", "ROWS", "STARTED (UTC)", "ENDED (UTC)", "RUNS")
    rows = [header]
    for job in found.jobs:
        progress = "" if job.percent is None else f"{job.percent:.1f} %"
        if job.chunks_total is not None:
            progress += f" ({job.chunks_done}/{job.chunks_total})"
        rows.append(
            (
                job.job_id,
                job.migration or "-",
                job.state,
                progress or "-",
                "-" if job.rows is None else f"{job.rows:,}",
                when(job.started, "-").removesuffix(" UTC"),
                when(job.ended, "-").removesuffix(" UTC"),
                str(job.runs),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4, 7}  # numbers line up on the right
    lines = [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    if not found.jobs:
        lines = ["no migration jobs found"]
    for migration, lags in sorted(found.lags.items()):
        lines.append(f"lag of {migration}:")
        lines.extend(f"  {render_lag(lag)}" for lag in lags)
    if found.runs_without_job:
        lines.append(
            f"(and {found.runs_without_job} newer `migrate` flow run(s) with no job: not started, failed "
            "before the job started, dry runs, or catch-ups that found nothing to load; "
            "`prefect flow-run ls --flow-name migrate` lists them, `prefect-migrate status FLOW_RUN_ID` "
            "shows one)"
        )
    return "\n".join(lines)
