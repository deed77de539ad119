"""(i) Scale-out measured: (a)'s workload (PostgreSQL -> PostgreSQL, `verify: counts`,
concurrency 2) with its chunks on a local Dask cluster of 2 single-threaded worker processes
(`dask_address`), against the same migration on the flow's threads (the plain (a) run when
it ran in this bench, else a run of its own). Both copies must match the source's checksum,
and the Dask run's chunks must have run in the workers (their pids, from the flow's report).

The workers inherit this process's environment (PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH,
the secrets: bench.stack put them in os.environ) and import the project from PYTHONPATH, as
the README's "Scaling out" section asks of Dask workers. The workers import the flow's modules
first; then the migration runs twice on the same cluster: the first run on fresh workers pays
each worker's first task run (Prefect's task engine and the chunk's own imports in a new
process), the second is the one compared, as a long-lived cluster runs it. On a 2-core machine that also runs
the servers no speedup is expected; the row shows what fanning out costs or gains."""

from __future__ import annotations

import logging
import os
import threading

from bench.migrate_runs import REPO
from bench.pg_data import source_table
from bench.pg_to_pg import CONCURRENCY, VERIFY, chunk_size_for, migrate_table
from bench.report import Row
from bench.stack import Stack

WORKERS = 2


def _import_project() -> None:
    """Run in each worker before the timed run: a long-lived cluster has imported the flow's
    modules long before, so the import (seconds per process here) is not what scale-out costs."""
    import flows.migrate  # noqa: F401


def _send_queued_prefect_logs_and_events() -> None:
    """Run in each worker before it stops (as tests/test_dask.py does), so nothing queued is lost.
    In a thread of its own: in the worker's event loop, `drain_all` would only make a coroutine."""

    def drain() -> None:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=10)

    thread = threading.Thread(target=drain)
    thread.start()
    thread.join()


def measure(stack: Stack, rows: int) -> list[Row]:
    from distributed import Client, LocalCluster

    table = source_table(stack, rows)
    threads = stack.results.get("a")
    if threads is None or threads.get("verify") != VERIFY:
        threads = migrate_table(
            stack,
            table,
            "mig_i_threads",
            chunk_size_for(rows),
            CONCURRENCY,
            f"bench-i-threads-{rows}",
            VERIFY,
        )
        print(f"  threads: {threads['seconds']:.1f} s (a run of its own)")
    else:
        print(f"  threads: {threads['seconds']:.1f} s ((a)'s run)")

    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "DASK_LOGGING__DISTRIBUTED")}
    path = saved["PYTHONPATH"]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([path] if path else [])])
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"  # the workers' start and stop, line by line
    logging.getLogger("distributed").setLevel(logging.ERROR)  # Prefect's logging setup lets it through
    try:
        with (
            LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(_import_project)
            runs = {}
            for when in ("fresh", "warm"):  # the first run on new workers, then one on the same workers
                runs[when] = migrate_table(
                    stack,
                    table,
                    f"mig_i_dask_{when}",
                    chunk_size_for(rows),
                    CONCURRENCY,
                    f"bench-i-dask-{when}-{rows}",
                    VERIFY,
                    flow_kwargs={"dask_address": cluster.scheduler_address},
                )
            client.run(_send_queued_prefect_logs_and_events)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    for when, run in runs.items():
        if run["pid"] in run["chunk_pids"]:
            raise AssertionError(
                f"chunks ran in the flow's process {run['pid']}, not on Dask: {run['chunk_pids']}"
            )
        print(
            f"  Dask ({WORKERS} worker processes, {when}): {run['seconds']:.1f} s in {run['chunks']} chunks, "
            f"run by worker pids {run['chunk_pids']}; checksum equal"
        )
    dask, fresh = runs["warm"], runs["fresh"]
    ratio = dask["seconds"] / threads["seconds"]
    return [
        Row(
            f"i: (a) on a local Dask cluster ({WORKERS} worker processes, 1 thread each; "
            f"verify: {VERIFY}), {rows:,} rows",
            f"{dask['seconds']:.1f} s, {rows / dask['seconds']:,.0f} rows/s (the cluster's second run; "
            f"its first, on fresh workers: {fresh['seconds']:.1f} s)",
            f"threads {threads['seconds']:.1f} s, {rows / threads['seconds']:,.0f} rows/s",
            f"{ratio:.2f}x threads' time (first run {fresh['seconds'] / threads['seconds']:.2f}x)",
            f"reported ({os.cpu_count()} CPUs: no speedup expected)",
        )
    ]
