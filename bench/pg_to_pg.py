"""(a) PostgreSQL to PostgreSQL: the `migrate` flow (Parquet staging, validation on,
`verify: counts`) against psql's binary COPY pipe and against dlt, each result checked against
the source's checksum.

The issue's targets for (a) were set on figures measured with counts-only checks, before
content verification existed, so (a) runs with `verify: counts`; (f) measures what `content`
adds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable

from bench.migrate_runs import REPO, pg_settings, run_migrate, verified_as, write_migration
from bench.pg_data import SOURCE_SCHEMA, checksum, source_table
from bench.report import Row, met
from bench.stack import BENCH_DB, Stack
from devstack.servers import pg_bin

CONCURRENCY = 2
VERIFY = "counts"  # the mode a, b, d, e and i run with (their targets predate content verification)
DLT_TARGET = 6  # migrate at least this many times faster than dlt
RAW_TARGET = 2.0  # migrate at most this many times the psql pipe's time


def chunk_size_for(rows: int) -> int:
    """About four chunks per million-row table, so two waves at concurrency 2; 25k-250k rows each."""
    return min(250_000, max(25_000, rows // 4))


def migrate_table(
    stack: Stack,
    table: str,
    target_schema: str,
    chunk_size: int,
    concurrency: int,
    job_id: str,
    verify: str | None = None,
    servers_cpu: Callable[[], float] | None = None,
    flow_kwargs: dict | None = None,
) -> dict:
    """Run `migrate` for src.<table> into <target_schema>.<table> (`verify`: the migration's
    setting, its default when None; `servers_cpu`, `flow_kwargs`: see `run_migrate`); the
    result must match the source's checksum exactly, or AssertionError."""
    name = f"bench_{target_schema}"
    path = write_migration(
        stack,
        name,
        {
            "source": pg_settings(stack, schema=SOURCE_SCHEMA),
            "target": pg_settings(stack, schema=target_schema),
            "concurrency": concurrency,
            "tables": [
                {"name": table, "chunk_column": "id", "chunk_size": chunk_size, "primary_key": ["id"]}
            ],
        }
        | ({"verify": verify} if verify else {}),
    )
    result = run_migrate(path, name, job_id, servers_cpu, flow_kwargs)
    result.update(path=str(path), name=name, job_id=job_id, verify=verify or "default")
    if verify:
        verified_as(stack, job_id, verify)  # the setting took effect
    assert_same(stack, f"{SOURCE_SCHEMA}.{table}", f"{target_schema}.{table}")
    return result


def assert_same(stack: Stack, source: str, target: str) -> None:
    want, got = checksum(stack, source), checksum(stack, target)
    if want != got:
        raise AssertionError(f"{target} differs from {source}: (rows, checksum) {got} != {want}")


def psql_pipe(stack: Stack, table: str) -> float:
    """Seconds for `psql \\copy ... to stdout (format binary) | psql \\copy ... from stdin` into raw.<table>."""
    with stack.pg.connect(BENCH_DB) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS raw")
        conn.execute(f"DROP TABLE IF EXISTS raw.{table}")
        conn.execute(f"CREATE TABLE raw.{table} (LIKE {SOURCE_SCHEMA}.{table} INCLUDING ALL)")
    psql = f"{pg_bin('psql')} -X -q -h 127.0.0.1 -p {stack.pg.port} -U postgres -d {BENCH_DB}"
    command = (
        f"{psql} -c '\\copy (select * from {SOURCE_SCHEMA}.{table}) to stdout (format binary)' "
        f"| {psql} -c '\\copy raw.{table} from stdin (format binary)'"
    )
    started = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    seconds = time.perf_counter() - started
    assert_same(stack, f"{SOURCE_SCHEMA}.{table}", f"raw.{table}")
    return seconds


def dlt_copy(stack: Stack, table: str) -> float | None:
    """Seconds for dlt's pipeline.run, or None when dlt is not installed (the `bench` extra)."""
    if importlib.util.find_spec("dlt") is None:
        return None
    dataset = f"dlt_{table}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.dlt_child",
            stack.pg_url(),
            SOURCE_SCHEMA,
            table,
            dataset,
            str(stack.root / "dlt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"dlt failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    # dlt adds _dlt_load_id and _dlt_id: compare the source's columns only.
    columns = "id, created_at, name, category, city, price, quantity, note, attrs, amount"
    got = checksum(stack, f"{dataset}.{table}", columns)
    want = checksum(stack, f"{SOURCE_SCHEMA}.{table}", columns)
    if got[0] != want[0]:
        raise AssertionError(f"dlt loaded {got[0]} rows, the source has {want[0]}")
    if got != want:
        print(f"  note: dlt's copy is not value-for-value equal to the source (checksum {got} != {want})")
    return json.loads(line.removeprefix("BENCH_RESULT "))["seconds"]


def measure(stack: Stack, rows: int) -> list[Row]:
    table = source_table(stack, rows)
    raw = psql_pipe(stack, table)
    print(f"  psql binary COPY pipe: {raw:.1f} s")
    result = migrate_table(
        stack, table, "mig_a", chunk_size_for(rows), CONCURRENCY, f"bench-a-{rows}", VERIFY
    )
    stack.results["a"] = result
    flow = result["seconds"]
    print(
        f"  migrate: {flow:.1f} s in {result['chunks']} chunks, peak RSS {result['max_rss_mb']:.0f} MB "
        f"(export {result['export_seconds']:.1f} s, validate {result['validate_seconds']:.1f} s, "
        f"load+reconcile {result['load_seconds']:.1f} s summed over chunks); checksum equal"
    )
    dlt = dlt_copy(stack, table)
    print(f"  dlt: {'not installed' if dlt is None else f'{dlt:.1f} s'}")
    out = [
        Row(
            f"a: PG->PG migrate (verify: {VERIFY}), {rows:,} rows",
            f"{flow:.1f} s, {rows / flow:,.0f} rows/s",
            f"psql binary pipe {raw:.1f} s, {rows / raw:,.0f} rows/s",
            f"{flow / raw:.2f}x raw's time",
            f"<= {RAW_TARGET:.1f}x raw's time",
            met(flow <= RAW_TARGET * raw),
        ),
    ]
    if dlt is None:
        out.append(Row("a: vs dlt", "dlt not importable: pip install -c constraints.txt -e .[bench]"))
    else:
        out.append(
            Row(
                f"a: PG->PG migrate (verify: {VERIFY}) vs dlt",
                f"{flow:.1f} s",
                f"dlt pyarrow {dlt:.1f} s, {rows / dlt:,.0f} rows/s",
                f"{dlt / flow:.2f}x faster than dlt",
                f">= {DLT_TARGET}x faster than dlt",
                met(dlt >= DLT_TARGET * flow),
            )
        )
    return out
