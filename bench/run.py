"""The migration benchmark: private servers, generated data, and the `migrate` flow side by side
with the plain tools, in one run.

    .venv/bin/python -m bench.run [--rows 1000000] [--big-rows 5000000] [--ts-points 10000000]
                                  [--only a,b,c,d,e,f,g,h,i,j] [--quick]

a  PostgreSQL -> PostgreSQL (verify: counts): migrate vs psql's binary COPY pipe vs dlt (checksums compared)
b  Parquet -> InfluxDB 1.x (verify: counts): migrate vs precomputed line protocol, 10k-line POSTs,
   2 writers; both databases read back and compared value by value afterwards
c  peak RSS of the flow process at --rows and at --big-rows (the default verify: content)
d  orchestration overhead per chunk (verify: counts)
e  rerun of (a)'s completed job vs its first run (verify: counts)
f  PostgreSQL -> PostgreSQL as a, with `verify: content` vs `verify: counts`, alternated (3 runs each)
g  Parquet -> InfluxDB as b, with `verify: content` vs `verify: counts`, alternated (3 runs each)
h  Timestream UNLOAD (S3 on moto) -> InfluxDB 1.x, --ts-points points in 10 chunks (verify: counts):
   points/s, GB/h of line protocol and peak RSS, vs the raw line-protocol writer of b
i  a's migration with its chunks on a local Dask cluster (2 worker processes) vs on threads
j  fixed cost of one flow run: an empty @flow (5 runs per variant), and migrate on zero rows

a, b, d and e run with `verify: counts` because their targets were set on such runs, before
content verification existed. Every migrated table is compared with its source through a
checksum over all columns, every InfluxDB database with its source point by point or (h's
unchecked chunks, if any) by counts per series; a mismatch fails the run. Timings belong
here, never in tests/.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

from bench import (
    flow_cost,
    influx_points,
    memory,
    migrate_runs,
    overhead,
    pg_to_pg,
    rerun,
    scale_out,
    timestream_unload,
    verify_cost,
)
from bench.report import Row, machine, markdown
from bench.stack import start_stack

OVERHEAD_ROWS = 100_000  # (d): 100 chunks of 1,000 rows against one chunk
MEASUREMENTS = "abcdefghij"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for a, b, c, e, f, g and i")
    parser.add_argument("--big-rows", type=int, default=5_000_000, help="the larger table for c")
    parser.add_argument("--ts-points", type=int, default=10_000_000, help="points for h")
    parser.add_argument(
        "--ts-full-check",
        action="store_true",
        help="h: read every chunk back value by value (default: all up to 2M points, else 2 chunks)",
    )
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help="comma-separated measurements to run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 100k rows, 300k for c and h, 30 chunks for d",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy samples per flow run in bench/out/ (pip install py-spy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' temp folder")
    parser.add_argument("--markdown", help="also write the table and machine line to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.big_rows, args.ts_points = 100_000, 300_000, 300_000
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s) {sorted(unknown)}; choose from {','.join(MEASUREMENTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        migrate_runs.PROFILE_DIR = Path(__file__).resolve().parent / "out"
    started = time.perf_counter()
    where = machine()
    print(f"machine: {where}")
    stack = start_stack()
    print(f"servers up in {time.perf_counter() - started:.0f} s under {stack.root}")
    steps = {
        "a": lambda: pg_to_pg.measure(stack, args.rows),
        "b": lambda: influx_points.measure(stack, args.rows),
        "c": lambda: memory.measure(stack, args.rows, args.big_rows),
        "d": lambda: overhead.measure(stack, 30_000 if args.quick else min(args.rows, OVERHEAD_ROWS)),
        "e": lambda: rerun.measure(stack, args.rows),
        "f": lambda: verify_cost.measure_pg(stack, args.rows),
        "g": lambda: verify_cost.measure_points(stack, args.rows),
        "h": lambda: timestream_unload.measure(stack, args.ts_points, args.ts_full_check),
        "i": lambda: scale_out.measure(stack, args.rows),
        "j": lambda: flow_cost.measure(stack),
    }
    rows: list[Row] = []
    failed = False
    try:
        for name in args.only:
            print(f"({name}) ...", flush=True)
            step_started = time.perf_counter()
            try:
                rows += steps[name]()
            except Exception as exc:
                failed = True
                traceback.print_exc()
                rows.append(Row(f"{name}: FAILED", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
            print(f"({name}) took {time.perf_counter() - step_started:.0f} s", flush=True)
    finally:
        stack.stop(keep=args.keep)
    table = markdown(rows)
    print(f"\n{where}; whole run {time.perf_counter() - started:.0f} s\n\n{table}")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(f"{where}; whole run {time.perf_counter() - started:.0f} s\n\n{table}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
