"""Amazon Timestream for LiveAnalytics as a migration source (query API, or UNLOAD to S3).

`TimestreamSource` runs one SQL query per time-window chunk through timestream-query's
`Query`, follows `NextToken` until it is absent (an empty page, even an empty first page, is
normal while Timestream is still working), and turns each page into one Arrow record batch
typed by the page's `ColumnInfo`. Credentials come from prefect-aws's `AwsCredentials`.

With `export_mode="unload"` a chunk is instead exported by `UNLOAD (<window SELECT>) TO s3://...`
as Parquet, read back through the UNLOAD manifest, and cast to the types the query API would
have given the same columns, so both modes hand the export step identical batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import ClientError
from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.columns import Column, LogicalType, TableSchema
from blocks.errors import ConfigError, ConnectionCheckError, SourceSchemaError, ValidationFailed
from blocks.parquet.files import ParquetFilesSource
from blocks.timestream import TimestreamReading, TimestreamTraits

CHECK_SQL = "SELECT 1"
UNLOAD_BATCH_ROWS = 65_536

_ARROW_BY_SCALAR = {
    "VARCHAR": pa.string(),
    "DOUBLE": pa.float64(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("ns", tz="UTC"),
    "DATE": pa.date32(),
    "TIME": pa.time64("ns"),
    "INTERVAL_DAY_TO_SECOND": pa.string(),
    "INTERVAL_YEAR_TO_MONTH": pa.string(),
    "UNKNOWN": pa.string(),  # an untyped NULL literal
}

# The types DESCRIBE reports for table columns, and what a migration makes of them.
_LOGICAL_BY_TIMESTREAM_TYPE = {
    "varchar": LogicalType.STRING,
    "double": LogicalType.FLOAT,
    "bigint": LogicalType.INTEGER,
    "integer": LogicalType.INTEGER,
    "boolean": LogicalType.BOOLEAN,
    "timestamp": LogicalType.TIMESTAMP_TZ,
    "date": LogicalType.DATE,
    "time": LogicalType.TIME,
}

_ROLE_BY_ATTRIBUTE = {
    "DIMENSION": "dimension",
    "MEASURE_NAME": "measure_name",
    "MEASURE_VALUE": "measure",  # single-measure tables: measure_value::double and friends
    "MULTI": "measure",  # multi-measure tables: one column per measure
    "TIMESTAMP": "time",
}

_MISSING_TABLE_CODES = ("ValidationException", "ResourceNotFoundException")


def quote_timestream(identifier: str) -> str:
    """Quote one Timestream identifier (double quotes, inner quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A Timestream string literal (single quotes, inner quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def scalar_type(column: dict[str, Any]) -> str:
    kind = column.get("Type", {}).get("ScalarType")
    if kind is None:
        raise SourceSchemaError(
            f"Timestream column {column.get('Name')!r} is not a scalar ({column.get('Type')}); "
            "select scalar columns only"
        )
    if kind not in _ARROW_BY_SCALAR:
        raise SourceSchemaError(
            f"Timestream column {column.get('Name')!r} has type {kind}, which has no mapping"
        )
    return kind


def scalar_field(name: str, kind: str) -> pa.Field:
    """The Arrow field for a Timestream scalar type (the type kept as field metadata)."""
    return pa.field(name, _ARROW_BY_SCALAR[kind], metadata={"timestream_type": kind})


def page_schema(column_info: list[dict[str, Any]]) -> pa.Schema:
    """The Arrow schema for a page's `ColumnInfo`."""
    return pa.schema([scalar_field(c["Name"], scalar_type(c)) for c in column_info])


def table_arrow_schema(schema: TableSchema, columns: list[str] | None) -> pa.Schema:
    """The schema the query API gives `SELECT <columns>` of a described table (None: every column)."""
    names = columns if columns is not None else [c.name for c in schema.columns]
    fields = []
    for name in names:
        column = schema.column(name)
        if column is None:
            raise SourceSchemaError(f"column {name!r} not in Timestream table {schema.table}")
        fields.append(scalar_field(name, column.source_type.upper()))
    return pa.schema(fields)


def _typed(values: pa.Array, kind: str) -> pa.Array:
    """Timestream's text form of one column (ScalarValue strings) to its Arrow type, exactly.

    DOUBLE text such as 'NaN', 'Infinity' and '-Infinity' parses to the IEEE special values.
    """
    target = _ARROW_BY_SCALAR[kind]
    if kind == "TIMESTAMP":
        return values.cast(pa.timestamp("ns")).cast(target)
    if kind == "TIME":
        as_timestamp = pc.binary_join_element_wise("1970-01-01 ", values, "").cast(pa.timestamp("ns"))
        return as_timestamp.cast(pa.int64()).cast(target)
    return values.cast(target)


def page_to_batch(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """One query page (`Rows` of `Data` cells) as a record batch; `NullValue` cells become NULL."""
    columns = []
    for i, field in enumerate(schema):
        text = pa.array([row["Data"][i].get("ScalarValue") for row in rows], pa.string())
        try:
            columns.append(_typed(text, field.metadata[b"timestream_type"].decode()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SourceSchemaError(
                f"Timestream column {field.name!r}: cannot read a value as {field.type}: {exc}"
            ) from None
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def conform_unloaded(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """An UNLOAD Parquet batch with the query API's types: safe casts, naive timestamps read as UTC."""
    missing = [name for name in schema.names if name not in batch.schema.names]
    if missing:
        raise SourceSchemaError(f"UNLOAD files lack columns {missing}; they hold {batch.schema.names}")
    try:
        arrays = [batch.column(f.name).cast(f.type, safe=True) for f in schema]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SourceSchemaError(f"UNLOAD files: cannot cast to the query API's types: {exc}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def timestream_column(name: str, kind: str, attribute: str) -> Column:
    """Map one DESCRIBE row to a `Column`; unknown types or attributes raise `SourceSchemaError`."""
    logical = _LOGICAL_BY_TIMESTREAM_TYPE.get(kind.lower())
    if logical is None:
        raise SourceSchemaError(f"Timestream column {name!r} has type {kind}, which has no mapping")
    role = _ROLE_BY_ATTRIBUTE.get(attribute.upper())
    if role is None:
        raise SourceSchemaError(f"Timestream column {name!r} has unknown attribute type {attribute}")
    return Column(name=name, logical=logical, nullable=role != "time", source_type=kind, role=role)


def timestream_time(value: datetime) -> str:
    """A literal Timestream compares timestamps with: UTC, nanosecond-exact.

    A naive datetime is taken as UTC; a `pandas.Timestamp` keeps its nanoseconds. Anything
    but a datetime raises `ConfigError` (Timestream tables are chunked by time only).
    """
    if not isinstance(value, datetime):
        raise ConfigError(f"Timestream windows are time ranges; got {value!r} ({type(value).__name__})")
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    nanos = value.microsecond * 1000 + getattr(value, "nanosecond", 0)
    return f"from_iso8601_timestamp('{value.strftime('%Y-%m-%dT%H:%M:%S')}.{nanos:09d}Z')"


def _missing_table(exc: ClientError, *names: str) -> bool:
    error = exc.response.get("Error", {})
    message = str(error.get("Message", "")).lower()
    return error.get("Code") in _MISSING_TABLE_CODES and any(n.lower() in message for n in names)


class TimestreamSource(TimestreamTraits, Block, TimestreamReading):
    """Reads time windows of Timestream tables as Arrow record batches."""

    _block_type_name = "Migration Timestream Source"
    _block_type_slug = "migration-timestream-source"

    credentials: AwsCredentials = Field(description="prefect-aws credentials (region, keys or profile)")

    def _client(self):
        return self.credentials.get_client("timestream-query")

    def describe_target(self) -> str:
        return f"Timestream database {self.database}"

    def qualified(self, table: str) -> str:
        return f"{quote_timestream(self.database)}.{quote_timestream(table)}"

    # The SQL this source sends, one builder per statement (tests queue results for these exact strings).

    def describe_sql(self, table: str) -> str:
        return f"DESCRIBE {self.qualified(table)}"

    def bounds_sql(self, table: str, column: str) -> str:
        col = quote_timestream(column)
        return f"SELECT MIN({col}) AS lo, MAX({col}) AS hi FROM {self.qualified(table)}"

    def count_nulls_sql(self, table: str, column: str) -> str:
        return f"SELECT COUNT(*) AS n FROM {self.qualified(table)} WHERE {quote_timestream(column)} IS NULL"

    def _where(self, column: str, lower: datetime | None, upper: datetime | None) -> str:
        col, where = quote_timestream(column), []
        if lower is not None:
            where.append(f"{col} >= {timestream_time(lower)}")
        if upper is not None:
            where.append(f"{col} < {timestream_time(upper)}")
        return (" WHERE " + " AND ".join(where)) if where else ""

    def window_sql(
        self,
        table: str,
        columns: list[str] | None,
        column: str,
        lower: datetime | None,
        upper: datetime | None,
    ) -> str:
        """SELECT the columns (None: *) of the rows with lower <= column < upper (None: unbounded)."""
        select = ", ".join(quote_timestream(c) for c in columns) if columns else "*"
        return f"SELECT {select} FROM {self.qualified(table)}{self._where(column, lower, upper)}"

    def count_sql(self, table: str, column: str, lower: datetime | None, upper: datetime | None) -> str:
        return f"SELECT COUNT(*) AS n FROM {self.qualified(table)}{self._where(column, lower, upper)}"

    def unload_prefix(self, select_sql: str) -> str:
        """Where UNLOAD writes one SELECT's files: the same for the same SELECT, so retries reuse it."""
        digest = hashlib.sha1(select_sql.encode()).hexdigest()[:16]
        return f"{(self.unload_location or '').rstrip('/')}/{digest}/"

    def unload_sql(self, select_sql: str) -> str:
        return (
            f"UNLOAD ({select_sql}) TO {quote_literal(self.unload_prefix(select_sql))} "
            "WITH (format = 'PARQUET', compression = 'SNAPPY')"
        )

    # Running queries.

    def query_pages(self, sql: str) -> Iterator[dict[str, Any]]:
        """Every page of one query, following NextToken until Timestream stops sending one."""
        client = self._client()
        kwargs: dict[str, Any] = {"QueryString": sql}
        if self.page_rows:
            kwargs["MaxRows"] = self.page_rows
        while True:
            page = client.query(**kwargs)
            yield page
            token = page.get("NextToken")
            if not token:
                return
            kwargs["NextToken"] = token

    def query_batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        """The query's rows as record batches, one per non-empty page, all with one schema."""
        schema = None
        for page in self.query_pages(sql):
            page_columns = page_schema(page.get("ColumnInfo", []))
            if schema is None:
                schema = page_columns
            elif not page_columns.equals(schema):
                raise SourceSchemaError(
                    f"Timestream changed the result's columns between pages: {page_columns}"
                )
            if page.get("Rows"):
                yield page_to_batch(schema, page["Rows"])

    def query_rows(self, sql: str) -> list[dict[str, Any]]:
        """A small result (metadata, aggregates) as Python rows."""
        return [row for batch in self.query_batches(sql) for row in batch.to_pylist()]

    def _scalar(self, sql: str) -> Any:
        rows = self.query_rows(sql)
        return next(iter(rows[0].values())) if rows else None

    # The source protocol shared with SnowflakeSource.

    def check(self) -> None:
        """Raise `ConnectionCheckError` unless a trivial query succeeds."""
        try:
            list(self.query_pages(CHECK_SQL))
        except SourceSchemaError:
            raise
        except Exception as exc:
            raise ConnectionCheckError(f"cannot query {self.describe_target()}: {exc}") from None

    def describe(self, table: str) -> TableSchema:
        """The table's columns in DESCRIBE order, with their Timestream roles.

        A missing table (an empty DESCRIBE, or AWS's ValidationException or
        ResourceNotFoundException naming it) and an unmappable type raise `SourceSchemaError`;
        other client errors propagate unchanged.
        """
        missing = f"table {table} not found in Timestream database {self.database}"
        try:
            rows = self.query_rows(self.describe_sql(table))
        except ClientError as exc:
            if _missing_table(exc, table, self.database):
                raise SourceSchemaError(f"{missing}: {exc.response['Error']['Message']}") from None
            raise
        if not rows:
            raise SourceSchemaError(missing)
        try:
            columns = [(r["Column"], r["Type"], r["Timestream attribute type"]) for r in rows]
        except KeyError as exc:
            raise SourceSchemaError(f"DESCRIBE {table} answered without the column {exc}") from None
        return TableSchema(table=table, columns=tuple(timestream_column(*c) for c in columns))

    def bounds(self, table: str, column: str) -> tuple[Any, Any]:
        """(min, max) of a column; (None, None) for an empty table.

        Timestamps come back as aware UTC `pandas.Timestamp`s (datetimes that keep nanoseconds).
        """
        rows = self.query_rows(self.bounds_sql(table, column))
        return (rows[0]["lo"], rows[0]["hi"]) if rows else (None, None)

    def count(self, table: str, column: str, lower: datetime | None, upper: datetime | None) -> int:
        """Rows with lower <= column < upper (None: unbounded)."""
        return int(self._scalar(self.count_sql(table, column, lower, upper)) or 0)

    def count_nulls(self, table: str, column: str) -> int:
        """Rows where column is NULL; 0 without a query for `time`, which Timestream never leaves NULL."""
        if column == "time":
            return 0
        return int(self._scalar(self.count_nulls_sql(table, column)) or 0)

    def occupied_buckets(self, table: str, column: str, origin: Any, step: Any) -> list[int] | None:
        """None: Timestream tables are chunked by time windows only."""
        return None

    def read_chunk(
        self,
        table: str,
        columns: list[str] | None,
        column: str,
        lower: datetime | None,
        upper: datetime | None,
    ) -> Iterator[pa.RecordBatch]:
        """Rows with lower <= column < upper, through the Query API or UNLOAD (`export_mode`)."""
        select_sql = self.window_sql(table, columns, column, lower, upper)
        if self.export_mode == "unload":
            return self._unloaded_batches(table, columns, select_sql)
        return self.query_batches(select_sql)

    # UNLOAD mode.

    def _unload(self, select_sql: str) -> tuple[int, str]:
        """Run UNLOAD for one SELECT; return (rows it reports, its manifest's s3:// URI)."""
        rows = self.query_rows(self.unload_sql(select_sql))
        try:
            return int(rows[0]["rows"]), rows[0]["manifestFile"]
        except (IndexError, KeyError, TypeError):
            raise SourceSchemaError(f"UNLOAD answered without rows and manifestFile: {rows}") from None

    def _unloaded_batches(
        self, table: str, columns: list[str] | None, select_sql: str
    ) -> Iterator[pa.RecordBatch]:
        schema = table_arrow_schema(self.describe(table), columns)
        reported, manifest = self._unload(select_sql)
        files = ParquetFilesSource(
            location=self.unload_prefix(select_sql), manifest=manifest, credentials=self.credentials
        )
        read = 0
        if files.manifest_files():  # an UNLOAD of no rows may list no files at all
            files.check()
            for batch in files.dataset().to_batches(batch_size=UNLOAD_BATCH_ROWS):
                if batch.num_rows:
                    read += batch.num_rows
                    yield conform_unloaded(batch, schema)
        if read != reported:
            raise ValidationFailed(
                f"UNLOAD of {table} reported {reported} rows but its files under "
                f"{self.unload_prefix(select_sql)} hold {read}"
            )
