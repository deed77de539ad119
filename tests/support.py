"""Helpers the tests share: a migrations file per test, and exact source/target comparison."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import yaml

# Tag and string values that line protocol must escape exactly (commas, '=', quotes,
# backslashes, unicode, leading spaces).
NASTY_TAGS = [
    "a, b=c",
    'it\'s "quoted"',
    "back\\slash",
    "two\\\\backslashes",
    "x\\,y",
    "ünïcødé €😀",
    "=leading equals",
    " leading space",
]


def write_migrations(
    path: Path,
    servers: dict,
    pg_database: str,
    tables: list[dict],
    *,
    name: str = "analytics",
    staging: dict | None = None,
    database: str = "ANALYTICS",
    schema: str = "PUBLIC",
    extra: dict | None = None,
    target: dict | None = None,
    source: dict | None = None,
) -> Path:
    spec = {
        "source": {
            "type": "snowflake",
            "account": "fakesnow",
            "user": "fake",
            "password_env": "SNOWFLAKE_PASSWORD",
            "host": "127.0.0.1",
            "port": servers["fakesnow"].port,
            "protocol": "http",
            "database": database,
            "schema": schema,
            "login_timeout": 10,
            **(source or {}),
        },
        "target": {
            "type": "postgres",
            "host": "127.0.0.1",
            "port": servers["pg"].port,
            "dbname": pg_database,
            "user": "postgres",
            "password_env": "PGPASSWORD",
            "schema": "analytics",
            **(target or {}),
        },
        "staging": staging or {"type": "local", "path": str(path.parent / "staging")},
        "retries": {"attempts": 1, "delay_seconds": 0.1, "jitter": 0.1},
        "tables": tables,
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump({"migrations": {name: spec}}, sort_keys=False))
    return path


def staged_files(staging: Path, job_id: str) -> dict[str, tuple[int, int]]:
    """chunk id -> (inode, mtime in ns) of each staged file of a job: an export writes a new
    file and renames it into place, so a chunk exported again shows a new inode."""
    return {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (staging / job_id).glob("*/*.parquet")}


class _FloatSpecial:
    """A float that == cannot tell apart as it is: NaN (unequal even to itself) or -0.0 (equal
    to 0.0). Equal only to the same special."""

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FloatSpecial) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return self.name


NAN = _FloatSpecial("nan")
NEGATIVE_ZERO = _FloatSpecial("-0.0")
# Decimal.normalize in the default context rounds to 28 digits; NUMBER(38,37) has 38.
_EXACT = Context(prec=100)


def normalise(value: Any) -> Any:
    """One comparable form per value: binary as bytes, Decimal normalised with every digit kept,
    NaN (float or Decimal) as `NAN` and float -0.0 as `NEGATIVE_ZERO`, so both compare equal to
    themselves only."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, Decimal):
        return NAN if value.is_nan() else value.normalize(_EXACT)
    if isinstance(value, float):
        if math.isnan(value):
            return NAN
        if value == 0 and math.copysign(1.0, value) < 0:
            return NEGATIVE_ZERO
    return value


def source_rows(
    snowflake_kwargs: dict,
    database: str,
    schema: str,
    table: str,
    order_by: str,
    json_columns: set[str] = frozenset(),
) -> tuple[list[str], list[tuple]]:
    import snowflake.connector

    conn = snowflake.connector.connect(**snowflake_kwargs, database=database, schema=schema)
    try:
        cur = conn.cursor()
        qualified = ".".join(quoted(name) for name in (database, schema, table))
        cur.execute(f"SELECT * FROM {qualified} ORDER BY {quoted(order_by)}")
        names = [d[0].lower() for d in cur.description]
        rows = cur.fetchall()
    finally:
        conn.close()
    json_idx = {names.index(c.lower()) for c in json_columns}
    return names, [
        tuple(json.loads(v) if i in json_idx and v is not None else normalise(v) for i, v in enumerate(row))
        for row in rows
    ]


def quoted(identifier: str) -> str:
    """A double-quoted SQL identifier (Snowflake's and PostgreSQL's rule: quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def target_rows(connect, table: str, names: list[str], order_by: str) -> list[tuple]:
    """The target's rows in `table` (SQL as written, e.g. `analytics.customers`; use
    `quoted` for names that need quoting), columns `names`, ordered by `order_by`."""
    cols = ", ".join(quoted(n) for n in names)
    with connect() as conn:
        rows = conn.execute(f"SELECT {cols} FROM {table} ORDER BY {quoted(order_by)}").fetchall()
    return [tuple(normalise(v) for v in row) for row in rows]


def assert_same_rows(source: list[tuple], target: list[tuple], names: list[str]) -> None:
    """Every row and every value equal; on failure, name the first differing row and column."""
    assert len(target) == len(source), f"target has {len(target)} rows, source {len(source)}"
    for i, (s, t) in enumerate(zip(source, target, strict=True)):
        if s != t:
            diffs = [(n, a, b) for n, a, b in zip(names, s, t, strict=True) if a != b]
            raise AssertionError(f"row {i} differs (column, source, target): {diffs[:5]}")


@contextmanager
def own_snowflake_database(snowflake_kwargs: dict) -> Iterator[tuple[str, Callable[..., Any]]]:
    """A fresh Snowflake database (schema PUBLIC) on the session's fakesnow server, for one test
    to create and change tables in. Yields its name and `run(sql, params=None)`, which runs one
    statement in it and returns the cursor."""
    import snowflake.connector

    database = "SRC_" + secrets.token_hex(4).upper()
    conn = snowflake.connector.connect(**snowflake_kwargs)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {database}")
        cur.execute(f"CREATE SCHEMA {database}.PUBLIC")
        cur.execute(f"USE SCHEMA {database}.PUBLIC")

        def run(sql: str, params: Any = None):
            cur.execute(sql, params)
            return cur

        yield database, run
    finally:
        conn.close()


def target_tables(connect) -> dict[tuple[str, str], int]:
    """(schema, table) -> row count of every table outside the ledger and the catalogs."""
    with connect() as conn:
        names = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema "
            "NOT IN ('pg_catalog', 'information_schema', 'migration_status')"
        ).fetchall()
        return {
            (schema, name): conn.execute(f"SELECT count(*) FROM {quoted(schema)}.{quoted(name)}").fetchone()[
                0
            ]
            for schema, name in names
        }


def snowflake_source(servers: dict, database: str, schema: str = "PUBLIC") -> dict:
    """The `source:` settings of a migration that reads `database`.`schema` on the session's fakesnow."""
    return {
        "type": "snowflake",
        "account": "fakesnow",
        "user": "fake",
        "password_env": "SNOWFLAKE_PASSWORD",
        "host": "127.0.0.1",
        "port": servers["fakesnow"].port,
        "protocol": "http",
        "database": database,
        "schema": schema,
        "login_timeout": 10,
    }


def events_migrations(path: Path, servers: dict, pg_database: str, concurrency: int) -> Path:
    """The demo EVENTS table into `pg_database`, in chunks of 10,000 keys."""
    return write_migrations(
        path,
        servers,
        pg_database,
        tables=[
            {"name": "EVENTS", "chunk_column": "EVENT_ID", "chunk_size": 10_000, "primary_key": ["EVENT_ID"]}
        ],
        extra={"concurrency": concurrency},
    )


def postgres_target_migrations(
    path: Path, servers: dict, pg_database: str, tables: list[dict], *, source: dict, name: str
) -> Path:
    """A migrations file with one migration from any `source:` into schema `analytics` of
    `pg_database` on the session's PostgreSQL (`write_migrations` starts from a Snowflake
    source, whose keys other sources refuse)."""
    path = write_migrations(path, servers, pg_database, tables, name=name, extra={"concurrency": 2})
    spec = yaml.safe_load(path.read_text())
    spec["migrations"][name]["source"] = source
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def timestream_settings(servers, database: str, **extra) -> dict:
    """The `source:` settings of a migration that reads Timestream `database` on the session's moto."""
    return {
        "type": "timestream",
        "database": database,
        "region": "us-east-1",
        "endpoint_url": f"http://127.0.0.1:{servers['moto'].port}",
        "access_key_id_env": "AWS_ACCESS_KEY_ID",
        "secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
        "page_rows": 40,
        **extra,
    }
