"""PostgreSQL columns as Arrow types, and a chunk's `COPY ... TO STDOUT (FORMAT csv)` text
parsed into Arrow record batches, block by block, with an explicit type per column.

The session `PostgresSource` opens pins the text forms parsed here (UTC ISO times, doubles
with every digit, bytea as hex); `select_expression` adapts the few types whose text Arrow
cannot parse as is.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from psycopg import sql

from blocks.arrow_types import ARROW_TYPES, arrow_type
from blocks.columns import Column, LogicalType
from blocks.errors import DataConversionError, SourceSchemaError

_LOGICAL_BY_PG_TYPE = {
    "int2": LogicalType.INTEGER,
    "int4": LogicalType.INTEGER,
    "int8": LogicalType.INTEGER,
    "float4": LogicalType.FLOAT,
    "float8": LogicalType.FLOAT,
    "text": LogicalType.STRING,
    "varchar": LogicalType.STRING,
    "bpchar": LogicalType.STRING,
    "uuid": LogicalType.STRING,
    "bool": LogicalType.BOOLEAN,
    "date": LogicalType.DATE,
    "time": LogicalType.TIME,
    "timestamp": LogicalType.TIMESTAMP,
    "timestamptz": LogicalType.TIMESTAMP_TZ,
    "json": LogicalType.JSON,
    "jsonb": LogicalType.JSON,
    "bytea": LogicalType.BINARY,
}

# The Arrow type the CSV reader parses each logical type into: the staged type, except bytea,
# which arrives as hex text. With TimeZone = UTC a timestamptz's text always ends in "+00",
# which Arrow reads as a UTC offset.
_CSV_TYPE = {**ARROW_TYPES, LogicalType.BINARY: pa.string()}

_MAX_DECIMAL_PRECISION = 38  # decimal128, which staged files use for DECIMAL columns
_CSV_COLUMN = re.compile(r"In CSV column #(\d+): ")


def numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) from a numeric column's atttypmod; None for plain `numeric`."""
    if typmod < 0:
        return None
    packed = typmod - 4  # VARHDRSZ
    scale = packed & 0x7FF
    return (packed >> 16) & 0xFFFF, scale - 0x800 if scale & 0x400 else scale


def pg_column(name: str, type_name: str, typmod: int, formatted: str, not_null: bool) -> Column:
    """Map one pg_attribute row to a `Column`; a type without a mapping raises `SourceSchemaError`.

    `numeric` needs a declared precision and scale that decimal128 holds (0 <= scale <= precision
    <= 38): an unconstrained numeric could hold any value, so it is refused with a hint rather
    than guessed.
    """
    nullable = not not_null
    if type_name == "numeric":
        ps = numeric_typmod(typmod)
        if ps is None:
            raise SourceSchemaError(
                f"column {name!r} is numeric without precision and scale, which has no exact Arrow "
                "type; migrate from a view that casts it, e.g. "
                f"{name}::numeric(38,9), choosing a precision and scale its values fit"
            )
        precision, scale = ps
        if not 0 <= scale <= precision <= _MAX_DECIMAL_PRECISION:
            raise SourceSchemaError(
                f"column {name!r} is {formatted}; decimals need 0 <= scale <= precision <= 38, so "
                "migrate from a view that casts it to such a numeric, or to text"
            )
        return Column(
            name=name,
            logical=LogicalType.DECIMAL,
            precision=precision,
            scale=scale,
            nullable=nullable,
            source_type=formatted,
        )
    logical = _LOGICAL_BY_PG_TYPE.get(type_name)
    if logical is None:
        raise SourceSchemaError(
            f"column {name!r} has PostgreSQL type {formatted}, which has no mapping; "
            "migrate from a view that casts it to a supported type"
        )
    return Column(name=name, logical=logical, nullable=nullable, source_type=formatted)


def hex_to_binary(arr: pa.Array) -> pa.Array:
    """Hex text (as `encode(bytea, 'hex')` prints it) to binary, in one pass over the batch.

    Every value has an even number of hex digits, so the concatenated digits decode as one
    run and each value's offsets simply halve. NULLs stay NULL.
    """
    if arr.offset:
        arr = pa.concat_arrays([arr])  # rebase, so the buffers start at the first value
    validity, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=len(arr) + 1)
    start, end = int(offsets[0]), int(offsets[-1])
    decoded = binascii.a2b_hex(memoryview(data_buf)[start:end]) if end > start else b""
    half = ((offsets - start) // 2).astype(np.int32)
    return pa.Array.from_buffers(
        pa.binary(), len(arr), [validity, pa.py_buffer(half), pa.py_buffer(decoded)], arr.null_count
    )


def copy_blocks(copy: Iterable[Any], block_bytes: int) -> Iterator[bytearray]:
    """A COPY's output in blocks of whole rows, each at least `block_bytes` (but the last).

    The server sends one data message per row, so a block never splits a row, even one with
    a newline inside a quoted value. This loop only gathers buffers; Arrow does the parsing.
    """
    block = bytearray()
    for row in copy:
        block += row
        if len(block) >= block_bytes:
            yield block
            block = bytearray()
    if block:
        yield block


class CsvBlockParser:
    """Parses blocks of PostgreSQL `COPY ... (FORMAT csv)` output (whole rows) into record
    batches of the columns' Arrow types, without a Python step per value.

    NULL is the unquoted empty field and the empty string is `""`, so the two stay apart.
    A value Arrow cannot hold exactly raises `DataConversionError` naming the column.
    """

    def __init__(self, table: str, columns: list[Column]):
        self.table = table
        self.columns = columns
        self.names = [f"c{i}" for i in range(len(columns))]
        self.parse_options = pcsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
        self.convert_options = pcsv.ConvertOptions(
            column_types={n: _csv_type(c) for n, c in zip(self.names, columns, strict=True)},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        )
        self.schema = pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])

    def parse(self, block: bytes | bytearray) -> list[pa.RecordBatch]:
        # One Arrow block per COPY block, parsed on one thread: the caller overlaps the parse
        # with the next block's transfer, which is where the time goes.
        read_options = pcsv.ReadOptions(column_names=self.names, block_size=len(block) + 1, use_threads=False)
        try:
            parsed = pcsv.read_csv(
                pa.BufferReader(pa.py_buffer(block)),
                read_options=read_options,
                parse_options=self.parse_options,
                convert_options=self.convert_options,
            )
        except pa.ArrowInvalid as exc:
            raise _conversion_error(self.table, self.columns, exc) from None
        arrays = [
            hex_to_binary(chunked.combine_chunks()) if col.logical is LogicalType.BINARY else chunked
            for chunked, col in zip(parsed.columns, self.columns, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema).to_batches()


def select_expression(column: Column) -> sql.Composable:
    ident = sql.Identifier(column.name)
    if column.logical is LogicalType.BINARY:
        return sql.SQL("encode({}, 'hex')").format(ident)
    if column.source_type == "real":
        # real's shortest text ("0.1") would parse to a different double; the cast is exact.
        return sql.SQL("{}::float8").format(ident)
    return ident


def _csv_type(column: Column) -> pa.DataType:
    if column.logical is LogicalType.DECIMAL:
        return pa.decimal128(column.precision, column.scale)
    return _CSV_TYPE[column.logical]


def _conversion_error(table: str, columns: list[Column], exc: pa.ArrowInvalid) -> DataConversionError:
    text = str(exc)
    match = _CSV_COLUMN.search(text)
    if match and int(match.group(1)) < len(columns):
        col = columns[int(match.group(1))]
        text = _CSV_COLUMN.sub("", text)
        return DataConversionError(
            f"{table}.{col.name} ({col.source_type}): a value has no exact Arrow form: {text}"
        )
    return DataConversionError(f"{table}: cannot read the COPY output: {text}")
