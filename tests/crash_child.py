"""Run the `migrate` flow in this process and kill it with SIGKILL at one point of one chunk.

    python -m tests.crash_child MIGRATIONS_FILE SOURCE_NAME JOB_ID POINT CHUNK_SELECTOR [START END]

POINT is where the process dies, CHUNK_SELECTOR the prefix of the chunk id it dies in ("00002"
is the third chunk of a table), START and END the flow's start_time and end_time (a rerun of
the job passes the same). The points:

- `export`: inside the staging write, once the Parquet writer has taken the chunk's first
  batch (the `<chunk>.parquet.partial` file exists, the final file does not); a source that
  stages by reference (Parquet files) dies once it has handed over the chunk's reference;
- `load`: PostgreSQL: the COPY is done, its transaction not committed (just before
  `pg_ledger.mark_chunk_loaded`); InfluxDB: the chunk's first write request was answered;
- `commit`: the chunk's load is committed (PostgreSQL: `load_manifest` returned; InfluxDB: the
  ledger marked the chunk loaded) and Prefect has not persisted the chunk's result yet;
- `validate`: the chunk's validation ran, and its manifest was not handed back yet.

Where the two target kinds differ (`load`, `commit`) both functions are patched; only the
one of the migration's target is ever reached. Before dying the process writes `CRASH_CHILD killed at ...` to stderr. If
the migration ends without reaching the point, it prints `CRASH_CHILD not reached` and exits 3.
Run from the repo root; the environment (PREFECT_API_URL, passwords) is the caller's.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

POINTS = ("export", "load", "commit", "validate")


def die(point: str, chunk_id: str) -> None:
    """SIGKILL this process: no cleanup, no flush, no finally blocks, as a power cut would."""
    os.write(2, f"CRASH_CHILD killed at {point} of chunk {chunk_id}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, selected: Callable[[str], bool]) -> None:
    """Patch the functions of `point` so that the selected chunk dies there."""
    if point == "export":
        from blocks.staging.local import LocalStaging

        real_write = LocalStaging.write

        def write(self, key, schema, batches):
            chunk_id = Path(key).name.split(".", 1)[0]
            if selected(chunk_id):
                batches = _die_after_first(batches, point, chunk_id)
            return real_write(self, key, schema, batches)

        LocalStaging.write = write
        from tasks import export

        real_reference = export.reference_chunk

        def reference_chunk(source, plan, chunk, schema, started):
            staged = real_reference(source, plan, chunk, schema, started)
            if selected(chunk.chunk_id):
                die(point, chunk.chunk_id)
            return staged

        export.reference_chunk = reference_chunk
    elif point == "load":
        from blocks.influxdb.target import InfluxDBTarget
        from blocks.postgres import ledger as pg_ledger

        real_mark = pg_ledger.mark_chunk_loaded

        def mark_chunk_loaded(conn, job_id, table, chunk_id, *args, **kwargs):
            if selected(chunk_id):
                die(point, chunk_id)
            return real_mark(conn, job_id, table, chunk_id, *args, **kwargs)

        pg_ledger.mark_chunk_loaded = mark_chunk_loaded
        real_send = InfluxDBTarget._send

        def send(self, wire, body, lines, label, turn):
            sent = real_send(self, wire, body, lines, label, turn)
            chunk_id = label.rsplit("/", 1)[-1]
            if selected(chunk_id):
                die(point, chunk_id)
            return sent

        InfluxDBTarget._send = send
    elif point == "commit":
        from blocks.postgres.ledger_store import PostgresLedger
        from tasks import load

        real_load = load.load_manifest

        def load_manifest(spec, job_id, plan, chunk, manifest):
            loaded = real_load(spec, job_id, plan, chunk, manifest)
            if selected(chunk.chunk_id):
                die(point, chunk.chunk_id)
            return loaded

        load.load_manifest = load_manifest
        real_written = PostgresLedger.mark_chunk_written

        def mark_chunk_written(self, job_id, table, chunk_id, *args, **kwargs):
            real_written(self, job_id, table, chunk_id, *args, **kwargs)
            if selected(chunk_id):
                die(point, chunk_id)

        PostgresLedger.mark_chunk_written = mark_chunk_written
    elif point == "validate":
        from tasks import pipeline

        real_validate = pipeline.validate_staged_chunk

        def validate_staged_chunk(spec, job_id, plan, chunk, staged):
            manifest = real_validate(spec, job_id, plan, chunk, staged)
            if selected(chunk.chunk_id):
                die(point, chunk.chunk_id)
            return manifest

        pipeline.validate_staged_chunk = validate_staged_chunk
    else:
        raise SystemExit(f"unknown point {point!r}: use one of {', '.join(POINTS)}")


def _die_after_first(batches: Iterable, point: str, chunk_id: str) -> Iterator:
    """The first batch, then death when the writer asks for the next one (or for the end)."""
    for batch in batches:
        yield batch
        break
    die(point, chunk_id)


def main(
    migrations_file: str,
    source_name: str,
    job_id: str,
    point: str,
    chunk_selector: str,
    start_time: str | None = None,
    end_time: str | None = None,
) -> None:
    arm(point, lambda chunk_id: chunk_id.startswith(chunk_selector))
    from flows.migrate import migrate

    report = migrate(
        source_name=source_name,
        job_id=job_id,
        migrations_file=migrations_file,
        start_time=start_time,
        end_time=end_time,
    )
    print(f"CRASH_CHILD not reached: the job ended {report.status}", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main(*sys.argv[1:])
