"""Timestream's scalar types: the Arrow and logical type each becomes, and the decoding of query
pages (`ScalarValue` text) and UNLOAD Parquet batches into the same Arrow types."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from blocks.columns import Column, LogicalType, TableSchema
from blocks.errors import SourceSchemaError
from blocks.timeunits import EPOCH

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
        # On the epoch's date a timestamp's nanoseconds are the time of day's.
        at_epoch = pc.binary_join_element_wise(f"{EPOCH.date().isoformat()} ", values, "")
        as_timestamp = at_epoch.cast(pa.timestamp("ns"))
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
