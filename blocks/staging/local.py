"""Where chunks wait as Parquet files between export and load: a local folder (here) or an S3
bucket (`blocks.staging.s3`, imported only by jobs that stage in S3).

Files are written under a temporary name and then renamed or uploaded, so a crash never
leaves a half-written file under a chunk's final name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect.blocks.core import Block
from pydantic import BaseModel, Field

from blocks.errors import ConnectionCheckError

PARQUET_COMPRESSION = "zstd"
# Dictionary pages double the writer's CPU on the wide, mostly distinct columns tables hold
# (250k rows of the benchmark's table: 188 ms with them, 91 ms without; zstd made the file
# smaller without them, 6.7 MB against 9.5 MB).
PARQUET_DICTIONARY = False


class StagedFile(BaseModel):
    uri: str
    rows: int
    bytes: int


def write_parquet(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Stream batches into one Parquet file; returns the row count. Memory holds one batch."""
    rows = 0
    with pq.ParquetWriter(
        path, schema, compression=PARQUET_COMPRESSION, use_dictionary=PARQUET_DICTIONARY
    ) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


class LocalStaging(Block):
    """Staging on local disk (the default): `<path>/<job_id>/<table>/<chunk_id>.parquet`."""

    _block_type_name = "Migration Local Staging"
    _block_type_slug = "migration-local-staging"

    path: str = Field(default="staging", description="Folder for staged Parquet files")

    def describe_target(self) -> str:
        return f"local staging folder {os.path.abspath(self.path)}"

    def check(self) -> None:
        """Raise `ConnectionCheckError` unless this process may create files in the folder: in
        the folder itself, or where a missing folder would be created (the nearest folder
        above it that exists; `write` creates the rest). Writes nothing, so a dry run may call
        it: the kernel answers for this process's user, on a read-only file system too."""
        root = Path(self.path).absolute()
        existing = next(p for p in (root, *root.parents) if p.exists())
        if not existing.is_dir():
            raise ConnectionCheckError(
                f"cannot write to {self.describe_target()}: {existing} is a file, not a folder"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            denied = "this user may not create files there (permissions, or a read-only file system)"
            if existing != root:
                denied = f"it does not exist, and in {existing} {denied}"
            raise ConnectionCheckError(f"cannot write to {self.describe_target()}: {denied}")

    def uri(self, key: str) -> str:
        return str(Path(self.path).resolve() / key)

    def write(self, key: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> StagedFile:
        final = Path(self.uri(key))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".partial")
        rows = write_parquet(tmp, schema, batches)
        os.replace(tmp, final)
        return StagedFile(uri=str(final), rows=rows, bytes=final.stat().st_size)

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        yield Path(self.uri(key))

    def exists(self, key: str) -> bool:
        return Path(self.uri(key)).exists()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(Path(self.uri(prefix)), ignore_errors=True)
