"""Amazon Timestream for LiveAnalytics as a migration source (query API).

`TimestreamSource` runs one SQL query per time-window chunk through timestream-query's
`Query`, follows `NextToken` until it is absent (an empty page, even an empty first page, is
normal while Timestream is still working), and turns each page into one Arrow record batch
typed by the page's `ColumnInfo`. Credentials come from prefect-aws's `AwsCredentials`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.errors import ConnectionCheckError, SourceSchemaError

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


def quote_timestream(identifier: str) -> str:
    """Quote one Timestream identifier (double quotes, inner quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


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


def page_schema(column_info: list[dict[str, Any]]) -> pa.Schema:
    """The Arrow schema for a page's `ColumnInfo` (the Timestream type kept as field metadata)."""
    return pa.schema(
        [
            pa.field(
                c["Name"], _ARROW_BY_SCALAR[scalar_type(c)], metadata={"timestream_type": scalar_type(c)}
            )
            for c in column_info
        ]
    )


def _typed(values: pa.Array, kind: str) -> pa.Array:
    """Timestream's text form of one column (ScalarValue strings) to its Arrow type, exactly."""
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


def timestream_time(value: datetime) -> str:
    """A literal Timestream compares `time` with: nanosecond precision, UTC."""
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return f"from_iso8601_timestamp('{value.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}')"


class TimestreamSource(Block):
    """Reads time windows of Timestream tables as Arrow record batches."""

    _block_type_name = "Migration Timestream Source"
    _block_type_slug = "migration-timestream-source"

    credentials: AwsCredentials = Field(description="prefect-aws credentials (region, keys or profile)")
    database: str = Field(description="Timestream database, e.g. ons_energy_data")
    page_rows: int | None = Field(default=None, description="MaxRows per page (None: Timestream's default)")

    def _client(self):
        return self.credentials.get_client("timestream-query")

    def describe_target(self) -> str:
        return f"Timestream database {self.database}"

    def qualified(self, table: str) -> str:
        return f"{quote_timestream(self.database)}.{quote_timestream(table)}"

    def check(self) -> None:
        try:
            list(self.query_pages("SELECT 1"))
        except SourceSchemaError:
            raise
        except Exception as exc:
            raise ConnectionCheckError(f"cannot query {self.describe_target()}: {exc}") from None

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

    def window_sql(
        self, table: str, columns: list[str] | None, lower: datetime | None, upper: datetime | None
    ) -> str:
        select = ", ".join(quote_timestream(c) for c in columns) if columns else "*"
        where = []
        if lower is not None:
            where.append(f"time >= {timestream_time(lower)}")
        if upper is not None:
            where.append(f"time < {timestream_time(upper)}")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return f"SELECT {select} FROM {self.qualified(table)}{clause}"

    def read_chunk(
        self, table: str, columns: list[str] | None, lower: datetime | None, upper: datetime | None
    ) -> Iterator[pa.RecordBatch]:
        """Rows with lower <= time < upper, page by page."""
        return self.query_batches(self.window_sql(table, columns, lower, upper))

    def count(self, table: str, lower: datetime | None, upper: datetime | None) -> int:
        sql = self.window_sql(table, None, lower, upper).replace("SELECT *", "SELECT COUNT(*) AS n", 1)
        batches = list(self.query_batches(sql))
        return int(batches[0].column(0)[0].as_py()) if batches else 0
