"""Demo data for the `energy` migration: Timestream `ons_energy_data.generation_data` as UNLOAD writes it.

`UNLOAD (SELECT * FROM ons_energy_data.generation_data) TO 's3://...' WITH (format='PARQUET')`
leaves, for each query, a `results/` folder of Parquet files and, beside it, a `manifest.json`
(every file with its size and row count) and a `metadata.json` (the column types). The files
hold single-measure records: the dimensions, `measure_name`, `time` (nanoseconds, UTC) and one
`measure_value::<type>` column per measure type, of which exactly one is set in each row.

The data is the ONS (Brazil's grid operator) generation picture for one week: plants in the
four subsystems, each reporting five measures, every measure with one fixed type. Plant
names include commas, spaces, '=', quotes, backslashes and accents, which line protocol must
escape. The series key (region, plant, source, measure_name, time) is unique.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from base64 import b32encode
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TABLE = "generation_data"
START = datetime(2024, 3, 1, tzinfo=UTC)
SPAN = timedelta(days=7)
FILES = 4

PLANTS = [  # (region, plant, source): one plant name appears in two subsystems on purpose
    ("N", "Tucuruí", "hydro"),
    ("N", "Belo Monte", "hydro"),
    ("N", "UTE Mauá 3", "thermal"),
    ("NE", "Complexo Eólico Alto Sertão", "wind"),
    ("NE", "Pirapora Solar", "solar"),
    ("NE", "a=b", "solar"),
    ("SE/CO", 'Usina "Três Irmãos"', "hydro"),
    ("SE/CO", "São Simão", "hydro"),
    ("SE/CO", "Angra 2", "thermal"),
    ("SE/CO", "Itaipu, Binacional", "hydro"),
    ("S", "Itaipu, Binacional", "hydro"),
    ("S", "Parque Eólico Osório", "wind"),
    ("S", "back\\slash", "thermal"),
]

MEASURES = [  # (measure_name, Timestream type); each measure keeps one type in every row
    ("generation_mw", "double"),
    ("capacity_factor", "double"),
    ("units_online", "bigint"),
    ("status", "varchar"),
    ("curtailed", "boolean"),
]

STATUSES = ["online", "maintenance", "offline", 'derated: "grid" limit', "trip\\relay", "manutenção"]

MEASURE_VALUE_TYPES = {
    "double": pa.float64(),
    "bigint": pa.int64(),
    "varchar": pa.string(),
    "boolean": pa.bool_(),
}
TIMESTREAM_TYPES = {"double": "DOUBLE", "bigint": "BIGINT", "varchar": "VARCHAR", "boolean": "BOOLEAN"}

SCHEMA = pa.schema(
    [
        pa.field("region", pa.string()),
        pa.field("plant", pa.string()),
        pa.field("source", pa.string()),
        pa.field("measure_name", pa.string()),
        pa.field("time", pa.timestamp("ns", tz="UTC")),
        *(pa.field(f"measure_value::{kind}", arrow) for kind, arrow in MEASURE_VALUE_TYPES.items()),
    ]
)


def series_times(rng: np.random.Generator, rows: int, n_series: int) -> tuple[np.ndarray, np.ndarray]:
    """(series index, time in ns since the epoch) for each row, unique within a series.

    Row i is reading i // n_series of series i % n_series. Readings are evenly spaced over the
    week, each jittered forward by less than half a step; a third of them carry a
    sub-second nanosecond part.
    """
    index = np.arange(rows, dtype=np.int64)
    series, reading = index % n_series, index // n_series
    per_series = -(-rows // n_series)
    step = int(SPAN / timedelta(microseconds=1)) * 1_000 // per_series
    if step >= 1_000_000_000:  # whole seconds, so only the jittered third carry nanoseconds
        step -= step % 1_000_000_000
    whole_seconds = rng.integers(0, max(step // 2_000_000_000, 1), rows) * 1_000_000_000
    nanos = np.where(rng.random(rows) < 1 / 3, rng.integers(1, 1_000_000_000, rows), 0)
    jitter = np.minimum(whole_seconds + nanos, step // 2)
    start_ns = int(START.timestamp()) * 1_000_000_000
    return series, start_ns + reading * step + jitter


def measure_values(rng: np.random.Generator, measure: np.ndarray) -> dict[str, pa.Array]:
    """One `measure_value::<type>` array per type, set only where the row's measure has that type."""
    rows = len(measure)
    names = [name for name, _ in MEASURES]
    mw = np.round(rng.uniform(0, 14_000, rows), 3)
    factor = np.round(rng.uniform(0, 1, rows), 6)
    candidates = {
        "double": np.where(measure == names.index("generation_mw"), mw, factor),
        "bigint": rng.integers(0, 21, rows),
        "varchar": np.array(STATUSES, dtype=object)[rng.integers(0, len(STATUSES), rows)],
        "boolean": rng.random(rows) < 0.2,
    }
    kind_of_row = np.array([kind for _, kind in MEASURES])[measure]
    return {
        f"measure_value::{kind}": pa.array(values, MEASURE_VALUE_TYPES[kind], mask=kind_of_row != kind)
        for kind, values in candidates.items()
    }


def generation_table(rows: int, seed: int) -> pa.Table:
    """The week's records, ordered by series then time as a Timestream partition would be."""
    rng = np.random.default_rng(seed)
    n_series = len(PLANTS) * len(MEASURES)
    series, times = series_times(rng, rows, n_series)
    order = np.lexsort((times, series))
    series, times = series[order], times[order]
    plant, measure = series // len(MEASURES), series % len(MEASURES)
    dimensions = {
        name: pa.array(np.array([p[i] for p in PLANTS], dtype=object)[plant], pa.string())
        for i, name in enumerate(("region", "plant", "source"))
    }
    columns = {
        **dimensions,
        "measure_name": pa.array(np.array([m for m, _ in MEASURES], dtype=object)[measure], pa.string()),
        "time": pa.array(times, pa.timestamp("ns", tz="UTC")),
        **measure_values(rng, measure),
    }
    return pa.table(columns, schema=SCHEMA)


def query_id(seed: int) -> str:
    """A stable stand-in for the query id UNLOAD puts in its file names."""
    return b32encode(hashlib.sha256(f"energy-demo-{seed}".encode()).digest()).decode().rstrip("=")[:56]


def write_results(table: pa.Table, results: Path, qid: str) -> list[Path]:
    """Split the table into FILES Parquet files (contiguous row ranges) under `results`."""
    results.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, FILES + 1).astype(int)
    paths = []
    for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        path = results / f"{qid}_{part}_{part + 1}.parquet"
        pq.write_table(table.slice(lo, hi - lo), path)
        paths.append(path)
    return paths


def unload_manifest(paths: list[Path]) -> dict:
    """manifest.json as UNLOAD writes it, listing each file's size and row count."""
    files = [
        {
            "url": str(path.resolve()),
            "file_metadata": {
                "content_length_in_bytes": path.stat().st_size,
                "row_count": pq.ParquetFile(path).metadata.num_rows,
            },
        }
        for path in paths
    ]
    return {
        "result_files": files,
        "query_metadata": {
            "total_content_length_in_bytes": sum(
                f["file_metadata"]["content_length_in_bytes"] for f in files
            ),
            "total_row_count": sum(f["file_metadata"]["row_count"] for f in files),
            "result_format": "PARQUET",
            "result_version": "Amazon Timestream version 1.0.0",
        },
        "author": {"name": "Amazon Timestream", "manifest_file_version": "1.0"},
    }


def unload_metadata() -> dict:
    """metadata.json as UNLOAD writes it: the result's columns and their Timestream types."""
    dimension = {"ScalarType": "VARCHAR"}
    columns = [{"Name": name, "Type": dimension} for name in ("region", "plant", "source", "measure_name")]
    columns.append({"Name": "time", "Type": {"ScalarType": "TIMESTAMP"}})
    columns += [
        {"Name": f"measure_value::{kind}", "Type": {"ScalarType": TIMESTREAM_TYPES[kind]}}
        for kind in MEASURE_VALUE_TYPES
    ]
    return {
        "ColumnInfo": columns,
        "Author": {"Name": "Amazon Timestream", "MetadataFileVersion": "1.0"},
    }


def write_energy_demo(root: Path, rows: int = 20_000, seed: int = 7) -> dict:
    """Write `<root>/generation_data/` (results/, manifest.json, metadata.json), replacing it.

    The same `rows` and `seed` always give the same records. Every time lies in
    [start, end), the week from 2024-03-01T00:00:00Z. `rows` must be at least 1.
    Returns {"table", "rows", "manifest" (its path), "start", "end"}.
    """
    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    folder = Path(root) / TABLE
    shutil.rmtree(folder, ignore_errors=True)
    qid = query_id(seed)
    paths = write_results(generation_table(rows, seed), folder / "results", qid)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(unload_manifest(paths), indent=2))
    (folder / "metadata.json").write_text(json.dumps(unload_metadata(), indent=2))
    return {"table": TABLE, "rows": rows, "manifest": manifest, "start": START, "end": START + SPAN}
