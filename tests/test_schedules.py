"""Deployment schedules fire: the Prefect server started from the project's venv creates the
Scheduled flow runs of an active schedule.

With SQLAlchemy 2.1 the server's scheduler services fail on every loop (`Can't evaluate bulk DML
statement`, in prefect's `_insert_scheduled_flow_runs`) and create no runs, so a schedule
resumed in prefect.yaml would never run; constraints.txt pins SQLAlchemy 2.0.x for that.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

# The recent-deployments scheduler picks a new deployment up within about 5 s. Should it miss
# one on a busy machine, the main scheduler (every 60 s) still does: wait a little longer.
SCHEDULER_DEADLINE = 75.0


def _server_log_tail(servers: dict) -> str:
    log = servers["root"] / "logs" / "prefect.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def test_active_schedules_create_scheduled_runs(servers):
    """The two kinds of schedule prefect.yaml holds (a daily cron at 02:00 UTC, an interval of
    900 s), active, on deployments of a throwaway flow: the server's scheduler creates their
    Scheduled runs, at the times the schedules name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    suffix = secrets.token_hex(3)
    schedules = {
        "nightly": CronSchedule(cron="0 2 * * *", timezone="UTC"),
        "every-15-min": IntervalSchedule(interval=timedelta(seconds=900)),
    }
    with get_client(sync_client=True) as client:
        # No work pool: no worker of another test can pick these runs up.
        flow_id = client.create_flow_from_name(f"schedule-probe-{suffix}")
        deployment_ids = {
            name: client.create_deployment(
                flow_id=flow_id,
                name=name,
                schedules=[DeploymentScheduleCreate(schedule=schedule, active=True)],
            )
            for name, schedule in schedules.items()
        }
        try:
            created = datetime.now(UTC)
            runs: dict = {}
            deadline = time.monotonic() + SCHEDULER_DEADLINE
            while time.monotonic() < deadline:
                runs = {
                    name: client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                    )
                    for name, deployment_id in deployment_ids.items()
                }
                if all(runs.values()):
                    break
                time.sleep(1)
            counts = {name: len(found) for name, found in runs.items()}
            assert all(counts.values()), (
                f"the scheduler created no runs within {SCHEDULER_DEADLINE:.0f} s: {counts}\n"
                f"server log:\n{_server_log_tail(servers)}"
            )
            for name, found in runs.items():
                assert {run.state.type.value for run in found} == {"SCHEDULED"}, name
                assert all(run.auto_scheduled for run in found), name
                starts = sorted(run.expected_start_time for run in found)
                # From now on: the scheduler schedules ahead, it does not backfill.
                assert starts[0] >= created - timedelta(seconds=60), (name, starts)
                steps = {
                    (later - earlier).total_seconds()
                    for earlier, later in zip(starts, starts[1:], strict=False)
                }
                if name == "nightly":
                    at = {start.astimezone(UTC).time().isoformat() for start in starts}
                    assert at == {"02:00:00"}, starts
                    assert steps <= {86_400.0}, starts
                else:
                    assert steps <= {900.0}, starts
                # The scheduler keeps at least 3 runs ahead (PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS).
                assert len(found) >= 3, (name, starts)
        finally:
            for deployment_id in deployment_ids.values():
                client.delete_deployment(deployment_id)
