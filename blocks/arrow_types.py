"""The Arrow form every staged file takes, and the exact casts that get batches into it.

Staged files use target column names and one fixed Arrow type per logical type, so the
validate and load steps can check a file against the plan. Every cast is `safe`: a value
that would change (sub-microsecond time, an integer past int64) raises instead.
"""

from __future__ import annotations

import pyarrow as pa

from blocks.columns import Column, LogicalType
from blocks.errors import DataConversionError

# The staged Arrow type of each logical type (DECIMAL, and overridden INTEGER, take theirs from
# the column: see `arrow_type`).
ARROW_TYPES: dict[LogicalType, pa.DataType] = {
    LogicalType.INTEGER: pa.int64(),
    LogicalType.FLOAT: pa.float64(),
    LogicalType.STRING: pa.string(),
    LogicalType.BOOLEAN: pa.bool_(),
    LogicalType.DATE: pa.date32(),
    LogicalType.TIME: pa.time64("us"),
    LogicalType.TIMESTAMP: pa.timestamp("us"),
    LogicalType.TIMESTAMP_TZ: pa.timestamp("us", tz="UTC"),
    LogicalType.JSON: pa.string(),
    LogicalType.BINARY: pa.binary(),
}


_NANOSECONDS = {
    LogicalType.TIME: pa.time64("ns"),
    LogicalType.TIMESTAMP: pa.timestamp("ns"),
    LogicalType.TIMESTAMP_TZ: pa.timestamp("ns", tz="UTC"),
}


def arrow_type(column: Column, overridden: bool = False, nanoseconds: bool = False) -> pa.DataType:
    """Arrow type for a column; an overridden integer keeps full NUMBER precision as decimal.

    Times are staged in microseconds (PostgreSQL's precision), or in nanoseconds for targets
    that keep them (InfluxDB).
    """
    if column.logical is LogicalType.DECIMAL or (column.logical is LogicalType.INTEGER and overridden):
        return pa.decimal128(column.precision or 38, column.scale or 0)
    if nanoseconds and column.logical in _NANOSECONDS:
        return _NANOSECONDS[column.logical]
    return ARROW_TYPES[column.logical]


def staged_schema(columns: tuple[Column, ...], overrides: set[str], nanoseconds: bool = False) -> pa.Schema:
    """Schema of a staged file; `columns` carry target names, `overrides` the overridden ones."""
    return pa.schema(
        [
            pa.field(c.name, arrow_type(c, c.name in overrides, nanoseconds), nullable=c.nullable)
            for c in columns
        ]
    )


def conform(batch: pa.RecordBatch, schema: pa.Schema, source_names: list[str], table: str) -> pa.RecordBatch:
    """Rename and cast one source batch to the staged schema, exactly, or raise naming the column."""
    arrays = []
    for field, source_name in zip(schema, source_names, strict=True):
        arr = batch.column(source_name)
        if arr.type != field.type:
            try:
                arr = arr.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                hint = ""
                if pa.types.is_integer(field.type):
                    hint = (
                        f"; set type_overrides: {{{source_name}: numeric(38,0)}} to keep such values exactly"
                    )
                elif (
                    pa.types.is_timestamp(field.type) or pa.types.is_time(field.type)
                ) and field.type.unit == "us":
                    hint = "; PostgreSQL keeps microseconds, and this value has finer precision"
                elif pa.types.is_timestamp(field.type) and field.type.unit == "ns":
                    hint = (
                        "; nanosecond times (InfluxDB's) reach from 1677-09-21 to 2262-04-11 only: set "
                        "start_time and end_time within that range"
                    )
                raise DataConversionError(
                    f"{table}.{source_name}: cannot convert {arr.type} to {field.type} exactly: {exc}{hint}"
                ) from None
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
