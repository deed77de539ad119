"""Parquet files as a source, laid out the way Timestream UNLOAD writes them (local and S3).

The first two tests cover the `ParquetFilesSource` block; the rest `ParquetTables`, the
source protocol (describe, bounds, count, occupied_buckets, read_chunk) over one folder per table.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from blocks.columns import LogicalType
from blocks.errors import ConnectionCheckError, SourceSchemaError, ValidationFailed
from blocks.parquet.files import ParquetFilesSource
from blocks.parquet.source import ParquetTables

START_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z


def unload_files(n_files: int = 3, rows: int = 5_000) -> list[tuple[str, pa.Table]]:
    """Files as UNLOAD writes them: dimensions, measure_name, time (ns) and typed measures."""
    files = []
    for i in range(n_files):
        base = i * rows
        times = pa.array([START_NS + (base + r) * 7_000_000_123 for r in range(rows)], pa.int64())
        files.append(
            (
                f"results/AEDAGANLHLBH4OLISD3CVOZM4Z5KKRVN4JRCFPHSSEY2UZ6T4OQT43PC{i}.parquet",
                pa.table(
                    {
                        "region": pa.array([f"r,{r % 5}" for r in range(rows)]),
                        "measure_name": pa.array(["generation"] * rows),
                        "time": times.cast(pa.timestamp("ns")),
                        "power_mw": pa.array([(base + r) / 3 for r in range(rows)], pa.float64()),
                        "units": pa.array([base + r if r % 7 else None for r in range(rows)], pa.int64()),
                    }
                ),
            )
        )
    return files


def manifest(prefix: str, files: list[tuple[str, pa.Table]], wrong_count: bool = False) -> str:
    return json.dumps(
        {
            "result_files": [
                {
                    "url": f"{prefix}/{name}",
                    "file_metadata": {
                        "content_length_in_bytes": 1,
                        "row_count": t.num_rows + (1 if wrong_count else 0),
                    },
                }
                for name, t in files
            ],
            "query_metadata": {
                "total_row_count": sum(t.num_rows for _, t in files),
                "result_format": "PARQUET",
            },
            "author": {"name": "Amazon Timestream", "manifest_file_version": "0.1"},
        }
    )


def expected_window(files, lower: datetime, upper: datetime) -> pa.Table:
    table = pa.concat_tables([t for _, t in files])
    times = table.column("time").cast(pa.int64()).to_numpy()
    lo, hi = int(lower.timestamp()) * 10**9, int(upper.timestamp()) * 10**9
    return table.filter(pa.array((times >= lo) & (times < hi)))


def test_local_unload_layout_with_manifest(tmp_path):
    files = unload_files()
    for name, table in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp_path / name)
    (tmp_path / "manifest.json").write_text(manifest(str(tmp_path), files))
    source = ParquetFilesSource(location=str(tmp_path), manifest=str(tmp_path / "manifest.json"))
    source.check()

    lower, upper = datetime(2024, 1, 1, 10, tzinfo=UTC), datetime(2024, 1, 2, 3, tzinfo=UTC)
    got = pa.Table.from_batches(list(source.read_chunk("time", lower, upper)))
    want = expected_window(files, lower, upper)
    assert 0 < got.num_rows < 15_000
    assert got.sort_by("time").equals(want.sort_by("time"))
    assert source.count("time", lower, upper) == want.num_rows
    lo, hi = source.bounds("time")
    assert (lo.value, hi.value) == (START_NS, START_NS + 14_999 * 7_000_000_123)

    (tmp_path / "manifest.json").write_text(manifest(str(tmp_path), files, wrong_count=True))
    with pytest.raises(ValidationFailed, match="the UNLOAD manifest says 5001"):
        source.check()
    with pytest.raises(SourceSchemaError, match="time column 'ts' not in"):
        list(source.read_chunk("ts", lower, upper))


def test_s3_prefix_without_manifest(servers):
    from prefect_aws import AwsClientParameters, AwsCredentials

    endpoint = f"http://127.0.0.1:{servers['moto'].port}"
    bucket = "unload-" + secrets.token_hex(4)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    files = unload_files(n_files=2, rows=2_000)
    for name, table in files:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        s3.put_object(Bucket=bucket, Key=f"energy/{name}", Body=sink.getvalue().to_pybytes())
    s3.put_object(
        Bucket=bucket, Key="energy/manifest.json", Body=manifest(f"s3://{bucket}/energy", files).encode()
    )
    credentials = AwsCredentials(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )
    for source in (
        ParquetFilesSource(location=f"s3://{bucket}/energy", credentials=credentials),
        ParquetFilesSource(
            location=f"s3://{bucket}/energy",
            manifest=f"s3://{bucket}/energy/manifest.json",
            credentials=credentials,
        ),
    ):
        source.check()
        assert len(source.files()) == 2
        lower, upper = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 5, tzinfo=UTC)
        got = pa.Table.from_batches(list(source.read_chunk("time", lower, upper)))
        assert got.sort_by("time").equals(expected_window(files, lower, upper).sort_by("time"))


# --- ParquetTables: the source protocol over one folder (or UNLOAD) per table ---------------


def write_files(folder: Path, tables: list[pa.Table]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, table in enumerate(tables):
        pq.write_table(table, folder / f"part-{i}.parquet")
        paths.append(folder / f"part-{i}.parquet")
    return paths


def test_describe_maps_every_arrow_type(tmp_path):
    table = pa.table(
        {
            "i8": pa.array([1], pa.int8()),
            "u32": pa.array([1], pa.uint32()),
            "f32": pa.array([1.5], pa.float32()),
            "s": pa.array(["x"], pa.large_string()),
            "cat": pa.array(["x"]).dictionary_encode(),
            "flag": pa.array([True]),
            "at": pa.array([1], pa.timestamp("ms", tz="America/Sao_Paulo")),
            "naive": pa.array([1], pa.timestamp("us")),
            "day": pa.array([1], pa.date32()),
            "clock": pa.array([1], pa.time64("ns")),
            "amount": pa.array([Decimal("1.25")], pa.decimal128(12, 2)),
            "big": pa.array([Decimal("1")], pa.decimal256(50, 0)),
            "blob": pa.array([b"\x00"], pa.large_binary()),
            "measure_name": pa.array(["m"]),
            "time": pa.array([1], pa.timestamp("ns", tz="UTC")),
            "measure_value::double": pa.array([1.0]),
        }
    )
    schema = table.schema.set(0, pa.field("i8", pa.int8(), nullable=False))
    write_files(tmp_path / "wide", [table.cast(schema)])
    columns = {c.name: c for c in ParquetTables(str(tmp_path), None, {}).describe("wide").columns}

    assert list(columns) == table.column_names
    logical = {name: c.logical for name, c in columns.items()}
    assert logical == {
        "i8": LogicalType.INTEGER,
        "u32": LogicalType.INTEGER,
        "f32": LogicalType.FLOAT,
        "s": LogicalType.STRING,
        "cat": LogicalType.STRING,
        "flag": LogicalType.BOOLEAN,
        "at": LogicalType.TIMESTAMP_TZ,
        "naive": LogicalType.TIMESTAMP,
        "day": LogicalType.DATE,
        "clock": LogicalType.TIME,
        "amount": LogicalType.DECIMAL,
        "big": LogicalType.DECIMAL,
        "blob": LogicalType.BINARY,
        "measure_name": LogicalType.STRING,
        "time": LogicalType.TIMESTAMP_TZ,
        "measure_value::double": LogicalType.FLOAT,
    }
    assert (columns["amount"].precision, columns["amount"].scale) == (12, 2)
    assert (columns["big"].precision, columns["big"].scale) == (50, 0)
    assert not columns["i8"].nullable and columns["u32"].nullable
    assert columns["at"].source_type == "timestamp[ms, tz=America/Sao_Paulo]"
    assert columns["cat"].source_type.startswith("dictionary<values=string")
    roles = {name: c.role for name, c in columns.items() if c.role}
    assert roles == {"measure_name": "measure_name", "time": "time", "measure_value::double": "measure"}


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (pa.array([2**64 - 1], pa.uint64()), "column 'bad' is uint64, whose values may exceed int64"),
        (pa.array([[1, 2]], pa.list_(pa.int64())), "column 'bad' has Arrow type list<element: int64>"),
        (pa.array([{"a": 1}]), "column 'bad' has Arrow type struct<a: int64>"),
    ],
)
def test_describe_refuses_unmappable_types(tmp_path, array, message):
    write_files(tmp_path / "t", [pa.table({"id": [1], "bad": array})])
    with pytest.raises(SourceSchemaError, match=re.escape(f"table 't': {message}")):
        ParquetTables(str(tmp_path), None, {}).describe("t")


def timed_table(rows: int, kind: pa.DataType, offset: int = 0) -> pa.Table:
    """Rows 1 ms + 123 ns apart (ns precision; exact ms for ms columns), with a few NULL times."""
    step = 1_000_123 if kind.unit == "ns" else 1_000_000
    ns = [START_NS + (offset + r) * step for r in range(rows)]
    times = pa.array(ns, pa.int64()).cast(pa.timestamp("ns", tz=kind.tz)).cast(kind)
    times = pa.array([None if r % 97 == 5 else t for r, t in enumerate(times.to_pylist())], kind)
    ids = pa.array(range(offset, offset + rows), pa.int64())
    return pa.table({"id": ids, "ts": times, "label": pa.array([f"l{r % 3}" for r in range(rows)])})


def expected_count(table: pa.Table, lower_ns: int | None, upper_ns: int | None) -> int:
    ns = table.column("ts").cast(pa.timestamp("ns", tz=table.schema.field("ts").type.tz))
    values = [v for v in ns.cast(pa.int64()).to_pylist() if v is not None]
    return sum((lower_ns is None or v >= lower_ns) and (upper_ns is None or v < upper_ns) for v in values)


@pytest.mark.parametrize(
    "kind", [pa.timestamp("ns"), pa.timestamp("ns", tz="UTC"), pa.timestamp("ms", tz="America/Sao_Paulo")]
)
def test_count_and_bounds_compare_naive_and_aware_bounds_exactly(tmp_path, kind):
    files = [timed_table(2_000, kind), timed_table(1_500, kind, offset=2_000)]
    write_files(tmp_path / "t", files)
    source = ParquetTables(str(tmp_path), None, {})
    whole = pa.concat_tables(files)

    lo, hi = source.bounds("t", "ts")
    assert (pa.scalar(lo, kind), pa.scalar(hi, kind)) == (
        pc.min(whole.column("ts")).cast(kind),
        pc.max(whole.column("ts")).cast(kind),
    )
    assert source.count("t", "ts", None, None) == 3_500  # no bounds: every row, NULL times too
    assert source.count_nulls("t", "ts") == whole.column("ts").null_count > 0

    step = 1_000_123 if kind.unit == "ns" else 1_000_000
    edge_ns = START_NS + 1_234 * step  # a row's exact time
    edge = pd.Timestamp(edge_ns, unit="ns", tz="UTC")
    # The same instants written four ways: aware UTC, aware +03:00, naive UTC, and numpy.
    for lower, upper in (
        (edge, edge + pd.Timedelta(seconds=1)),
        (edge.tz_convert("+03:00"), (edge + pd.Timedelta(seconds=1)).tz_convert("+03:00")),
        (edge.tz_localize(None), (edge + pd.Timedelta(seconds=1)).tz_localize(None)),
        (np.datetime64(edge_ns, "ns"), np.datetime64(edge_ns + 10**9, "ns")),
    ):
        want = expected_count(whole, edge_ns, edge_ns + 10**9)
        assert source.count("t", "ts", lower, upper) == want > 900
        got = pa.Table.from_batches(list(source.read_chunk("t", ["id"], "ts", lower, upper)))
        assert got.num_rows == want
    # Plain datetimes (microseconds) and a bound between two ticks.
    lower = datetime(2024, 1, 1, 0, 0, 1, 500, tzinfo=UTC)
    assert source.count("t", "ts", lower, None) == expected_count(whole, START_NS + 1_000_500_000, None)
    assert source.count("t", "ts", None, lower.replace(tzinfo=None)) == expected_count(
        whole, None, START_NS + 1_000_500_000
    )


def test_occupied_buckets_are_floor_divided_and_distinct(tmp_path):
    values = [-17, -10, -9, -1, 0, 3, None, 95, 96, 250, 1_000_001]
    write_files(tmp_path / "t", [pa.table({"k": pa.array(values[:6], pa.int32())})])
    write_files(tmp_path / "t2", [pa.table({"k": pa.array(values, pa.int64()), "f": [0.5] * len(values)})])
    source = ParquetTables(str(tmp_path), None, {"u": ("t2", None)})
    for table, vals in (("t", values[:6]), ("u", values)):
        want = sorted({(v - -17) // 10 for v in vals if v is not None})
        assert source.occupied_buckets(table, "k", -17, 10) == want
    assert source.occupied_buckets("u", "k", 0, 7) == sorted({v // 7 for v in values if v is not None})
    assert source.occupied_buckets("u", "f", 0, 10) is None
    assert source.count("t", "k", -10, 3) == 4  # an int32 column, int bounds
    assert source.count("t", "k", -(2**40), 2**40) == 6  # bounds beyond int32 widen, not overflow
    assert source.count("u", "k", None, 0) == 4 and source.count_nulls("u", "k") == 1


def test_read_chunk_keeps_the_column_order_asked(tmp_path):
    kind = pa.timestamp("ns", tz="UTC")
    files = [timed_table(1_000, kind), timed_table(1_000, kind, offset=1_000)]
    files[1] = files[1].select(["label", "ts", "id"])  # column order differs by file: not drift
    files[0] = files[0].set_column(2, "label", files[0].column("label").dictionary_encode())
    write_files(tmp_path / "t", files)
    source = ParquetTables(str(tmp_path), None, {})
    source.check()

    batches = list(source.read_chunk("t", ["label", "id"], "ts", None, None))
    assert all(b.schema.names == ["label", "id"] for b in batches)
    assert all(b.schema.field("label").type == pa.string() for b in batches)  # dictionary decoded
    got = pa.Table.from_batches(batches).sort_by("id")
    assert got.column("id").to_pylist() == list(range(2_000))
    assert got.column("label").to_pylist() == [f"l{r % 3}" for r in range(1_000)] * 2

    everything = pa.Table.from_batches(list(source.read_chunk("t", None, "ts", None, None)))
    assert everything.schema.names == ["id", "ts", "label"] and everything.num_rows == 2_000
    with pytest.raises(SourceSchemaError, match="column 'nope' not in"):
        list(source.read_chunk("t", ["id", "nope"], "ts", None, None))


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        (lambda t: t.append_column("extra", pa.array([1] * t.num_rows)), "adds column 'extra' (int64)"),
        (lambda t: t.drop_columns(["label"]), "lacks column 'label' (string)"),
        (
            lambda t: t.set_column(0, "id", t.column("id").cast(pa.float64())),
            "has column 'id' as double, not int64",
        ),
        (
            lambda t: t.set_column(1, "ts", t.column("ts").cast(pa.timestamp("ns"))),
            "has column 'ts' as timestamp[ns], not timestamp[ns, tz=UTC]",
        ),
    ],
)
def test_schema_drift_between_files_is_refused(tmp_path, change, difference):
    kind = pa.timestamp("ns", tz="UTC")
    files = [timed_table(100, kind), timed_table(100, kind, 100), change(timed_table(100, kind, 200))]
    paths = write_files(tmp_path / "t", files)
    source = ParquetTables(str(tmp_path), None, {"t": (None, None)})
    message = f"table 't': schema drift: {paths[2]} {difference} compared with {paths[0]}"
    with pytest.raises(SourceSchemaError, match=re.escape(message)):
        source.check()
    with pytest.raises(SourceSchemaError, match=re.escape(message)):
        ParquetTables(str(tmp_path), None, {}).describe("t")


def write_unload(folder: Path, files: list[pa.Table], wrong_count: bool = False) -> Path:
    """Files under folder/results plus folder/manifest.json listing them by absolute path."""
    paths = write_files(folder / "results", files)
    named = [(str(p.relative_to(folder)), t) for p, t in zip(paths, files, strict=True)]
    (folder / "manifest.json").write_text(manifest(str(folder), named, wrong_count))
    return folder / "manifest.json"


def test_per_table_folders_and_manifests(tmp_path):
    kind = pa.timestamp("us")
    gen = [timed_table(300, kind), timed_table(300, kind, 300)]
    write_unload(tmp_path / "unloads" / "gen", gen)
    pq.write_table(timed_table(5, kind), tmp_path / "unloads" / "gen" / "results" / "not-listed.parquet")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    write_unload(elsewhere / "load", [timed_table(40, kind)])
    write_files(tmp_path / "plain", [timed_table(70, kind)])
    source = ParquetTables(
        str(tmp_path) + "/",
        None,
        {
            "gen": ("unloads/gen", "unloads/gen/manifest.json"),
            "load": (str(elsewhere / "load" / "results"), str(elsewhere / "load" / "manifest.json")),
            "plain": (None, None),
        },
    )
    source.check()
    assert source.count("gen", "ts", None, None) == 600  # the manifest's files only
    assert source.count("load", "ts", None, None) == 40
    assert source.count("plain", "ts", None, None) == 70
    assert source.describe("gen").column("ts").logical is LogicalType.TIMESTAMP

    write_unload(tmp_path / "unloads" / "gen", gen, wrong_count=True)
    with pytest.raises(ValidationFailed, match="the UNLOAD manifest says 301"):
        ParquetTables(str(tmp_path), None, {"gen": ("unloads/gen", "unloads/gen/manifest.json")}).check()
    missing = ParquetTables(str(tmp_path), None, {"absent": (None, None)})
    with pytest.raises(
        SourceSchemaError,
        match=re.escape(f"table 'absent': no Parquet files in the folder {tmp_path}/absent"),
    ):
        missing.check()
    with pytest.raises(ConnectionCheckError, match="does not exist"):
        ParquetTables(str(tmp_path / "nowhere"), None, {}).check()


def test_s3_tables_with_and_without_manifest(servers):
    from prefect_aws import AwsClientParameters, AwsCredentials

    endpoint = f"http://127.0.0.1:{servers['moto'].port}"
    bucket = "tables-" + secrets.token_hex(4)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    files = unload_files(n_files=2, rows=2_000)
    for name, table in files:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        s3.put_object(Bucket=bucket, Key=f"unload/energy/{name}", Body=sink.getvalue().to_pybytes())
    s3.put_object(
        Bucket=bucket,
        Key="unload/energy/manifest.json",
        Body=manifest(f"s3://{bucket}/unload/energy", files).encode(),
    )
    credentials = AwsCredentials(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )
    source = ParquetTables(
        f"s3://{bucket}/unload",
        credentials,
        {"by_manifest": ("energy", "energy/manifest.json"), "energy": (None, None)},
    )
    source.check()
    lower, upper = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 5, tzinfo=UTC)
    want = expected_window(files, lower, upper).sort_by("time")
    for table in ("by_manifest", "energy"):
        assert source.describe(table).column("measure_name").role == "measure_name"
        got = pa.Table.from_batches(list(source.read_chunk(table, want.column_names, "time", lower, upper)))
        assert got.sort_by("time").equals(want)
        assert source.count(table, "time", lower, upper) == want.num_rows
    with pytest.raises(
        SourceSchemaError, match=f"table 'other': no Parquet files in the folder s3://{bucket}/unload/other"
    ):
        source.describe("other")
