"""Parquet files as a source, laid out the way Timestream UNLOAD writes them (local and S3)."""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks.errors import SourceSchemaError, ValidationFailed
from blocks.parquet_files import ParquetFilesSource

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
