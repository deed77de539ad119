"""Run the `migrate` flow once in this process and print one JSON line: its time and peak RSS.

    python -m bench.flow_child MIGRATIONS_FILE SOURCE_NAME JOB_ID [FLOW_KWARGS_JSON]

FLOW_KWARGS_JSON: more keyword arguments of `migrate` (start_time, end_time, dask_address).

The flow runs in a process of its own so that its peak RSS (ru_maxrss) is the migration's
alone. `seconds` is the wall time of the flow call, without the interpreter start and imports,
which `process_seconds` includes; `cpu_seconds` is the CPU time of the flow call (all threads);
`body_seconds` the flow function's own time as its report gives it, without the Prefect
engine's start and end (whose heartbeat thread ends in whole seconds, so `seconds` moves in
steps of about 1 s).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

STARTED = time.perf_counter()


def main(migrations_file: str, source_name: str, job_id: str, flow_kwargs: str = "{}") -> None:
    from flows.migrate import migrate

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    report = migrate(
        source_name=source_name, job_id=job_id, migrations_file=migrations_file, **json.loads(flow_kwargs)
    )
    seconds = time.perf_counter() - started
    _drain_prefect_workers()
    print(
        "BENCH_RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "process_seconds": time.perf_counter() - STARTED,
                "status": report.status,
                "resumed": report.resumed,
                "rows": report.rows,
                "chunks": len(report.chunks),
                "already_loaded": sum(c.already_loaded for c in report.chunks),
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "cpu_seconds": _cpu_seconds() - cpu_started,
                "body_seconds": report.seconds,
                "export_seconds": sum(c.export_seconds for c in report.chunks),
                "validate_seconds": sum(c.validate_seconds for c in report.chunks),
                "load_seconds": sum(c.load_seconds for c in report.chunks),
                "pid": os.getpid(),
                "chunk_pids": sorted({c.pid for c in report.chunks}),
            }
        ),
        flush=True,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


def _drain_prefect_workers() -> None:
    """Send queued logs and events now, so the process exits promptly (as tests/conftest.py does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=30)


if __name__ == "__main__":
    main(*sys.argv[1:])
