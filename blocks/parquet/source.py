"""Parquet files as a migration source: a local folder or an S3 prefix, or a Timestream UNLOAD.

Timestream's `UNLOAD ... WITH (format='PARQUET')` writes result files plus a `manifest.json`
that lists every file with its row count. Given that manifest, exactly the files it lists are
read, and their row counts are checked against it; without one, every `*.parquet` file under
`location` is read. Time windows are read with a pushed-down filter, batch by batch.

`ParquetFilesSource` is the Block for one set of files. `ParquetTables` gives a whole
migration's tables (one folder, or one UNLOAD, per table) the same source protocol as
`SnowflakeSource`: check, describe, bounds, count, count_nulls, occupied_buckets, read_chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.columns import Column, LogicalType, TableSchema
from blocks.errors import ConnectionCheckError, MigrationError, SourceSchemaError, ValidationFailed
from blocks.parquet import ParquetTraits

READ_BATCH_ROWS = 65_536
FOOTER_READERS = 16  # footers are one small ranged read each; on S3 latency, not bandwidth, dominates
_EPOCH = datetime(1970, 1, 1)
_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


class FileFooter(NamedTuple):
    """What one Parquet file's footer says: its Arrow schema and row count."""

    path: str
    schema: pa.Schema
    rows: int


def read_footers(dataset: ds.FileSystemDataset) -> list[FileFooter]:
    """Every file's footer (schema and row count), read concurrently; no data pages are read."""

    def footer(fragment: ds.ParquetFileFragment) -> FileFooter:
        rows = fragment.metadata.num_rows
        return FileFooter(fragment.path, fragment.physical_schema, rows)

    with ThreadPoolExecutor(max_workers=FOOTER_READERS) as pool:
        return list(pool.map(footer, dataset.get_fragments()))


def value_type(kind: pa.DataType) -> pa.DataType:
    """The type of the values: a dictionary-encoded column's value type, else the type itself."""
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def epoch_nanoseconds(value: Any) -> int:
    """Nanoseconds since 1970-01-01 UTC (a Python int, so any year fits).

    An aware value is converted to UTC; a naive value is read as UTC wall-clock time. A date
    means its midnight. pandas Timestamps keep their nanoseconds. Other types raise TypeError.
    """
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise TypeError(f"a timestamp bound must be a datetime, date or numpy datetime64, not {value!r}")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    micros = (value - _EPOCH) // (datetime(1970, 1, 1, microsecond=1) - _EPOCH)
    return micros * 1_000 + getattr(value, "nanosecond", 0)


def bound_scalar(value: Any, kind: pa.DataType) -> pa.Scalar:
    """`value` as a scalar of the column's own type, so a filter compares exactly and can prune files.

    Timestamps: an aware bound is compared as an instant, a naive one as UTC wall-clock time,
    whether the column is naive or aware. A bound finer than the column's unit is rounded up,
    which keeps both `column >= lower` and `column < upper` exact for whole ticks.
    """
    kind = value_type(kind)
    if pa.types.is_timestamp(kind):
        per_tick = _NS_PER_UNIT[kind.unit]
        return pa.scalar(-(-epoch_nanoseconds(value) // per_tick), type=kind)
    try:
        return pa.scalar(value, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.scalar(value)  # e.g. an int64 bound on an int32 column: Arrow widens the column


def window_filter(
    schema: pa.Schema, column: str, lower: Any, upper: Any, where: str = "the files"
) -> ds.Expression | None:
    """`lower <= column < upper` (None = unbounded on that side); None when both are None."""
    if column not in schema.names:
        raise SourceSchemaError(f"column {column!r} not in {where}: {schema.names}")
    kind = schema.field(column).type
    condition = None
    if lower is not None:
        condition = pc.field(column) >= bound_scalar(lower, kind)
    if upper is not None:
        below = pc.field(column) < bound_scalar(upper, kind)
        condition = below if condition is None else condition & below
    return condition


def decoded(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with dictionary-encoded columns decoded to their value type, order kept."""
    if not any(pa.types.is_dictionary(t) for t in batch.schema.types):
        return batch
    arrays = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


class ParquetFilesSource(Block):
    """Reads time windows of a set of Parquet files as Arrow record batches."""

    _block_type_name = "Migration Parquet Files Source"
    _block_type_slug = "migration-parquet-files-source"

    location: str = Field(description="A local folder, or s3://bucket/prefix")
    manifest: str | None = Field(
        default=None, description="Timestream UNLOAD manifest.json (local path or s3://)"
    )
    credentials: AwsCredentials | None = Field(default=None, description="For s3:// locations")

    def describe_target(self) -> str:
        return f"Parquet files at {self.manifest or self.location}"

    def _filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        if not uri.startswith("s3://"):
            return pafs.LocalFileSystem(), uri
        creds = self.credentials or AwsCredentials()
        endpoint = creds.aws_client_parameters.endpoint_url if creds.aws_client_parameters else None
        options: dict[str, Any] = {"region": creds.region_name or "us-east-1"}
        if creds.aws_access_key_id:
            options["access_key"] = creds.aws_access_key_id
            options["secret_key"] = creds.aws_secret_access_key.get_secret_value()
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host, scheme=scheme)
        return pafs.S3FileSystem(**options), uri.removeprefix("s3://")

    def manifest_files(self) -> list[tuple[str, int]]:
        """(file URI, row count) for every file an UNLOAD manifest lists."""
        fs, path = self._filesystem(self.manifest)
        with fs.open_input_stream(path) as stream:
            manifest = json.loads(stream.read())
        try:
            return [(f["url"], int(f["file_metadata"]["row_count"])) for f in manifest["result_files"]]
        except (KeyError, TypeError) as exc:
            raise SourceSchemaError(
                f"{self.manifest} is not a Timestream UNLOAD manifest: missing {exc}"
            ) from None

    def files(self) -> list[str]:
        """The manifest's files, or every *.parquet under `location` (none if it does not exist)."""
        if self.manifest:
            return [uri for uri, _ in self.manifest_files()]
        fs, path = self._filesystem(self.location)
        selector = pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True)
        found = sorted(
            i.path for i in fs.get_file_info(selector) if i.is_file and i.path.endswith(".parquet")
        )
        prefix = "s3://" if self.location.startswith("s3://") else ""
        return [prefix + p for p in found]

    def dataset(self, files: list[str] | None = None) -> ds.FileSystemDataset:
        """A dataset over `files` (default: `self.files()`); its schema is the first file's."""
        files = self.files() if files is None else files
        if not files:
            raise SourceSchemaError(f"no Parquet files found at {self.location}")
        fs, _ = self._filesystem(files[0])
        return ds.dataset([self._filesystem(f)[1] for f in files], format="parquet", filesystem=fs)

    def verify_manifest_rows(self, footers: list[FileFooter]) -> None:
        """Raise `ValidationFailed` unless every file holds the row count the manifest gives it."""
        expected = {self._filesystem(uri)[1]: rows for uri, rows in self.manifest_files()}
        for footer in footers:
            if footer.rows != expected.get(footer.path):
                raise ValidationFailed(
                    f"{footer.path} holds {footer.rows} rows, the UNLOAD manifest says "
                    f"{expected.get(footer.path)}"
                )

    def check(self) -> None:
        try:
            dataset = self.dataset()
            if self.manifest:
                self.verify_manifest_rows(read_footers(dataset))
        except MigrationError:
            raise
        except Exception as exc:
            raise ConnectionCheckError(f"cannot read {self.describe_target()}: {exc}") from None

    def schema(self) -> pa.Schema:
        return self.dataset().schema

    def _window(self, dataset: ds.Dataset, column: str, lower: datetime | None, upper: datetime | None):
        if column not in dataset.schema.names:
            raise SourceSchemaError(
                f"time column {column!r} not in {self.describe_target()}: {dataset.schema.names}"
            )
        condition = pc.field(column).is_valid()
        window = window_filter(dataset.schema, column, lower, upper)
        return condition if window is None else condition & window

    def read_chunk(
        self, column: str, lower: datetime | None, upper: datetime | None, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Rows with lower <= column < upper, streamed in batches of at most READ_BATCH_ROWS."""
        dataset = self.dataset()
        scanner = dataset.scanner(
            columns=columns, filter=self._window(dataset, column, lower, upper), batch_size=READ_BATCH_ROWS
        )
        yield from (b for b in scanner.to_batches() if b.num_rows)

    def count(self, column: str, lower: datetime | None, upper: datetime | None) -> int:
        dataset = self.dataset()
        return dataset.count_rows(filter=self._window(dataset, column, lower, upper))

    def bounds(self, column: str) -> tuple[Any, Any]:
        """(min, max) of a column over all files, read batch by batch."""
        return column_bounds(self.dataset(), column)


def column_bounds(dataset: ds.Dataset, column: str) -> tuple[Any, Any]:
    """(min, max) of one column, scanning only that column batch by batch; (None, None) if empty."""
    lows: list[pa.Scalar] = []
    highs: list[pa.Scalar] = []
    for batch in dataset.to_batches(columns=[column], batch_size=READ_BATCH_ROWS):
        result = pc.min_max(decoded(batch).column(0))
        if result["min"].is_valid:
            lows.append(result["min"])
            highs.append(result["max"])
    if not lows:
        return None, None
    return pc.min(pa.array(lows)).as_py(), pc.max(pa.array(highs)).as_py()


def logical_type(kind: pa.DataType) -> LogicalType | None:
    """The logical type for an Arrow value type; None when there is no mapping."""
    checks = (
        (pa.types.is_integer, LogicalType.INTEGER),
        (pa.types.is_floating, LogicalType.FLOAT),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), LogicalType.STRING),
        (pa.types.is_boolean, LogicalType.BOOLEAN),
        (lambda t: pa.types.is_timestamp(t) and t.tz is not None, LogicalType.TIMESTAMP_TZ),
        (pa.types.is_timestamp, LogicalType.TIMESTAMP),
        (pa.types.is_date, LogicalType.DATE),
        (pa.types.is_time, LogicalType.TIME),
        (pa.types.is_decimal, LogicalType.DECIMAL),
        (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), LogicalType.BINARY),
    )
    return next((logical for matches, logical in checks if matches(kind)), None)


def timestream_role(name: str) -> str | None:
    """The Timestream attribute an UNLOAD column name reveals: time, measure_name or measure."""
    if name in ("time", "measure_name"):
        return name
    return "measure" if name.startswith("measure_value::") else None


def parquet_column(field: pa.Field, nullable: bool, table: str) -> Column:
    """Map one Arrow field to a `Column`; unmappable types (and uint64) raise `SourceSchemaError`."""
    kind = value_type(field.type)
    if kind == pa.uint64():
        raise SourceSchemaError(
            f"table {table!r}: column {field.name!r} is uint64, whose values may exceed int64; "
            "no target integer can hold them"
        )
    logical = logical_type(kind)
    if logical is None:
        raise SourceSchemaError(
            f"table {table!r}: column {field.name!r} has Arrow type {field.type}, which has no mapping"
        )
    decimal = pa.types.is_decimal(kind)
    return Column(
        name=field.name,
        logical=logical,
        precision=kind.precision if decimal else None,
        scale=kind.scale if decimal else None,
        nullable=nullable,
        source_type=str(field.type),
        role=timestream_role(field.name),
    )


def schema_drift(reference: pa.Schema, other: pa.Schema) -> list[str]:
    """How `other` differs from `reference` by column name and value type.

    Column order, nullability, metadata and dictionary encoding are not differences: the
    reader lines columns up by name and decodes dictionaries.
    """
    ref = {f.name: value_type(f.type) for f in reference}
    got = {f.name: value_type(f.type) for f in other}
    added = [f"adds column {n!r} ({t})" for n, t in got.items() if n not in ref]
    removed = [f"lacks column {n!r} ({t})" for n, t in ref.items() if n not in got]
    retyped = [f"has column {n!r} as {got[n]}, not {t}" for n, t in ref.items() if n in got and got[n] != t]
    return added + removed + retyped


def consistent_schema(table: str, footers: list[FileFooter]) -> pa.Schema:
    """The first file's schema, nullable wherever any file is; drift raises `SourceSchemaError`."""
    first = footers[0]
    nullable = {f.name for footer in footers for f in footer.schema if f.nullable}
    for footer in footers[1:]:
        differences = schema_drift(first.schema, footer.schema)
        if differences:
            raise SourceSchemaError(
                f"table {table!r}: schema drift: {footer.path} {'; '.join(differences)} "
                f"compared with {first.path}"
            )
    return pa.schema([f.with_nullable(f.name in nullable) for f in first.schema])


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
    ) -> None:
        self.location = location if location == "/" else location.rstrip("/")
        self.credentials = credentials
        self.tables = dict(tables or {})
        self._sources: dict[str, ParquetFilesSource] = {}
        self._datasets: dict[str, ds.FileSystemDataset] = {}
        self._schemas: dict[str, pa.Schema] = {}

    def describe_target(self) -> str:
        return f"Parquet files at {self.location}"

    def resolve(self, path: str) -> str:
        """An absolute path or s3:// URI as is; anything else relative to `location`."""
        if path.startswith("s3://") or os.path.isabs(path):
            return path
        return f"{self.location.rstrip('/')}/{path}"

    def source(self, table: str) -> ParquetFilesSource:
        """The `ParquetFilesSource` for one table's folder (and manifest)."""
        if table not in self._sources:
            path, manifest = self.tables.get(table, (None, None))
            self._sources[table] = ParquetFilesSource(
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
        source = ParquetFilesSource(location=self.location, credentials=self.credentials)
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


def floor_divide(values: pa.Array, step: int) -> pa.Array:
    """values // step rounded toward minus infinity, as Python's // (Arrow's divide truncates)."""
    quotient = pc.divide(values, step)
    inexact = pc.not_equal(pc.multiply(quotient, step), values)
    negative = pc.not_equal(pc.less(values, 0), step < 0)
    return pc.if_else(pc.and_(inexact, negative), pc.subtract(quotient, 1), quotient)
