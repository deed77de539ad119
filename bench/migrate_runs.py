"""Migrations files written by the bench, and `migrate` flow runs in child processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.stack import BENCH_DB, Stack

REPO = Path(__file__).resolve().parent.parent
NO_RETRIES = {"attempts": 0, "delay_seconds": 0.1, "jitter": 0.1}  # a failure should show, not hide
PROFILE_DIR: Path | None = None  # set (python -m bench.run --profile): py-spy samples per flow run


def pg_settings(stack: Stack, schema: str | None = None) -> dict:
    settings = {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": stack.pg.port,
        "dbname": BENCH_DB,
        "user": "postgres",
        "password_env": "PGPASSWORD",
    }
    return settings | ({"schema": schema} if schema else {})


def write_migration(stack: Stack, name: str, spec: dict) -> Path:
    """A migrations file holding the one migration `name`, staging under the bench's root."""
    spec = {"staging": {"type": "local", "path": str(stack.root / "staging")}, "retries": NO_RETRIES, **spec}
    path = stack.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"migrations": {name: spec}}, sort_keys=False))
    return path


def run_migrate(
    path: Path,
    name: str,
    job_id: str,
    servers_cpu: Callable[[], float] | None = None,
    flow_kwargs: dict | None = None,
) -> dict:
    """Run the flow in a child process; returns its BENCH_RESULT (seconds, max_rss_mb, rows, ...).
    With `servers_cpu` (CPU seconds the servers have used so far, see bench.cpu), also
    `servers_cpu_seconds`: what they used while the flow ran. `flow_kwargs`: more arguments of
    `migrate` (JSON values: start_time, end_time, dask_address).
    Raises RuntimeError with the child's output tail when the flow fails."""
    cmd = [sys.executable, "-m", "bench.flow_child", str(path), name, job_id, json.dumps(flow_kwargs or {})]
    if PROFILE_DIR:
        # Every thread's stacks, waiting ones too (chunks run in a thread pool), for bench.profile_summary.
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        out = PROFILE_DIR / f"{job_id}-{time.strftime('%H%M%S')}.txt"
        cmd = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--format",
            "raw",
            "--idle",
            "--rate",
            "100",
            "-o",
            str(out),
            "--",
            *cmd,
        ]
    servers_before = servers_cpu() if servers_cpu else 0.0
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if servers_cpu:
        time.sleep(0.5)  # the flow's backends exit once its connections close, then count
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line.removeprefix("BENCH_RESULT "))
            if result["status"] == "completed":
                if servers_cpu:
                    result["servers_cpu_seconds"] = servers_cpu() - servers_before
                return result
    tail = (proc.stdout + proc.stderr)[-4000:]
    raise RuntimeError(f"migrate {name} job {job_id} failed (exit {proc.returncode}):\n{tail}")


def verified_as(stack: Stack, job_id: str, mode: str) -> str:
    """How the ledger says the job's chunks were verified; AssertionError unless all as `mode`."""
    with stack.pg.connect(BENCH_DB) as conn:
        recorded = {
            r[0]
            for r in conn.execute(
                "SELECT details->>'verified' FROM migration_status.migration_chunk_status WHERE job_id = %s",
                (job_id,),
            )
        }
    if recorded != {mode}:
        raise AssertionError(
            f"job {job_id} ran with verify: {mode}, its chunks record {sorted(recorded, key=str)}"
        )
    return mode
