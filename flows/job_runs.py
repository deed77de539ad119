"""A migration job as its `migrate` flow runs tell it, read from the Prefect API.

A job is found through the `job:<job_id>` tag its `migrate` flow runs carry; of several runs
(a failed one, then a resumed one) the newest decides. Percent and rows come from that run's
progress artifact, the stage from its chunk events, errors from its final state message and
its `migration.validation.failed` events. `flows.status` renders what this gathers.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from typing import Literal
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    ArtifactFilterType,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.events import ReceivedEvent
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from flows.ledger_view import LedgerView
from tasks.progress import STAGES, artifact_slug

JobState = Literal[
    "pending", "running", "completed", "failed", "cancelled", "incomplete", "superseded", "rolled_back"
]


_STATE_OF: dict[StateType, JobState] = {
    StateType.SCHEDULED: "pending",  # also Late and AwaitingRetry
    StateType.PENDING: "pending",
    StateType.PAUSED: "pending",
    StateType.RUNNING: "running",
    StateType.COMPLETED: "completed",
    StateType.FAILED: "failed",
    StateType.CRASHED: "failed",
    StateType.CANCELLED: "cancelled",
    StateType.CANCELLING: "cancelled",
}
_FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
_PROGRESS = re.compile(r"(\d+)/(\d+) chunks done, ([\d,]+) rows moved\. Current stage: (.*)\.$")
# The API answers at most this many events per page; enough for every chunk in flight.
_EVENT_PAGE = 50
# The API answers at most this many flow runs or artifacts per request (PREFECT_API_DEFAULT_LIMIT).
RUN_PAGE = 200
MIGRATE_FLOW = FlowFilter(name=FlowFilterName(any_=["migrate"]))


class UnknownJob(LookupError):
    """No `migrate` flow run carries the tag `job:<job_id>`."""


class UnknownFlowRun(LookupError):
    """No flow run has this id, or it is not a run of the `migrate` flow (the message says which)."""


class JobStatus(BaseModel):
    job_id: str | None
    """None for a flow run that has not started its job (yet): no `job:` tag."""
    migration: str | None
    state: JobState
    stage: str | None = None
    """The stage of the chunk that most recently started one and has not finished it."""
    stages: dict[str, int] = {}
    """Chunks in flight per stage."""
    percent: float | None = None
    rows: int | None = None
    chunks_done: int | None = None
    chunks_total: int | None = None
    errors: list[str] = []
    flow_run_id: str
    flow_run_name: str
    prefect_state: str
    started: datetime | None = None
    """When the newest run started."""
    ended: datetime | None = None
    """When the newest run ended, once it has."""
    runs: int
    """How many `migrate` flow runs the job has had (first run plus resumes)."""
    report: str | None = None
    """The summary of the run's report artifact, once the run has finished."""
    ledger: LedgerView | None = None
    """The job's row in its ledger, when the migration's config and secrets allow reading it."""
    lags: list[dict] = []
    """For a migration with catch-up runs: each table's lag (`tasks.catch_up.TableLag`)."""


def job_status(job_id: str) -> JobStatus:
    """The status of job `job_id` as its newest `migrate` flow run tells it.

    Raises UnknownJob when no flow run is tagged `job:<job_id>`, and httpx errors when the
    Prefect API cannot be reached.
    """
    with get_client(sync_client=True) as client:
        runs = job_flow_runs(client, job_id)
        if not runs:
            raise UnknownJob(job_id)
        return _status_of(client, job_id, runs)


def flow_run_status(flow_run_id: UUID) -> tuple[JobStatus, FlowRun]:
    """The status of the job that `migrate` flow run `flow_run_id` belongs to, and that run.

    The job's newest run decides, which may be a later run than the one asked about. A run
    without a `job:` tag (scheduled, pending, or failed before its job started) is reported on
    its own, with `job_id` None. Raises UnknownFlowRun when there is no such flow run or it is
    not a `migrate` run, and httpx errors when the Prefect API cannot be reached.
    """
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            raise UnknownFlowRun(f"no flow run {flow_run_id}") from None
        flow = client.read_flow(run.flow_id)
        if flow.name != "migrate":
            raise UnknownFlowRun(f"flow run {flow_run_id} is a run of flow {flow.name!r}, not of 'migrate'")
        job_id = tag_value(run, "job")
        runs = job_flow_runs(client, job_id) if job_id else [run]
        return _status_of(client, job_id, runs or [run]), run


def job_flow_runs(client: SyncPrefectClient, job_id: str) -> list[FlowRun]:
    """The job's `migrate` flow runs, newest first (start time, else expected start)."""
    return client.read_flow_runs(
        flow_filter=MIGRATE_FLOW,
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])),
        sort=FlowRunSort.START_TIME_DESC,
        limit=RUN_PAGE,
        offset=0,
    )


def tag_value(run: FlowRun, name: str) -> str | None:
    """The value of the run's `<name>:<value>` tag, or None."""
    return next((t.split(":", 1)[1] for t in run.tags if t.startswith(f"{name}:")), None)


def migration_of(run: FlowRun) -> str | None:
    """The migration's name: the run's `migration:` tag, else its `source_name` parameter."""
    name = tag_value(run, "migration") or (run.parameters or {}).get("source_name")
    return name if isinstance(name, str) else None


def job_state_of(run: FlowRun) -> JobState:
    return _STATE_OF.get(run.state.type, "pending") if run.state else "pending"


def ended_at(run: FlowRun) -> datetime | None:
    return run.end_time if run.state and run.state.type in _FINAL else None


def progress_fields(progress: Artifact) -> dict:
    """percent, and when its description says them chunks_done, chunks_total, rows and the
    stages in flight, from a progress artifact."""
    fields: dict = {"percent": float(progress.data) if progress.data is not None else None}
    if match := _PROGRESS.search(progress.description or ""):
        fields.update(
            chunks_done=int(match[1]),
            chunks_total=int(match[2]),
            rows=int(match[3].replace(",", "")),
            stages={stage: int(n) for stage, n in re.findall(r"(\w+): (\d+)", match[4]) if stage in STAGES},
        )
    return fields


def _status_of(client: SyncPrefectClient, job_id: str | None, runs: list[FlowRun]) -> JobStatus:
    """The status the newest of `runs` (all of one job, newest first) tells."""
    run = runs[0]
    migration = migration_of(run)
    progress = _artifact(client, run, type=ArtifactFilterType(any_=["progress"]))
    report_key = f"migration-report-{artifact_slug(migration or '')}"
    report = _artifact(client, run, key=ArtifactFilterKey(any_=[report_key])) if migration else None
    chunk_events, failures = [], []
    if job_id:
        chunk_events = _events(client, job_id, run, EventNameFilter(prefix=["migration.chunk."]))
        failures = _events(client, job_id, run, EventNameFilter(name=["migration.validation.failed"]))

    status = JobStatus(
        job_id=job_id,
        migration=migration,
        state=job_state_of(run),
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        prefect_state=run.state.name if run.state else "unknown",
        started=run.start_time,
        ended=ended_at(run),
        runs=len(runs),
        report=report.description.strip("`\n") if report and report.description else None,
    )
    if progress:
        for name, value in progress_fields(progress).items():
            setattr(status, name, value)
    open_chunks = _chunks_in_flight(chunk_events)
    if open_chunks:
        status.stages = dict(Counter(stage for stage, _ in open_chunks.values()))
        status.stage = max(open_chunks.values(), key=lambda v: v[1])[0]
    elif status.stages:  # events not in yet: the artifact's description is the fallback
        status.stage = max(reversed(STAGES), key=lambda s: status.stages.get(s, 0))
    if status.state == "running" and not chunk_events and not status.chunks_done and not status.stages:
        status.state = "pending"  # still checking connections and planning: no chunk started
    if status.state != "running":
        status.stage, status.stages = None, {}

    if run.state and run.state.type in (StateType.FAILED, StateType.CRASHED) and run.state.message:
        status.errors.append(run.state.message)
    for event in sorted(failures, key=lambda e: e.occurred):
        where = f"{event.resource.get('migration.table')} chunk {event.resource.get('migration.chunk')}"
        status.errors.append(f"validation failed, {where}: {event.payload.get('error')}")
    return status


def _artifact(client: SyncPrefectClient, run: FlowRun, **criteria) -> Artifact | None:
    """The run's most recently updated artifact matching `criteria` (ArtifactFilter fields), or None."""
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), **criteria),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
        offset=0,
    )
    return found[0] if found else None


def _events(
    client: SyncPrefectClient, job_id: str, run: FlowRun, name: EventNameFilter
) -> list[ReceivedEvent]:
    """The newest events of `job_id` emitted inside flow run `run` (so not by an earlier run)."""
    page = client.read_events(
        filter=EventFilter(
            event=name,
            resource=EventResourceFilter(id=[f"migration.job.{job_id}"]),
            related=EventRelatedFilter(id=[f"prefect.flow-run.{run.id}"]),
        ),
        limit=_EVENT_PAGE,
    )
    return page.events


def _chunks_in_flight(events: list[ReceivedEvent]) -> dict[tuple[str, str], tuple[str, datetime]]:
    """(table, chunk) -> (stage, started) for chunks whose latest started stage has not finished."""
    open_chunks: dict[tuple[str, str], tuple[str, datetime]] = {}
    for event in sorted(events, key=lambda e: e.occurred):
        _, _, stage, phase = event.event.split(".", 3)
        chunk = (event.resource.get("migration.table"), event.resource.get("migration.chunk"))
        if phase == "started":
            open_chunks[chunk] = (stage, event.occurred)
        elif open_chunks.get(chunk, ("",))[0] == stage:
            del open_chunks[chunk]
    return open_chunks
