"""Helpers the tests share: a migrations file per test, and exact source/target comparison."""

from __future__ import annotations

import json
from decimal import Decimal
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


def normalise(value: Any) -> Any:
    """One comparable form per value: JSON text parsed, binary as bytes, Decimal normalised."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, Decimal):
        return value.normalize() if value == value else value
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
        cur.execute(f'SELECT * FROM "{database}"."{schema}"."{table}" ORDER BY "{order_by}"')
        names = [d[0].lower() for d in cur.description]
        rows = cur.fetchall()
    finally:
        conn.close()
    json_idx = {names.index(c.lower()) for c in json_columns}
    return names, [
        tuple(json.loads(v) if i in json_idx and v is not None else normalise(v) for i, v in enumerate(row))
        for row in rows
    ]


def target_rows(connect, table: str, names: list[str], order_by: str) -> list[tuple]:
    cols = ", ".join(f'"{n}"' for n in names)
    with connect() as conn:
        rows = conn.execute(f'SELECT {cols} FROM {table} ORDER BY "{order_by}"').fetchall()
    return [tuple(normalise(v) for v in row) for row in rows]


def assert_same_rows(source: list[tuple], target: list[tuple], names: list[str]) -> None:
    """Every row and every value equal; on failure, name the first differing row and column."""
    assert len(target) == len(source), f"target has {len(target)} rows, source {len(source)}"
    for i, (s, t) in enumerate(zip(source, target, strict=True)):
        if s != t:
            diffs = [(n, a, b) for n, a, b in zip(names, s, t, strict=True) if a != b]
            raise AssertionError(f"row {i} differs (column, source, target): {diffs[:5]}")
