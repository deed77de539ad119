"""(e) A rerun of a completed job (same job_id) against its first run: every chunk's steps are
found in Prefect's persisted results and skipped, and the target is left exactly as it was.
The job is (a)'s, with `verify: counts` as in (a)."""

from __future__ import annotations

from pathlib import Path

from bench.migrate_runs import run_migrate
from bench.pg_data import SOURCE_SCHEMA, source_table
from bench.pg_to_pg import CONCURRENCY, VERIFY, assert_same, chunk_size_for, migrate_table
from bench.report import Row, met
from bench.stack import Stack

TARGET = 0.10


def measure(stack: Stack, rows: int) -> list[Row]:
    first = stack.results.get("a")
    if first is None:
        first = migrate_table(
            stack,
            source_table(stack, rows),
            "mig_e",
            chunk_size_for(rows),
            CONCURRENCY,
            f"bench-e-{rows}",
            VERIFY,
        )
    again = run_migrate(Path(first["path"]), first["name"], first["job_id"])
    table = f"items_{rows}"
    target = f"{first['name'].removeprefix('bench_')}.{table}"
    assert_same(stack, f"{SOURCE_SCHEMA}.{table}", target)
    if not again["resumed"]:
        raise AssertionError(f"the rerun of job {first['job_id']} did not resume it")
    ratio = again["seconds"] / first["seconds"]
    print(
        f"  first run {first['seconds']:.1f} s, rerun {again['seconds']:.1f} s "
        f"({again['chunks']} chunks reported); target unchanged"
    )
    return [
        Row(
            f"e: rerun of a completed job (verify: {first['verify']}), {rows:,} rows",
            f"{again['seconds']:.1f} s",
            f"first run {first['seconds']:.1f} s",
            f"{ratio:.3f}x",
            f"<= {TARGET:.2f}x",
            met(ratio <= TARGET),
        )
    ]
