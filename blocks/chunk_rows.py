"""A chunk's rows on their way into the target, wherever they are: still in memory after the
export (`ArrowRows`), or in Parquet files (`ParquetRows`): the staged file, or the source's own
files when a Parquet or UNLOAD source stages by reference.

Targets read a chunk only through `ChunkRows`, so the load does not care which it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

READ_BATCH_ROWS = 65_536


class ChunkRows(Protocol):
    """One chunk's rows in the staged schema; every method may be called more than once (a
    retried load reads them again)."""

    schema: pa.Schema
    num_rows: int

    def batches(
        self, columns: list[str] | None = None, batch_size: int = READ_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """The rows as batches of at most `batch_size`, `columns` only when given."""
        ...

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The rows as one table (memory: the chunk)."""
        ...

    def null_count(self, column: str) -> int: ...


class ArrowRows:
    """A chunk held in memory: the batches the export wrote to staging, read no second time."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.schema = table.schema
        self.num_rows = table.num_rows

    def batches(
        self, columns: list[str] | None = None, batch_size: int = READ_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Batches of `batch_size` rows (the last one shorter), whatever sizes the source's
        batches had: consumers pay per batch (a COPY message, an encoder call)."""
        table = self.table if columns is None else self.table.select(columns)
        for start in range(0, table.num_rows, batch_size):
            piece = table.slice(start, batch_size)
            if piece.num_columns and piece.column(0).num_chunks > 1:
                piece = piece.combine_chunks()  # a copy of at most batch_size rows
            yield from piece.to_batches()

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self.table if columns is None else self.table.select(columns)

    def null_count(self, column: str) -> int:
        return self.table.column(column).null_count


class ParquetRows:
    """A chunk in Parquet files (local paths, or paths on `filesystem`), streamed row group by
    row group: `filter` keeps the chunk's rows of files that hold more, and `transform` turns
    each batch read into the staged schema (`schema`). `num_rows` is counted from the files'
    metadata when no filter is given, else by the scan the filter needs."""

    def __init__(
        self,
        paths: list[str],
        schema: pa.Schema,
        filesystem: pafs.FileSystem | None = None,
        filter: pc.Expression | None = None,
        transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
        num_rows: int | None = None,
    ) -> None:
        self.paths = list(paths)
        self.schema = schema
        self.dataset = ds.dataset(self.paths, format="parquet", filesystem=filesystem)
        self.filter = filter
        self.transform = transform
        self.num_rows = self.dataset.count_rows(filter=filter) if num_rows is None else num_rows

    def batches(
        self, columns: list[str] | None = None, batch_size: int = READ_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        if self.transform is None:
            scanner = self.dataset.scanner(columns=columns, filter=self.filter, batch_size=batch_size)
            return (b for b in scanner.to_batches() if b.num_rows)
        # The transform needs every column it maps from; select afterwards.
        scanner = self.dataset.scanner(filter=self.filter, batch_size=batch_size)
        done = (self.transform(b) for b in scanner.to_batches() if b.num_rows)
        return done if columns is None else (b.select(columns) for b in done)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        names = self.schema.names if columns is None else columns
        return pa.Table.from_batches(
            list(self.batches(columns)), schema=pa.schema([self.schema.field(n) for n in names])
        )

    def null_count(self, column: str) -> int:
        if self.transform is None:
            nulls = pc.field(column).is_null()
            return self.dataset.count_rows(filter=nulls if self.filter is None else self.filter & nulls)
        return sum(b.column(0).null_count for b in self.batches([column]))


def staged_file(path: str) -> ParquetRows:
    """The rows of one staged Parquet file, as the export wrote them."""
    import pyarrow.parquet as pq

    metadata = pq.read_metadata(path)
    return ParquetRows([path], metadata.schema.to_arrow_schema(), num_rows=metadata.num_rows)


def mapped(
    rows: ParquetRows, transform: Callable[[pa.RecordBatch], pa.RecordBatch], schema: pa.Schema
) -> ParquetRows:
    """`rows` with `transform` applied after its own, in `schema` (the same files and filter)."""
    inner = rows.transform
    out = ParquetRows.__new__(ParquetRows)
    out.paths, out.dataset, out.filter, out.num_rows = rows.paths, rows.dataset, rows.filter, rows.num_rows
    out.schema = schema
    out.transform = transform if inner is None else (lambda batch: transform(inner(batch)))
    return out


class ChunkReference:
    """A chunk staged by reference: the source's own Parquet files stand in for the staged copy.

    `rows` reads the chunk from them; `uri` names them (the folder, or the UNLOAD's manifest) for
    the ledger; `bytes` is their size; `reported_rows` is the row count the source's manifest
    reports for them (an UNLOAD's), which validation compares with their metadata, or None."""

    def __init__(self, rows: ParquetRows, uri: str, bytes: int, reported_rows: int | None = None) -> None:
        self.rows, self.uri, self.bytes, self.reported_rows = rows, uri, bytes, reported_rows
