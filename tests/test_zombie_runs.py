"""Zombie runs: a flow process killed with kill -9 sends no more heartbeats, and the automation
`migration-zombie-runs` marks its run Crashed; a deployment run so marked is resumed once.

One set of flow processes (`tests/zombie_child.py`, a flow that only waits) serves every test here,
so the tests share one wait for the automation's window. They run against the session's Prefect
server with heartbeats every 30 s (Prefect's minimum) and a window of 45 s instead of the shipped
4 minutes. The module takes 1.5 to 2 minutes: 20 to 45 s to start the five flow processes (more on
a busy machine), then the window and the server's checks every 5 s. The processes:

- `killed`: a `migrate` run started from Python, killed with SIGKILL after its first heartbeat;
- `alive`: a `migrate` run that keeps running, and so keeps sending heartbeats;
- `unwatched`: a run of another flow, killed like `killed`: nothing marks it (what a killed
  `migrate` run did before the automation);
- `worker_first`, `zombie_first`: two runs of a `migrate` deployment, both killed. A worker that
  saw its process die marks the first Crashed at once; the second is marked by the automation,
  and its worker reports the crash only afterwards.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.prefect_support import ROOT, api, flow_run, flow_runs_tagged

HEARTBEAT_SECONDS = 30
ZOMBIE_AFTER = timedelta(seconds=45)  # over one heartbeat interval (with room for a late one), under two
PROACTIVE_GRANULARITY = 5  # s: how often the server evaluates proactive triggers (its default)
WORKER_MESSAGE = "Flow run infrastructure exited with non-zero status code -9."


@dataclass
class Run:
    process: subprocess.Popen
    id: str = ""
    # A deployment run's `job:` tag, which the auto-resume carries into the rerun's job_id;
    # a run started from Python has it as its tag, to be found by.
    job_id: str = ""
    first_heartbeat: datetime | None = None
    # When the server last heard of the run: its first heartbeat, or when it was killed.
    last_sign_of_life: datetime | None = None


@dataclass
class Runs:
    prefix: str
    deployment_id: str
    by_name: dict[str, Run]

    def __getitem__(self, name: str) -> Run:
        return self.by_name[name]


def start(log: Path, flow_name: str, tag: str = "", flow_run_id: str = "") -> subprocess.Popen:
    env = {**os.environ, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
    target = ["--flow-run", flow_run_id] if flow_run_id else [tag]
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.zombie_child", flow_name, *target],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def heartbeats(run_id: str) -> list[datetime]:
    """When the server received the run's heartbeat events, oldest first."""
    response = httpx.post(
        f"{api()}/events/filter",
        json={
            "filter": {
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{run_id}"]},
            },
            "limit": 50,
        },
    )
    response.raise_for_status()
    return sorted(datetime.fromisoformat(e["occurred"]) for e in response.json()["events"])


def wait_running_with_heartbeat(run: Run, log: Path, deadline: float) -> None:
    """Wait until the run is Running and the server has its first heartbeat."""
    while True:
        if run.process.poll() is not None:
            raise AssertionError(f"flow process exited {run.process.returncode}: {log.read_text()[-3000:]}")
        if not run.id:
            found = flow_runs_tagged(run.job_id)
            run.id = found[0]["id"] if found else ""
        if run.id and flow_run(run.id)["state_type"] == "RUNNING":
            beats = heartbeats(run.id)
            if beats:
                run.first_heartbeat = run.last_sign_of_life = beats[0]
                return
        assert time.monotonic() < deadline, f"no heartbeat from a running flow run ({run.id or run.job_id})"
        time.sleep(0.5)


def states(run_id: str) -> list[dict]:
    response = httpx.get(f"{api()}/flow_run_states/", params={"flow_run_id": run_id})
    response.raise_for_status()
    return sorted(response.json(), key=lambda s: s["timestamp"])


def wait_for(run_id: str, state_type: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (run := flow_run(run_id))["state_type"] != state_type:
        assert time.monotonic() < deadline, f"flow run {run_id} is {run['state_type']} after {timeout:.0f} s"
        time.sleep(1)
    return run


def wait_past_window(run: Run) -> None:
    """Sleep until the automation would have fired for the run, had the server heard nothing of it
    since `last_sign_of_life` (it checks every few seconds)."""
    assert run.last_sign_of_life is not None
    fires_by = run.last_sign_of_life + ZOMBIE_AFTER + timedelta(seconds=2 * PROACTIVE_GRANULARITY + 3)
    time.sleep(max(0.0, (fires_by - datetime.now(UTC)).total_seconds()))


def deployment_runs(deployment_id: str) -> list[dict]:
    response = httpx.post(
        f"{api()}/flow_runs/filter",
        json={"deployments": {"id": {"any_": [deployment_id]}}, "limit": 50},
    )
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def runs(servers, tmp_path_factory):
    """Start the flow processes, wait for their heartbeats, kill the ones to kill."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Cancelled

    from deployments.automations import ensure_automations

    prefix = f"z{secrets.token_hex(3)}-"
    logs = tmp_path_factory.mktemp("zombie-runs")
    pool = f"{prefix}pool"
    started: dict[str, Run] = {}
    # No worker serves this pool: this module's processes run the deployment's runs, and the
    # auto-resume's reruns stay Scheduled.
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment_id = client.create_deployment(
            flow_id=client.create_flow_from_name("migrate"),
            name=f"{prefix}zombies",
            work_pool_name=pool,
            entrypoint="tests/zombie_child.py:wait",
        )
    try:
        ensure_automations(name_prefix=prefix, zombie_after=ZOMBIE_AFTER)
        with get_client(sync_client=True) as client:
            for name in ("worker_first", "zombie_first"):
                job_id = f"{prefix}{name}"
                created = client.create_flow_run_from_deployment(deployment_id, tags=[f"job:{job_id}"])
                process = start(logs / f"{name}.log", "migrate", flow_run_id=str(created.id))
                started[name] = Run(process, str(created.id), job_id)
        for name, flow_name in [("killed", "migrate"), ("alive", "migrate"), ("unwatched", "not-migrate")]:
            process = start(logs / f"{name}.log", flow_name, tag=f"{prefix}{name}")
            started[name] = Run(process, job_id=f"{prefix}{name}")

        deadline = time.monotonic() + 120
        for name, run in started.items():
            wait_running_with_heartbeat(run, logs / f"{name}.log", deadline)
        for name in ("killed", "unwatched", "worker_first", "zombie_first"):
            started[name].process.send_signal(signal.SIGKILL)
            started[name].process.wait(timeout=10)
            started[name].last_sign_of_life = datetime.now(UTC)
        # The worker that saw its process die reports it at once; the other one only later.
        assert report_crash_as_worker(started["worker_first"].id) == "CRASHED"
        yield Runs(prefix, str(deployment_id), started)
    finally:
        for run in started.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait(timeout=10)
        with get_client(sync_client=True) as client:
            for automation in client.read_automations():
                if automation.name.startswith(prefix):
                    client.delete_automation(automation.id)
            for run in started.values():
                if run.id and flow_run(run.id)["state_type"] == "RUNNING":
                    client.set_flow_run_state(run.id, Cancelled(message="test over"), force=True)
            for created in deployment_runs(str(deployment_id)):
                client.delete_flow_run(created["id"])
            client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)


def report_crash_as_worker(run_id: str) -> str:
    """What a process worker does when its flow process exits with -9; returns the state type the
    server then holds (the proposal is aborted when the run already ended)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Abort
    from prefect.states import Crashed
    from prefect.utilities.engine import propose_state_sync

    with get_client(sync_client=True) as client:
        try:
            return propose_state_sync(client, Crashed(message=WORKER_MESSAGE), flow_run_id=run_id).type.value
        except Abort:
            return "ABORTED"


def test_a_killed_run_is_marked_crashed(runs):
    crashed = wait_for(runs["killed"].id, "CRASHED", timeout=ZOMBIE_AFTER.total_seconds() + 60)
    assert crashed["state"]["message"] == (
        f"No heartbeat for {ZOMBIE_AFTER.seconds} s: the flow run's process is gone "
        f"(marked by the automation {runs.prefix}migration-zombie-runs)"
    )
    assert runs["killed"].first_heartbeat is not None
    marked = datetime.fromisoformat(crashed["state"]["timestamp"])
    assert marked >= runs["killed"].first_heartbeat + ZOMBIE_AFTER


def test_a_killed_run_of_another_flow_stays_running(runs):
    """What every killed run did before the automation: nothing else marks it."""
    wait_past_window(runs["unwatched"])
    assert flow_run(runs["unwatched"].id)["state_type"] == "RUNNING"


def test_a_run_that_sends_heartbeats_stays_running(runs):
    wait_past_window(runs["alive"])
    assert runs["alive"].process.poll() is None
    assert flow_run(runs["alive"].id)["state_type"] == "RUNNING"
    assert len(heartbeats(runs["alive"].id)) >= 2


def test_a_killed_deployment_run_is_crashed_and_resumed_once(runs):
    """Whichever marks the run Crashed first, the worker or the automation, the other's mark is
    refused: one Crashed state, one rerun with the run's job."""
    zombie_first, worker_first = runs["zombie_first"], runs["worker_first"]
    wait_for(zombie_first.id, "CRASHED", timeout=ZOMBIE_AFTER.total_seconds() + 60)
    assert report_crash_as_worker(zombie_first.id) == "ABORTED"
    wait_past_window(worker_first)
    wait_past_window(zombie_first)

    [worker_crash] = [s for s in states(worker_first.id) if s["type"] == "CRASHED"]
    assert worker_crash["message"] == WORKER_MESSAGE
    [zombie_crash] = [s for s in states(zombie_first.id) if s["type"] == "CRASHED"]
    assert zombie_crash["message"].startswith(f"No heartbeat for {ZOMBIE_AFTER.seconds} s")

    originals = {zombie_first.id, worker_first.id}
    deadline = time.monotonic() + 30
    while len(found := [r for r in deployment_runs(runs.deployment_id) if r["id"] not in originals]) < 2:
        assert time.monotonic() < deadline, f"reruns: {found}"
        time.sleep(1)
    time.sleep(PROACTIVE_GRANULARITY)  # a third run, were there one, would be there by now
    found = [r for r in deployment_runs(runs.deployment_id) if r["id"] not in originals]
    assert sorted((r["parameters"]["job_id"], r["parameters"]["resume_attempt"]) for r in found) == [
        (worker_first.job_id, 1),
        (zombie_first.job_id, 1),
    ]


def test_deployment_runs_send_heartbeats_often_enough():
    """prefect.yaml gives every deployment's runs the heartbeat interval the automation counts on,
    and the automation's window outlasts Prefect's default interval too (a process started without
    the setting)."""
    import yaml

    from deployments.automations import HEARTBEAT_SECONDS, ZOMBIE_AFTER, ZOMBIE_FLOWS

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["entrypoint"].rsplit(":", 1)[1] for d in deployments} <= set(ZOMBIE_FLOWS)
    for deployment in deployments:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS), deployment["name"]
    assert ZOMBIE_AFTER >= timedelta(seconds=180 + 2 * HEARTBEAT_SECONDS)
