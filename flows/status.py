"""`python -m flows.status JOB_ID [--json]`: where a migration job stands, read from the Prefect API.

A job is found through the `job:<job_id>` tag its `migrate` flow runs carry; of several runs
(a failed one, then a resumed one) the newest decides. Percent and rows come from that run's
progress artifact, the stage from its chunk events, errors from its final state message and
its `migration.validation.failed` events.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from datetime import datetime
from typing import Literal

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
from pydantic import BaseModel

from tasks.progress import STAGES, artifact_slug

JobState = Literal["pending", "running", "completed", "failed", "cancelled"]

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
_PROGRESS = re.compile(r"(\d+)/(\d+) chunks done, ([\d,]+) rows moved\. Current stage: (.*)\.$")
# The API answers at most this many events per page; enough for every chunk in flight.
_EVENT_PAGE = 50


class UnknownJob(LookupError):
    """No `migrate` flow run carries the tag `job:<job_id>`."""


class JobStatus(BaseModel):
    job_id: str
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
    runs: int
    """How many `migrate` flow runs the job has had (first run plus resumes)."""
    report: str | None = None
    """The summary of the run's report artifact, once the run has finished."""


def job_status(job_id: str) -> JobStatus:
    """The status of job `job_id` as its newest `migrate` flow run tells it.

    Raises UnknownJob when no flow run is tagged `job:<job_id>`, and httpx errors when the
    Prefect API cannot be reached.
    """
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["migrate"])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])),
            sort=FlowRunSort.START_TIME_DESC,  # start time, else expected start
            limit=50,
            offset=0,
        )
        if not runs:
            raise UnknownJob(job_id)
        run = runs[0]
        migration = next((t.split(":", 1)[1] for t in run.tags if t.startswith("migration:")), None)
        progress = _artifact(client, run, type=ArtifactFilterType(any_=["progress"]))
        report_key = f"migration-report-{artifact_slug(migration or '')}"
        report = _artifact(client, run, key=ArtifactFilterKey(any_=[report_key])) if migration else None
        chunk_events = _events(client, job_id, run, EventNameFilter(prefix=["migration.chunk."]))
        failures = _events(client, job_id, run, EventNameFilter(name=["migration.validation.failed"]))

    status = JobStatus(
        job_id=job_id,
        migration=migration,
        state=_STATE_OF.get(run.state.type, "pending") if run.state else "pending",
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        prefect_state=run.state.name if run.state else "unknown",
        started=run.start_time,
        runs=len(runs),
        report=report.description.strip("`\n") if report and report.description else None,
    )
    if progress:
        status.percent = float(progress.data) if progress.data is not None else None
        if match := _PROGRESS.search(progress.description or ""):
            status.chunks_done, status.chunks_total = int(match[1]), int(match[2])
            status.rows = int(match[3].replace(",", ""))
            status.stages = {
                stage: int(n) for stage, n in re.findall(r"(\w+): (\d+)", match[4]) if stage in STAGES
            }
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


def render(status: JobStatus) -> str:
    """The status as a few aligned lines for a terminal."""
    state = status.state + (f" (stage: {status.stage})" if status.stage else "")
    if len(status.stages) > 1:
        state += " [" + ", ".join(f"{s}: {n}" for s, n in status.stages.items()) + "]"
    percent = "unknown" if status.percent is None else f"{status.percent:.1f} %"
    if status.chunks_total is not None:
        percent += f" ({status.chunks_done}/{status.chunks_total} chunks)"
    started = status.started.strftime("%Y-%m-%d %H:%M:%S %Z") if status.started else "not yet"
    lines = [
        f"job:        {status.job_id}" + (f" (migration {status.migration!r})" if status.migration else ""),
        f"state:      {state}",
        f"percent:    {percent}",
        f"rows moved: {'unknown' if status.rows is None else f'{status.rows:,}'}",
        f"flow run:   {status.flow_run_name} ({status.flow_run_id}), {status.prefect_state}, "
        f"started {started}" + (f"; newest of {status.runs} runs" if status.runs > 1 else ""),
    ]
    if not status.errors:
        lines.append("errors:     none")
    else:
        lines.append(f"errors:     {len(status.errors)}")
        lines.extend(f"  - {error}" for error in status.errors)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the status of one job. Returns 0 when found, 2 for an unknown job, 1 when the API
    cannot be read; bad arguments exit 2 through argparse."""
    import argparse

    import httpx
    from prefect.settings import PREFECT_API_URL

    parser = argparse.ArgumentParser(prog="python -m flows.status", description=__doc__.splitlines()[0])
    parser.add_argument("job_id")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    args = parser.parse_args(argv)
    try:
        status = job_status(args.job_id)
    except UnknownJob:
        print(
            f"no migration job {args.job_id!r}: no `migrate` flow run is tagged job:{args.job_id} "
            f"at {PREFECT_API_URL.value() or 'the local Prefect API'}",
            file=sys.stderr,
        )
        return 2
    except httpx.HTTPError as exc:
        print(f"cannot read the Prefect API at {PREFECT_API_URL.value()}: {exc}", file=sys.stderr)
        return 1
    print(status.model_dump_json(indent=2) if args.json else render(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
