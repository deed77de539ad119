"""(j) The fixed cost of one flow run: an empty `@flow` called in a child process against the
bench's Prefect server, RUNS processes per variant; each process times its first call (what
every `migrate` run in its own process pays, as bench.flow_child runs it) and a second one.

Variants:
- `project`: Prefect as the project configures it (pyproject.toml's [tool.prefect.flows]
  heartbeat_frequency = 30, read from the project folder): Prefect's sync engine joins its
  heartbeat thread, which sleeps in 1-s steps, at the end of each call;
- `no-heartbeats`: the same with Prefect's heartbeats off for the call
  (`temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})`; the environment cannot say None);
- `migration_flow`: the flow made with the project's own `flows.heartbeats.migration_flow`, where
  that module exists (skipped otherwise).

Also `migrate` on a zero-row PostgreSQL table (`verify: counts`): the flow call's time, the
floor of every migration. Child usage: python -m bench.flow_cost VARIANT
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from statistics import median

STARTED = time.perf_counter()
RUNS = 5
ZERO_ROW_RUNS = 3
TARGET_SECONDS = 0.3
VARIANTS = ("project", "no-heartbeats", "migration_flow")


def child(variant: str) -> None:
    from prefect import flow
    from prefect.settings import get_current_settings

    where: dict = {}

    def empty() -> None:
        return None

    if variant == "migration_flow":
        try:
            import flows.heartbeats
        except ImportError:
            print("BENCH_RESULT " + json.dumps({"missing": True}), flush=True)
            return
        # The project's editable install resolves a module this tree lacks from the install's
        # own folder, so say where it came from.
        where["module"] = flows.heartbeats.__file__
        made = flows.heartbeats.migration_flow(name="bench-empty-migration-flow")(empty)
    else:
        made = flow(name=f"bench-empty-{variant}")(empty)

    heartbeat = {}

    def call() -> float:
        started = time.perf_counter()
        if variant == "no-heartbeats":
            from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                heartbeat["frequency"] = get_current_settings().flows.heartbeat_frequency
                made()
        else:
            heartbeat["frequency"] = get_current_settings().flows.heartbeat_frequency
            made()
        return time.perf_counter() - started

    imported = time.perf_counter() - STARTED
    first, second = call(), call()
    from bench.flow_child import _drain_prefect_workers

    _drain_prefect_workers()
    result = {
        "first": first,
        "second": second,
        "imports": imported,
        "heartbeat_frequency": heartbeat["frequency"],  # as Prefect's engine saw it (the call's settings)
        **where,
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def run_child(variant: str) -> dict:
    from bench.migrate_runs import REPO

    proc = subprocess.run(
        [sys.executable, "-m", "bench.flow_cost", variant], cwd=REPO, capture_output=True, text=True
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(
            f"empty flow ({variant}) failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return json.loads(line.removeprefix("BENCH_RESULT "))


def _spread(values: list[float]) -> str:
    return f"median {median(values):.2f} s ({' / '.join(f'{v:.2f}' for v in values)})"


def measure(stack) -> list:
    from bench.pg_data import source_table
    from bench.pg_to_pg import VERIFY, migrate_table
    from bench.report import Row, met

    rows = []
    for variant in VARIANTS:
        runs = []
        for _ in range(RUNS):
            result = run_child(variant)
            if result.get("missing"):
                break
            runs.append(result)
        if not runs:
            print(f"  {variant}: flows.heartbeats.migration_flow not in this tree; skipped")
            continue
        first, second = [r["first"] for r in runs], [r["second"] for r in runs]
        settings = {
            "project": f"plain @flow, Prefect's heartbeats every {runs[0]['heartbeat_frequency']} s (baseline)",
            "no-heartbeats": "plain @flow, Prefect's heartbeats off (heartbeat_frequency None)",
            "migration_flow": "flows.heartbeats.migration_flow, as migrate, rollback and verify are made",
        }[variant]
        # The target is for the project's flows; the plain @flow rows show what they avoid.
        ours = variant == "migration_flow"
        print(f"  {settings}: first call {_spread(first)}, second call {_spread(second)}")
        rows.append(
            Row(
                f"j: empty @flow, first call in a process ({settings}), {RUNS} runs",
                _spread(first),
                f"second call in the process: {_spread(second)}",
                target=f"<= {TARGET_SECONDS} s" if ours else "-",
                met=met(median(first) <= TARGET_SECONDS) if ours else "-",
            )
        )

    table = source_table(stack, 0)
    zero = [
        migrate_table(stack, table, f"mig_j_zero{i}", 25_000, 2, f"bench-j-zero-{i}", VERIFY)["seconds"]
        for i in range(ZERO_ROW_RUNS)
    ]
    print(f"  migrate, zero rows: {_spread(zero)}")
    rows.append(
        Row(
            f"j: migrate flow call, zero-row PostgreSQL table (verify: {VERIFY}), {ZERO_ROW_RUNS} runs",
            _spread(zero),
        )
    )
    return rows


if __name__ == "__main__":
    child(sys.argv[1])
