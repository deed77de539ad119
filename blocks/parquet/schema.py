"""A Parquet table's columns: the Arrow-to-logical type map, the Timestream roles an UNLOAD's
column names reveal, and the check that every file of a table has the same schema."""

from __future__ import annotations

import pyarrow as pa

from blocks.columns import Column, LogicalType
from blocks.errors import SourceSchemaError
from blocks.parquet.scan import FileFooter, value_type


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
