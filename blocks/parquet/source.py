"""Parquet files as a migration's source: one folder, or one Timestream UNLOAD, per table.

`ParquetTables` gives a whole migration's tables the same source protocol as
`SnowflakeSource`: check, describe, bounds, count, count_nulls, occupied_buckets, read_chunk;
and it stages by reference: `reference_chunk` hands the export the chunk's rows in the files
themselves, so nothing is copied into staging.
Each table's files are read through a `ParquetFileSet` (`blocks.parquet.fileset`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from blocks.chunk_rows import ChunkReference, ParquetRows
from blocks.columns import TableSchema
from blocks.errors import ConnectionCheckError, MigrationError, SourceSchemaError
from blocks.parquet import ParquetTraits
from blocks.parquet.fileset import ParquetFileSet
from blocks.parquet.scan import (
    FOOTER_READERS,
    READ_BATCH_ROWS,
    column_bounds,
    decoded,
    floor_divide,
    read_footers,
    value_type,
    window_filter,
)
from blocks.parquet.schema import consistent_schema, parquet_column

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials


class ParquetTables(ParquetTraits):
    """A migration's tables as Parquet files, each a folder (or an UNLOAD manifest) under `location`.

    `tables` maps a table name to (path, manifest). A path is a folder, relative to `location`
    or absolute (a local path or s3:// URI); None (and any table not listed) means the folder
    named after the table under `location`. A manifest, when given, is a Timestream UNLOAD
    manifest.json (relative to `location` or absolute), and then exactly its files are read.

    The methods follow `SnowflakeSource`'s protocol. Every read streams batches of at most
    READ_BATCH_ROWS rows; no method holds a whole table in memory.
    """

    def __init__(
        self,
        location: str,
        credentials: AwsCredentials | None = None,
        tables: dict[str, tuple[str | None, str | None]] | None = None,
        read_in_place: bool = True,
    ) -> None:
        self.location = location if location == "/" else location.rstrip("/")
        # Chunks are loaded from the files themselves (`reference_chunk`), or copied to staging.
        self.stages_by_reference = read_in_place
        self.credentials = credentials
        self.tables = dict(tables or {})
        self._sources: dict[str, ParquetFileSet] = {}
        self._datasets: dict[str, ds.FileSystemDataset] = {}
        self._schemas: dict[str, pa.Schema] = {}

    def describe_target(self) -> str:
        return f"Parquet files at {self.location}"

    def resolve(self, path: str) -> str:
        """An absolute path or s3:// URI as is; anything else relative to `location`."""
        if path.startswith("s3://") or os.path.isabs(path):
            return path
        return f"{self.location.rstrip('/')}/{path}"

    def source(self, table: str) -> ParquetFileSet:
        """The `ParquetFileSet` for one table's folder (and manifest)."""
        if table not in self._sources:
            path, manifest = self.tables.get(table, (None, None))
            self._sources[table] = ParquetFileSet(
                location=self.resolve(path or table),
                manifest=self.resolve(manifest) if manifest else None,
                credentials=self.credentials,
            )
        return self._sources[table]

    def dataset(self, table: str, fresh: bool = False) -> ds.FileSystemDataset:
        """The table's files as one dataset; no files raises `SourceSchemaError` naming both.

        The file list is taken once per instance (listing an S3 prefix, or stating every file
        a manifest names, costs a request per file); `fresh` takes it again.
        """
        if fresh or table not in self._datasets:
            source = self.source(table)
            files = source.files()
            if not files:
                where = (
                    f"the manifest {source.manifest}" if source.manifest else f"the folder {source.location}"
                )
                raise SourceSchemaError(f"table {table!r}: no Parquet files in {where}")
            self._datasets[table] = source.dataset(files)
        return self._datasets[table]

    def arrow_schema(self, table: str) -> pa.Schema:
        """The table's schema, after checking every file's footer agrees with it (no drift)."""
        if table not in self._schemas:
            self._schemas[table] = consistent_schema(table, read_footers(self.dataset(table)))
        return self._schemas[table]

    def check(self) -> None:
        """Every listed table: files present, manifest row counts right, no schema drift.

        With no tables listed, only that `location` can be reached. Failures to reach the
        files raise `ConnectionCheckError`; missing files and drift `SourceSchemaError`; a
        wrong manifest row count `ValidationFailed`.
        """
        try:
            if not self.tables:
                self._check_location()
            for table in self.tables:
                self._check_table(table)
        except MigrationError:
            raise
        except Exception as exc:
            raise ConnectionCheckError(f"cannot read {self.describe_target()}: {exc}") from None

    def _check_location(self) -> None:
        source = ParquetFileSet(location=self.location, credentials=self.credentials)
        fs, path = source._filesystem(self.location)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise ConnectionCheckError(f"{self.location} does not exist")

    def _check_table(self, table: str) -> None:
        source = self.source(table)
        footers = read_footers(self.dataset(table, fresh=True))
        if source.manifest:
            source.verify_manifest_rows(footers)
        self._schemas[table] = consistent_schema(table, footers)

    def describe(self, table: str) -> TableSchema:
        """The table's columns in the first file's order, typed from Arrow; see `parquet_column`."""
        schema = self.arrow_schema(table)
        return TableSchema(table=table, columns=tuple(parquet_column(f, f.nullable, table) for f in schema))

    def _field(self, dataset: ds.Dataset, table: str, column: str) -> pa.Field:
        if column not in dataset.schema.names:
            raise SourceSchemaError(f"table {table!r}: column {column!r} not in {dataset.schema.names}")
        return dataset.schema.field(column)

    def bounds(self, table: str, column: str) -> tuple[Any, Any]:
        """(min, max) of a column over all files; (None, None) when it holds no values."""
        dataset = self.dataset(table)
        self._field(dataset, table, column)
        return column_bounds(dataset, column)

    def count(self, table: str, column: str, lower: Any, upper: Any) -> int:
        """Rows with lower <= column < upper; a None bound leaves that side open (NULLs count
        only when both are None, as in SQL without a WHERE)."""
        dataset = self.dataset(table)
        condition = window_filter(dataset.schema, column, lower, upper, f"table {table!r}")
        return dataset.count_rows(filter=condition)

    def count_nulls(self, table: str, column: str) -> int:
        dataset = self.dataset(table)
        self._field(dataset, table, column)
        return dataset.count_rows(filter=pc.field(column).is_null())

    def occupied_buckets(self, table: str, column: str, origin: int, step: int) -> list[int] | None:
        """floor((column - origin) / step) for every bucket holding a row, ascending.

        None for a column that is not an integer (the planner then splits by range alone).
        """
        dataset = self.dataset(table)
        if not pa.types.is_integer(value_type(self._field(dataset, table, column).type)):
            return None
        occupied: set[int] = set()
        for batch in dataset.to_batches(columns=[column], batch_size=READ_BATCH_ROWS):
            values = pc.cast(decoded(batch).column(0).drop_null(), pa.int64())
            occupied.update(pc.unique(floor_divide(pc.subtract_checked(values, origin), step)).to_pylist())
        return sorted(occupied)

    def reference_chunk(
        self, table: str, columns: list[str] | None, column: str, lower: Any, upper: Any
    ) -> ChunkReference:
        """The rows `read_chunk` gives, read in place: the files whose row groups may hold
        lower <= column < upper (by their statistics), with that range as the scan's filter.

        `bytes` is the compressed size of those row groups; `reported_rows` is the manifest's
        count when a manifest's table is taken whole (no bounds), else None (the manifest's
        counts per file were checked against the files by `check`)."""
        dataset = self.dataset(table)
        names = list(dataset.schema.names) if columns is None else list(columns)
        for name in names:
            self._field(dataset, table, name)
        condition = window_filter(dataset.schema, column, lower, upper, f"table {table!r}")

        def kept(fragment: ds.ParquetFileFragment) -> tuple[str, int] | None:
            part = fragment if condition is None else fragment.subset(filter=condition)
            groups = [g.id for g in part.row_groups]
            if not groups:
                return None
            metadata = fragment.metadata
            size = sum(
                metadata.row_group(g).column(c).total_compressed_size
                for g in groups
                for c in range(metadata.num_columns)
            )
            return fragment.path, size

        # A footer is one small ranged read each; on S3 latency dominates, so read them at once.
        with ThreadPoolExecutor(max_workers=FOOTER_READERS) as pool:
            files = [f for f in pool.map(kept, dataset.get_fragments()) if f is not None]
        schema = pa.schema([pa.field(n, value_type(dataset.schema.field(n).type)) for n in names])
        rows = ParquetRows(
            [path for path, _ in files],
            schema,
            filesystem=dataset.filesystem,
            filter=condition,
            transform=decoded,
            read_columns=names,
        )
        source = self.source(table)
        reported = None
        if source.manifest and condition is None:
            reported = sum(n for _, n in source.manifest_files())
        return ChunkReference(
            rows,
            uri=source.manifest or source.location,
            bytes=sum(size for _, size in files),
            reported_rows=reported,
        )

    def read_chunk(
        self, table: str, columns: list[str] | None, column: str, lower: Any, upper: Any
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows with lower <= column < upper, the columns in the order asked (None: all).

        Dictionary-encoded columns arrive decoded to their value type, as `describe` reports them.
        """
        dataset = self.dataset(table)
        names = list(dataset.schema.names) if columns is None else list(columns)
        for name in names:
            self._field(dataset, table, name)
        condition = window_filter(dataset.schema, column, lower, upper, f"table {table!r}")
        scanner = dataset.scanner(columns=names, filter=condition, batch_size=READ_BATCH_ROWS)
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield decoded(batch)
