"""Cancel a migration job: move each of its `migrate` flow runs that has not ended to Cancelling,
as `prefect flow-run cancel` does, and say what Prefect made of it.

What happens next depends on where the run is (Prefect 3.8.8):
- Scheduled, with no process yet: the server cancels it at once (its orchestration rule
  `BypassCancellingFlowRunsWithNoInfra` answers Cancelled instead of Cancelling).
- Pending or Running under a worker: the worker sees Cancelling, stops the flow's process and
  marks the run Cancelled; a Pending run with no process yet is marked Cancelled by the worker
  when it next polls.
- Running in a process no worker started (`python -m flows.migrate`, an in-process
  `prefect-migrate run`): nothing watches for Cancelling there; the run stays Cancelling
  until that process is stopped by hand.
In every case the job's ledger keeps `running`; a rerun resumes it, or a rollback removes it.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling
from pydantic import BaseModel

from flows.job_runs import UnknownFlowRun, UnknownJob, job_flow_runs, tag_value


class RunCancel(BaseModel):
    """What asking one flow run to cancel did."""

    flow_run_id: str
    flow_run_name: str
    state_before: str
    state_after: str
    """The run's state as the server answered: Cancelled, Cancelling, or unchanged when refused."""
    outcome: str
    """One sentence for the operator: what happened, and what happens next."""


class CancelResult(BaseModel):
    job_id: str | None
    """None when a flow run without a job (not started yet) was named."""
    cancelled: list[RunCancel] = []
    """The runs that had not ended, each asked to cancel."""
    ended_runs: int = 0
    """The job's runs that had already ended (left alone)."""
    newest_state: str | None = None
    """The state of the job's newest run (e.g. "Completed", "Failed")."""


def cancel_job(job_or_run: str, message: str = "cancelled with prefect-migrate cancel") -> CancelResult:
    """Ask every `migrate` flow run of a job that has not ended to cancel (the job's id, or the
    UUID of one of its runs; a run with no job yet is cancelled on its own).

    Raises UnknownJob when no `migrate` flow run is tagged `job:<job_or_run>` (and it is not
    the id of one), UnknownFlowRun when the UUID names a run of another flow, and httpx errors
    when the Prefect API cannot be read. An empty `cancelled` means the job has no active run.
    """
    with get_client(sync_client=True) as client:
        job_id, runs = _runs_to_cancel(client, job_or_run)
        result = CancelResult(job_id=job_id)
        if runs:
            newest = max(runs, key=lambda r: r.created or r.expected_start_time or 0)
            result.newest_state = newest.state.name if newest.state else None
        for run in runs:
            if run.state is not None and run.state.is_final():
                result.ended_runs += 1
                continue
            result.cancelled.append(_cancel(client, run, message))
    return result


def _runs_to_cancel(client: SyncPrefectClient, job_or_run: str) -> tuple[str | None, list[FlowRun]]:
    try:
        run_id = UUID(job_or_run)
    except ValueError:
        run_id = None
    if run_id is not None:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            pass  # perhaps a job id that looks like a UUID
        else:
            flow = client.read_flow(run.flow_id)
            if flow.name != "migrate":
                raise UnknownFlowRun(f"flow run {run_id} is a run of flow {flow.name!r}, not of 'migrate'")
            job_id = tag_value(run, "job")
            return job_id, (job_flow_runs(client, job_id) if job_id else [run])
    runs = job_flow_runs(client, job_or_run)
    if not runs:
        raise UnknownJob(job_or_run)
    return job_or_run, runs


def _cancel(client: SyncPrefectClient, run: FlowRun, message: str) -> RunCancel:
    before = run.state.name if run.state else "no state"
    answer = client.set_flow_run_state(run.id, Cancelling(message=message))
    after = answer.state.name if answer.state else before
    if answer.status == SetStateStatus.ABORT or answer.state is None:
        outcome = f"Prefect refused to cancel it: {answer.details.reason or 'no reason given'}"
        after = before
    elif answer.state.type == StateType.CANCELLED:
        outcome = "cancelled at once: it had not started, so there was no process to stop"
    elif answer.state.type != StateType.CANCELLING:
        outcome = f"Prefect answered {answer.state.name}: {answer.details.reason or 'no reason given'}"
    elif run.infrastructure_pid:
        outcome = "cancelling: its worker stops the flow's process, then marks the run Cancelled"
    elif run.state and run.state.type in (StateType.PENDING, StateType.SCHEDULED):
        outcome = (
            "cancelling: it has no process yet; its work pool's worker marks it Cancelled when it "
            "next polls (with no worker running it stays Cancelling)"
        )
    else:
        outcome = (
            "cancelling, but no worker started it (no process recorded: it runs in-process, e.g. "
            "`prefect-migrate run --in-process`): nothing stops it but stopping that process by hand"
        )
    return RunCancel(
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        state_before=before,
        state_after=after,
        outcome=outcome,
    )
