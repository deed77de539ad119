"""(c) Peak RSS of the migration process (its own ru_maxrss) for the 1M-row and the 5M-row table,
with the same chunk size: streaming chunk by chunk, memory should not grow with the table.
Both run with the migration's default verification (`verify: content`); (a) now runs with
`verify: counts`, so c does not reuse (a)'s run."""

from __future__ import annotations

from bench.pg_data import source_table
from bench.pg_to_pg import CONCURRENCY, chunk_size_for, migrate_table
from bench.report import Row, met
from bench.stack import Stack

LIMIT_MB = 600


def measure(stack: Stack, rows: int, big_rows: int) -> list[Row]:
    chunk_size = chunk_size_for(rows)
    peaks = {}
    for n, schema in ((rows, "mig_c_small"), (big_rows, "mig_c_big")):
        result = migrate_table(stack, source_table(stack, n), schema, chunk_size, CONCURRENCY, f"bench-c-{n}")
        peaks[n] = result["max_rss_mb"]
        print(
            f"  {n:,} rows in {result['chunks']} chunks: peak RSS {peaks[n]:.0f} MB, {result['seconds']:.1f} s"
        )
    growth = peaks[big_rows] / peaks[rows]
    return [
        Row(
            f"c: peak RSS, {rows:,} rows",
            f"{peaks[rows]:.0f} MB",
            target=f"< {LIMIT_MB} MB",
            met=met(peaks[rows] < LIMIT_MB),
        ),
        Row(
            f"c: peak RSS, {big_rows:,} rows",
            f"{peaks[big_rows]:.0f} MB",
            f"{peaks[rows]:.0f} MB at {rows:,}",
            f"{growth:.2f}x",
            f"<= 1.20x and < {LIMIT_MB} MB",
            met(growth <= 1.2 and peaks[big_rows] < LIMIT_MB),
        ),
    ]
