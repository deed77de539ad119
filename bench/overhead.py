"""(d) Orchestration overhead per chunk: one table migrated as many small chunks and as one
chunk, one chunk at a time; overhead per chunk = (t_many - t_one) / (n_many - 1).

The one-chunk run is timed twice and the faster counts: the first flow run against a fresh
Prefect server pays for its warm-up (about a second here), which would otherwise come off
t_one and flatter the overhead per chunk. Both run with `verify: counts`, as the target was set on such runs."""

from __future__ import annotations

from bench.pg_data import source_table
from bench.pg_to_pg import VERIFY, migrate_table
from bench.report import Row, met
from bench.stack import Stack

SMALL_CHUNK = 1_000
TARGET_MS = 30


def measure(stack: Stack, rows: int) -> list[Row]:
    table = source_table(stack, rows)
    one = min(
        (
            migrate_table(stack, table, f"mig_d_one{i}", rows, 1, f"bench-d-one{i}-{rows}", VERIFY)
            for i in (1, 2)
        ),
        key=lambda run: run["seconds"],
    )
    many = migrate_table(stack, table, "mig_d_many", SMALL_CHUNK, 1, f"bench-d-many-{rows}", VERIFY)
    n = many["chunks"]
    per_chunk_ms = (many["seconds"] - one["seconds"]) / (n - 1) * 1000
    print(f"  1 chunk: {one['seconds']:.1f} s; {n} chunks: {many['seconds']:.1f} s")
    return [
        Row(
            f"d: overhead per chunk (verify: {VERIFY}; {rows:,} rows: {n} chunks vs 1, concurrency 1)",
            f"{per_chunk_ms:.0f} ms",
            f"1 chunk {one['seconds']:.1f} s, {n} chunks {many['seconds']:.1f} s",
            target=f"<= {TARGET_MS} ms",
            met=met(per_chunk_ms <= TARGET_MS),
        )
    ]
