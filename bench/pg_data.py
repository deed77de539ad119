"""The 10-column PostgreSQL source table, generated server-side, and an exact checksum over it."""

from __future__ import annotations

import time

from bench.stack import BENCH_DB, Stack

SOURCE_SCHEMA = "src"

COLUMNS = """
    id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    name text NOT NULL,
    category text NOT NULL,
    city text NOT NULL,
    price double precision NOT NULL,
    quantity integer NOT NULL,
    note text,
    attrs jsonb NOT NULL,
    amount numeric(18,4) NOT NULL
"""

# Full-precision doubles, microsecond times, one NULL note in seven, nested JSON: a load that
# rounds, truncates or reorders anything changes the checksum.
ROWS = """
SELECT g,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' + (g % 997) * interval '1 microsecond',
       'name-' || md5(g::text),
       (ARRAY['books', 'games', 'garden', 'tools', 'toys'])[1 + g % 5],
       'city ' || (g % 997) || ', "quoted"',
       sin(g) * 1e6,
       (g % 100000)::integer,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g END,
       jsonb_build_object('k', g % 13, 'tags', jsonb_build_array('a', g % 3), 'ok', g % 2 = 0),
       ((g::numeric * 7919.1234) % 1e13)::numeric(18,4)
FROM generate_series(1, {rows:d}) AS g
"""


def source_table(stack: Stack, rows: int) -> str:
    """`src.items_<rows>`, created once per run; returns its name (without the schema)."""
    table = f"items_{rows}"
    made = stack.results.setdefault("source_tables", {})
    if table in made:
        return table
    started = time.perf_counter()
    with stack.pg.connect(BENCH_DB) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SOURCE_SCHEMA}")
        conn.execute(f"DROP TABLE IF EXISTS {SOURCE_SCHEMA}.{table}")
        conn.execute(f"CREATE TABLE {SOURCE_SCHEMA}.{table} ({COLUMNS})")
        conn.execute(f"INSERT INTO {SOURCE_SCHEMA}.{table} " + ROWS.format(rows=rows))
        conn.execute(f"ALTER TABLE {SOURCE_SCHEMA}.{table} ADD PRIMARY KEY (id)")
        conn.execute(f"VACUUM ANALYZE {SOURCE_SCHEMA}.{table}")
        size = conn.execute(f"SELECT pg_total_relation_size('{SOURCE_SCHEMA}.{table}')").fetchone()[0]
    made[table] = size
    print(
        f"  generated {SOURCE_SCHEMA}.{table}: {rows:,} rows, {size / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s"
    )
    return table


def checksum(stack: Stack, qualified: str, columns: str = "*") -> tuple[int, int]:
    """(rows, sum of a 64-bit hash of each row's text): order-independent, over every column.

    Two tables agree only if each holds the same rows with the same text form of every value
    (same types, scales and time zone), so a lossy or duplicated load shows."""
    with stack.pg.connect(BENCH_DB) as conn:
        count, total = conn.execute(
            f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
            f"FROM (SELECT {columns} FROM {qualified}) AS t"
        ).fetchone()
    return count, int(total)
