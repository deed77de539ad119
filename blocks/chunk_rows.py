"""A chunk's rows on their way into the target, wherever they are: still in memory after the
export (`ArrowRows`), or in Parquet files (`ParquetRows`): the staged file, or the source's own
files when a Parquet or UNLOAD source stages by reference.

Targets read a chunk only through `ChunkRows`, so the load does not care which it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
    metadata when no filter is given, else by the scan the filter needs. With a transform,
    `read_columns` (None: all) are the files' columns the scan reads for it. No paths: no rows.

    A full pass over `batches()` notes every column's NULL count on the way, so `null_count`
    after a load costs no second read."""

    def __init__(
        self,
        paths: list[str],
        schema: pa.Schema,
        filesystem: pafs.FileSystem | None = None,
        filter: pc.Expression | None = None,
        transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
        num_rows: int | None = None,
        read_columns: list[str] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.schema = schema
        self.dataset = ds.dataset(self.paths, format="parquet", filesystem=filesystem)
        self.filter = filter
        self.transform = transform
        self.read_columns = read_columns
        self._nulls: dict[str, int] | None = None
        if num_rows is None:
            num_rows = self.dataset.count_rows(filter=filter) if self.paths else 0
        self.num_rows = num_rows

    def batches(
        self, columns: list[str] | None = None, batch_size: int = READ_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Batches of `batch_size` rows (the last one shorter), however the files' row groups
        and the filter cut them: consumers pay per batch (a COPY message, an encoder call)."""
        if not self.paths:
            return iter(())
        if self.transform is None:
            scanner = self.dataset.scanner(columns=columns, filter=self.filter, batch_size=batch_size)
            done = rebatched((b for b in scanner.to_batches() if b.num_rows), batch_size)
        else:
            # The transform needs every column it maps from; select afterwards.
            scanner = self.dataset.scanner(
                columns=self.read_columns, filter=self.filter, batch_size=batch_size
            )
            read = rebatched((b for b in scanner.to_batches() if b.num_rows), batch_size)
            done = (self.transform(b) for b in read)
            if columns is not None:
                return (b.select(columns) for b in done)
        return done if columns is not None else self._noting_nulls(done)

    def _noting_nulls(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nulls = dict.fromkeys(self.schema.names, 0)
        for batch in batches:
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                nulls[name] = nulls.get(name, 0) + column.null_count
            yield batch
        self._nulls = nulls  # only once every batch was seen

    def read(self, columns: list[str] | None = None) -> pa.Table:
        names = self.schema.names if columns is None else columns
        return pa.Table.from_batches(
            list(self.batches(columns)), schema=pa.schema([self.schema.field(n) for n in names])
        )

    def null_count(self, column: str) -> int:
        if self._nulls is not None and column in self._nulls:
            return self._nulls[column]
        if not self.paths:
            return 0
        if self.transform is None:
            nulls = pc.field(column).is_null()
            return self.dataset.count_rows(filter=nulls if self.filter is None else self.filter & nulls)
        return sum(b.column(0).null_count for b in self.batches([column]))


def rebatched(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """The rows of `batches` (each at most `batch_size` rows, one schema) in batches of exactly
    `batch_size` rows, the last one shorter. A batch that already fits passes as is; smaller
    ones are joined (a copy of at most `batch_size` rows)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if not pending and batch.num_rows == batch_size:
            yield batch
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_size).combine_chunks().to_batches()[0]
            pending = table.slice(batch_size).to_batches()
            rows -= batch_size
    if len(pending) == 1:
        yield pending[0]
    elif pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


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
    out.read_columns, out._nulls = rows.read_columns, None
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
