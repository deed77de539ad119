"""Test support for the InfluxDB migrations: a migrations file, source records, and the points
InfluxDB should hold, compared value by value with what it does hold."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from tests.influx_readback import field_types, measurements, stored_points
from tests.support import NASTY_TAGS

MEASURES = {  # measure_name -> (Timestream type, value column)
    "generation_mw": ("DOUBLE", "measure_value::double"),
    "units_online": ("BIGINT", "measure_value::bigint"),
    "status": ("VARCHAR", "measure_value::varchar"),
    "curtailed": ("BOOLEAN", "measure_value::boolean"),
}
VALUE_COLUMNS = [column for _, column in MEASURES.values()]
# The energy migrations' usual mapping: the three dimensions as tags, each value column a field.
TAGS = ["region", "plant", "source"]
FIELDS = {c: c for c in VALUE_COLUMNS}
FLOAT_KEYS = {"measure_value::double"}
INFLUX_KIND = {"DOUBLE": "float", "BIGINT": "integer", "VARCHAR": "string", "BOOLEAN": "boolean"}
START = datetime(2024, 3, 1, tzinfo=UTC)
START_NS = 1_709_251_200_000_000_000  # START in nanoseconds


def influx_migrations(
    path: Path,
    servers: dict,
    pg_database: str,
    influx_db: str,
    tables: list[dict],
    *,
    source: dict,
    api: str = "v1",
    name: str = "energy",
    target: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """A migrations file with one InfluxDB migration, its ledger in `pg_database`."""
    if api == "v1":
        influx = {
            "url": servers["influx"].extra["url"],
            "database": influx_db,
            "username": servers["influx"].extra["user"],
            "password_env": "INFLUX_PASSWORD",
        }
    else:
        influx = {
            "url": servers["influx_v2_url"],
            "bucket": influx_db,
            "org": "any",
            "token_env": "INFLUX_TOKEN",
        }
    spec = {
        "source": source,
        "target": {"type": "influxdb", "api": api, **influx, **(target or {})},
        "ledger": {
            "type": "postgres",
            "host": "127.0.0.1",
            "port": servers["pg"].port,
            "dbname": pg_database,
            "user": "postgres",
            "password_env": "PGPASSWORD",
        },
        "staging": {"type": "local", "path": str(path.parent / "staging")},
        "retries": {"attempts": 1, "delay_seconds": 0.1, "jitter": 0.1},
        "tables": tables,
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump({"migrations": {name: spec}}, sort_keys=False))
    return path


def single_measure_records(n: int, days: int = 3, seed: int = 3) -> pa.Table:
    """Timestream single-measure records as UNLOAD or the query API give them: dimensions with
    nasty values, one measure value per row in the column of its type, unique series and time,
    odd nanoseconds."""
    rng = np.random.default_rng(seed)
    index = np.arange(n)
    names = np.array(list(MEASURES), dtype=object)[index % len(MEASURES)]
    plants = np.array([f"plant {k}" for k in range(5)] + NASTY_TAGS, dtype=object)[(index // 4) % 13]
    step = days * 86_400_000_000_000 // n
    times = START_NS + index * step + (index % 997)
    columns: dict[str, pa.Array] = {
        "region": pa.array(np.array(["N", "NE", "SE/CO", "S"], dtype=object)[(index // 52) % 4]),
        "plant": pa.array(plants),
        "source": pa.array(np.array(["hydro", "wind", "solar"], dtype=object)[(index // 7) % 3]),
        "measure_name": pa.array(names),
        "time": pa.array(times, pa.timestamp("ns", tz="UTC")),
    }
    values = {
        "DOUBLE": pa.array(rng.normal(500, 200, n)),
        "BIGINT": pa.array(rng.integers(-(2**62), 2**62, n)),
        "VARCHAR": pa.array(
            np.array(["ok", "maintenance, planned", 'say "hi"', "ünïcødé"], dtype=object)[index % 4]
        ),
        "BOOLEAN": pa.array(rng.random(n) > 0.5),
    }
    for name, (kind, column) in MEASURES.items():
        mask = pa.array(names != name)
        columns[column] = pc.if_else(mask, pa.nulls(n, values[kind].type), values[kind])
    return pa.table(columns)


def write_files(folder: Path, table: pa.Table, files: int = 3) -> None:
    """The table as `files` Parquet files in `folder`, rows shuffled across them."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(1).permutation(table.num_rows)
    for k, part in enumerate(np.array_split(order, files)):
        pq.write_table(table.take(pa.array(part)), folder / f"part-{k}.parquet")


def expected_points(
    table: pa.Table,
    tags: list[str],
    fields: dict[str, str],
    measurement_column: str | None,
    measurement: str | None,
) -> dict[tuple, dict]:
    """{(measurement, sorted non-empty tags, time ns): {field key: value}}; NULL and NaN left out."""
    data = table.to_pydict()
    times = table.column("time").cast(pa.int64()).to_pylist()
    points = {}
    for row in range(table.num_rows):
        name = data[measurement_column][row] if measurement_column else measurement
        key_tags = tuple(sorted((t, data[t][row]) for t in tags if data[t][row] not in (None, "")))
        values = {}
        for column, key in fields.items():
            value = data[column][row]
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            values[key] = value
        if values:
            points[(name, key_tags, times[row])] = values
    return points


def stored(servers, db: str) -> tuple[dict[tuple, dict], dict[str, dict[str, str]]]:
    """Every point InfluxDB holds in `db`, keyed like `expected_points`, and the field types."""
    points, types = {}, {}
    for name in measurements(servers, db):
        for (tags, ns), values in stored_points(servers, db, name).items():
            points[(name, tags, ns)] = values
        types[name] = field_types(servers, db, name)
    return points, types


def assert_same_points(got: dict[tuple, dict], want: dict[tuple, dict], float_keys: set[str]) -> None:
    """Every point, tag, field and nanosecond time equal, with the value's type kept."""
    missing, extra = want.keys() - got.keys(), got.keys() - want.keys()
    assert not missing and not extra, f"missing {list(missing)[:3]}, unexpected {list(extra)[:3]}"
    for key, values in want.items():
        row = got[key]
        assert row.keys() == values.keys(), (key, row, values)
        for name, value in values.items():
            if name in float_keys:  # JSON drops the ".0" of whole floats; SHOW FIELD KEYS has the type
                assert not isinstance(row[name], bool) and float(row[name]) == value, (
                    key,
                    name,
                    row[name],
                    value,
                )
            else:
                assert row[name] == value and type(row[name]) is type(value), (key, name, row[name], value)
