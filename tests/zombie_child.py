"""A flow process to be killed: it runs a flow that only waits, and sends heartbeats meanwhile.

    python -m tests.zombie_child FLOW_NAME TAG                    (a new run, as from Python)
    python -m tests.zombie_child FLOW_NAME --flow-run FLOW_RUN_ID (a deployment's run, as a worker's process)

The flow is named FLOW_NAME (`migrate` stands in for the migration flow: the zombie automation
picks flow runs by their flow's name) and waits an hour for the caller's kill -9. A new run is
tagged TAG, for the caller to find it by. A new run sends the project's heartbeats
(`flows.heartbeats`, every 30 s); a deployment's run sends Prefect's, every
PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds in the caller's environment.
"""

from __future__ import annotations

import sys
import time


def wait() -> None:
    time.sleep(3600)


def main(flow_name: str, tag: str | None = None, flow_run_id: str | None = None) -> None:
    from prefect import tags
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.heartbeats import MigrationFlow

    # As the migration flows are made: a call sends the project's heartbeats, a deployment's
    # run (run_flow) Prefect's own.
    flow = MigrationFlow(wait, name=flow_name)
    if flow_run_id is None:
        with tags(tag):
            flow()
        return
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    run_flow(flow, flow_run=flow_run)


if __name__ == "__main__":
    match sys.argv[1:]:
        case [flow_name, "--flow-run", flow_run_id]:
            main(flow_name, flow_run_id=flow_run_id)
        case [flow_name, tag]:
            main(flow_name, tag=tag)
        case _:
            raise SystemExit(__doc__)
