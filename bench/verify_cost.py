"""(f, g) What content verification costs: the same migration with `verify: content` and with
`verify: counts`, alternated in one run (counts, content, content, counts, counts, content)
after a warm-up run that is not counted, so drift in the machine's load falls on both sides
alike.

f  PostgreSQL -> PostgreSQL, as (a): the load transaction reads its rows back before commit.
g  Parquet -> InfluxDB 1.x, as (b): each chunk's points are read back after the write.

Every copy is checked against its source as in (a) and (b), and the ledger must record that
each chunk was verified the way the run asked (a setting the code ignored would show)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from statistics import mean

from bench import cpu, influx_points
from bench.migrate_runs import verified_as
from bench.pg_data import source_table
from bench.pg_to_pg import CONCURRENCY, chunk_size_for, migrate_table
from bench.report import Row, met
from bench.stack import BENCH_DB, Stack
from devstack.servers import influxql

MODES = ("counts", "content")
REPEATS = 3  # counted runs of each mode: counts, content | content, counts | counts, content
PG_TARGET = 1.3  # the bound: content verification at most 1.3x the time without it
LARGE = 1.5  # an InfluxDB ratio above this is called out


def measure_pg(stack: Stack, rows: int) -> list[Row]:
    table = source_table(stack, rows)

    def one(mode: str, tag: str) -> dict:
        schema = f"mig_f_{mode}_{tag}"
        job_id = f"bench-f-{mode}-{rows}-{tag}"
        servers = partial(cpu.postgres_seconds, stack)
        result = migrate_table(stack, table, schema, chunk_size_for(rows), CONCURRENCY, job_id, mode, servers)
        with stack.pg.connect(BENCH_DB) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # checked; later runs start alike
        return result

    times = _alternate(one, stack, "checksum equal")
    return [_row(f"f: PG->PG content verification, {rows:,} rows", times, PG_TARGET)]


def measure_points(stack: Stack, n: int) -> list[Row]:
    location = influx_points.stage_files(stack, influx_points.points_table(n))

    def one(mode: str, tag: str) -> dict:
        database = f"mig_g_{mode}_{tag}"
        servers = partial(cpu.seconds, stack, cpu.influxdb_seconds, cpu.postgres_seconds)  # and the ledger
        result = influx_points.migrate_points(
            stack, location, database, f"bench-g-{mode}-{n}-{tag}", mode, servers
        )
        influxql(stack.influx, f'DROP DATABASE "{database}"')
        return result

    times = _alternate(one, stack, f"{n:,} points stored")
    return [_row(f"g: Parquet->InfluxDB content verification, {n:,} points", times, None)]


def _alternate(one: Callable[[str, str], dict], stack: Stack, checked: str) -> dict[str, list[dict]]:
    """`one(mode, tag)` for each mode REPEATS times, alternating which goes first, after one
    run that is not counted: the first run after the data was made is the slowest (caches)."""
    warm = one(MODES[0], "warm")
    print(f"  warm-up ({MODES[0]}, not counted): {warm['seconds']:.1f} s; {checked}", flush=True)
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(REPEATS):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            result = one(mode, str(i))
            recorded = verified_as(stack, result["job_id"], mode)
            runs[mode].append(result)
            print(
                f"  verify: {mode}: {result['seconds']:.1f} s, body {result['body_seconds']:.1f} s "
                f"(load+reconcile {result['load_seconds']:.1f} s "
                f"summed over {result['chunks']} chunks), CPU {_cpu(result):.1f} s (flow "
                f"{result['cpu_seconds']:.1f} + servers {result['servers_cpu_seconds']:.1f}); {checked}; "
                f"ledger: verified {recorded}",
                flush=True,
            )
    return runs


def _row(measure: str, runs: dict[str, list[dict]], target: float | None) -> Row:
    content = [r["seconds"] for r in runs["content"]]
    counts = [r["seconds"] for r in runs["counts"]]
    ratio = mean(content) / mean(counts)
    body = _ratio(runs, lambda r: r["body_seconds"])
    cpu_ratio = _ratio(runs, _cpu)
    print(
        f"  content / counts: {ratio:.2f}x the time, {body:.2f}x the flow body's time, "
        f"{cpu_ratio:.2f}x the CPU (flow and servers)"
    )
    return Row(
        measure,
        f"content {_spread(content)}",
        f"counts {_spread(counts)}",
        f"{ratio:.2f}x counts' time (body {body:.2f}x, CPU {cpu_ratio:.2f}x)",
        f"<= {target:.2f}x" if target else f"reported (large above {LARGE:.1f}x)",
        met(ratio <= target) if target else "-",
    )


def _ratio(runs: dict[str, list[dict]], of: Callable[[dict], float]) -> float:
    return mean(map(of, runs["content"])) / mean(map(of, runs["counts"]))


def _cpu(result: dict) -> float:
    return result["cpu_seconds"] + result["servers_cpu_seconds"]


def _spread(seconds: list[float]) -> str:
    return f"{mean(seconds):.1f} s ({' / '.join(f'{s:.1f}' for s in seconds)})"
