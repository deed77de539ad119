"""Test support: deploy prefect.yaml to the session's Prefect server, run a process worker as a
subprocess, and follow flow runs through the API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def api() -> str:
    return os.environ["PREFECT_API_URL"]


def deploy_all() -> subprocess.CompletedProcess:
    """`prefect deploy --all` from the repo root, after creating the `migrations` process pool."""
    env = {**os.environ, "PREFECT_CLI_PROMPT": "false"}
    subprocess.run(
        [PREFECT, "work-pool", "create", "migrations", "--type", "process", "--overwrite"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def stack_env(servers: dict, pg_database: str, staging: Path) -> dict[str, str]:
    """What a worker needs so that the repo's migrations.yaml reaches the test servers."""
    return {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(servers["pg"].port),
        "PGDATABASE": pg_database,
        "SNOWFLAKE_PORT": str(servers["fakesnow"].port),
        "STAGING_DIR": str(staging),
    }


@contextmanager
def worker(log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A `prefect worker start --pool migrations` subprocess, polling every second."""
    full_env = {
        **os.environ,
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "migrations", "--type", "process"],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_deployment_by_name(name: str, parameters: dict) -> str:
    """Start a run of deployment `flow/name`, like `prefect deployment run`; returns its id."""
    from prefect.deployments import run_deployment

    return str(run_deployment(name, parameters=parameters, timeout=0).id)


def flow_run(run_id: str) -> dict:
    return httpx.get(f"{api()}/flow_runs/{run_id}").json()


def wait_for_state(run_id: str, states: set[str], timeout: float, log: Path | None = None) -> dict:
    """Poll the flow run until its state type is one of `states`; fail with the worker log."""
    deadline = time.monotonic() + timeout
    while True:
        run = flow_run(run_id)
        if run["state_type"] in states:
            return run
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"flow run {run_id} is {run['state_type']} after {timeout}s\n{tail}")
        time.sleep(0.5)


def flow_runs_tagged(tag: str) -> list[dict]:
    response = httpx.post(
        f"{api()}/flow_runs/filter",
        json={"flow_runs": {"tags": {"all_": [tag]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 50},
    )
    return response.json()
