"""The `energy` demo data: a Timestream UNLOAD of generation_data, read back as a source would."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from blocks.columns import LogicalType
from blocks.parquet.source import ParquetTables
from devstack.energy_data import MEASURES, PLANTS, write_energy_demo

KEY = ["region", "plant", "source", "measure_name", "time"]
MEASURE_COLUMNS = [f"measure_value::{kind}" for kind in ("double", "bigint", "varchar", "boolean")]


def read_all(tmp_path, info) -> tuple[ParquetTables, pa.Table]:
    folder = info["manifest"].parent.relative_to(tmp_path)
    source = ParquetTables(
        str(tmp_path), None, {"generation_data": (str(folder), "generation_data/manifest.json")}
    )
    source.check()
    table = pa.Table.from_batches(list(source.read_chunk("generation_data", None, "time", None, None)))
    return source, table


def test_demo_reads_back_through_the_unload_manifest(tmp_path):
    info = write_energy_demo(tmp_path, rows=12_345, seed=3)
    assert info["table"] == "generation_data" and info["rows"] == 12_345
    assert (info["start"], info["end"]) == (
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(2024, 3, 8, tzinfo=UTC),
    )
    manifest = json.loads(info["manifest"].read_text())
    assert len(manifest["result_files"]) == 4
    assert manifest["query_metadata"]["total_row_count"] == 12_345
    assert (info["manifest"].parent / "metadata.json").exists()

    source, table = read_all(tmp_path, info)
    assert table.num_rows == source.count("generation_data", "time", info["start"], info["end"]) == 12_345
    schema = source.describe("generation_data")
    assert [c.name for c in schema.columns] == ["region", "plant", "source", *KEY[3:], *MEASURE_COLUMNS]
    assert schema.column("time").logical is LogicalType.TIMESTAMP_TZ
    assert schema.column("time").source_type == "timestamp[ns, tz=UTC]"
    assert {c.name: c.role for c in schema.columns if c.role} == {
        "measure_name": "measure_name",
        "time": "time",
        **dict.fromkeys(MEASURE_COLUMNS, "measure"),
    }
    lo, hi = source.bounds("generation_data", "time")
    assert info["start"] <= lo and hi < info["end"]
    nanos = pc.subtract(
        pc.cast(table["time"], pa.int64()),
        pc.multiply(pc.divide(pc.cast(table["time"], pa.int64()), 10**9), 10**9),
    )
    assert 0 < pc.sum(pc.not_equal(nanos, 0)).as_py() < table.num_rows  # some sub-second times, not all


def test_demo_records_are_single_measure_with_unique_series_keys(tmp_path):
    info = write_energy_demo(tmp_path, rows=20_000)
    _, table = read_all(tmp_path, info)

    assert table.group_by(KEY).aggregate([]).num_rows == table.num_rows
    set_per_row = sum(pc.cast(pc.is_valid(table[c]), pa.int8()).to_numpy() for c in MEASURE_COLUMNS)
    assert set(set_per_row.tolist()) == {1}
    for name, kind in MEASURES:
        rows = table.filter(pc.equal(table["measure_name"], name))
        assert rows.num_rows > 0
        assert rows[f"measure_value::{kind}"].null_count == 0, name
        assert all(rows[c].null_count == rows.num_rows for c in MEASURE_COLUMNS if not c.endswith(kind)), name
    doubles = table["measure_value::double"].drop_null()
    assert not pc.any(pc.is_nan(doubles)).as_py()
    plants = set(
        zip(table["region"].to_pylist(), table["plant"].to_pylist(), table["source"].to_pylist(), strict=True)
    )
    assert plants == set(PLANTS)
    assert {"Itaipu, Binacional", 'Usina "Três Irmãos"', "a=b", "back\\slash", "São Simão"} <= {
        p for _, p, _ in plants
    }


def test_demo_is_deterministic_and_rewrites_in_place(tmp_path):
    first = write_energy_demo(tmp_path / "a", rows=3_000, seed=11)
    again = write_energy_demo(tmp_path / "b", rows=3_000, seed=11)
    _, a = read_all(tmp_path / "a", first)
    _, b = read_all(tmp_path / "b", again)
    assert a.equals(b)

    smaller = write_energy_demo(tmp_path / "a", rows=500, seed=11)
    results = sorted((smaller["manifest"].parent / "results").iterdir())
    assert len(results) == 4
    _, rewritten = read_all(tmp_path / "a", smaller)
    assert rewritten.num_rows == 500
