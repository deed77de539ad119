"""Amazon Timestream for LiveAnalytics as a migration source (query API, or UNLOAD to S3).

`TimestreamSource` runs one SQL query per time-window chunk through timestream-query's
`Query`, follows `NextToken` until it is absent (an empty page, even an empty first page, is
normal while Timestream is still working), and turns each page into one Arrow record batch
typed by the page's `ColumnInfo`. Credentials come from prefect-aws's `AwsCredentials`.

With `export_mode="unload"` a chunk is instead exported by `UNLOAD (<window SELECT>) TO s3://...`
as Parquet, read through the UNLOAD manifest, and cast to the types the query API would have
given the same columns, so both modes hand the export step identical batches. In unload mode
the source stages by reference (`reference_chunk`): the load reads the UNLOAD's files in place,
and nothing is copied into staging. The type map and the decoding of both live in
`blocks.timestream.scalars`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from botocore.exceptions import ClientError
from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.chunk_rows import ChunkReference, ParquetRows
from blocks.columns import TableSchema
from blocks.errors import ConfigError, ConnectionCheckError, SourceSchemaError, ValidationFailed
from blocks.parquet.fileset import ParquetFileSet
from blocks.timestream import TimestreamReading, TimestreamTraits
from blocks.timestream.scalars import (
    conform_unloaded,
    page_schema,
    page_to_batch,
    table_arrow_schema,
    timestream_column,
)
from blocks.timeunits import NS_PER_UNIT

CHECK_SQL = "SELECT 1"
UNLOAD_BATCH_ROWS = 65_536
_MISSING_TABLE_CODES = ("ValidationException", "ResourceNotFoundException")


def quote_timestream(identifier: str) -> str:
    """Quote one Timestream identifier (double quotes, inner quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A Timestream string literal (single quotes, inner quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def timestream_time(value: datetime) -> str:
    """A literal Timestream compares timestamps with: UTC, nanosecond-exact.

    A naive datetime is taken as UTC; a `pandas.Timestamp` keeps its nanoseconds. Anything
    but a datetime raises `ConfigError` (Timestream tables are chunked by time only).
    """
    if not isinstance(value, datetime):
        raise ConfigError(f"Timestream windows are time ranges; got {value!r} ({type(value).__name__})")
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    nanos = value.microsecond * NS_PER_UNIT["us"] + getattr(value, "nanosecond", 0)
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
        # UNLOAD's compression is GZIP or NONE (AWS's UNLOAD reference); GZIP is its default.
        return (
            f"UNLOAD ({select_sql}) TO {quote_literal(self.unload_prefix(select_sql))} "
            "WITH (format = 'PARQUET', compression = 'GZIP')"
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

    def reference_chunk(
        self,
        table: str,
        columns: list[str] | None,
        column: str,
        lower: datetime | None,
        upper: datetime | None,
    ) -> ChunkReference:
        """UNLOAD the chunk (unload mode) and hand over exactly the files its manifest lists,
        read in place and cast to the query API's types as `read_chunk` would.

        `rows.num_rows` is the files' own count (their footers); `reported_rows` the count
        the UNLOAD and its manifest report, which validation holds it to. An UNLOAD whose
        answer and manifest disagree raises `ValidationFailed` naming the table and range."""
        select_sql = self.window_sql(table, columns, column, lower, upper)
        schema = table_arrow_schema(self.describe(table), columns)
        reported, manifest = self._unload(select_sql)
        files = ParquetFileSet(
            location=self.unload_prefix(select_sql), manifest=manifest, credentials=self.credentials
        )
        entries = files.manifest_entries()
        listed = sum(entry.rows for entry in entries)
        if listed != reported:
            raise ValidationFailed(
                f"UNLOAD of {table} [{lower}, {upper}) reported {reported} rows but its manifest "
                f"{manifest} lists {listed}"
            )
        filesystem, _ = files._filesystem(manifest)
        paths = [files._filesystem(entry.url)[1] for entry in entries]
        rows = ParquetRows(
            paths, schema, filesystem=filesystem, transform=lambda batch: conform_unloaded(batch, schema)
        )
        return ChunkReference(rows, uri=manifest, bytes=sum(e.bytes for e in entries), reported_rows=listed)

    def _unloaded_batches(
        self, table: str, columns: list[str] | None, select_sql: str
    ) -> Iterator[pa.RecordBatch]:
        schema = table_arrow_schema(self.describe(table), columns)
        reported, manifest = self._unload(select_sql)
        files = ParquetFileSet(
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
