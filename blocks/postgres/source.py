"""PostgreSQL as a migration source.

`PostgresSource` holds its login as `credentials` (a `PostgresCredentials` block) and the
schema it reads from, and streams a key or time range of a table as Arrow record batches.

A chunk is exported with one `COPY (SELECT … WHERE lower <= col < upper) TO STDOUT (FORMAT
csv)`. The rows arrive in blocks of about `copy_block_bytes`, and pyarrow's CSV parser turns
each block into a record batch with an explicit Arrow type per column, on a worker thread
while the next block arrives. No Python code touches individual values, and memory holds
about two blocks at a time, whatever the chunk's size. The session is pinned to the text forms Arrow parses
exactly: UTC times in ISO style, and doubles printed with every digit that round-trips.
The SELECT list adapts the few types whose text form Arrow cannot parse as is (bytea as
hex, decoded in bulk afterwards; real widened to double precision exactly).
"""

from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from prefect.blocks.core import Block
from psycopg import sql
from pydantic import Field, model_validator

from blocks.columns import Column, LogicalType, TableSchema
from blocks.errors import ConnectionCheckError, DataConversionError, SourceSchemaError
from blocks.postgres import PostgresTraits, nest_login
from blocks.postgres import pool as pg_pool
from blocks.postgres.credentials import PostgresCredentials

# The session settings whose text forms the CSV parse below relies on.
_SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'; SET client_encoding = 'UTF8'"
)

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

# The Arrow type the CSV reader parses each logical type into (bytea arrives as hex text).
_CSV_TYPE = {
    LogicalType.INTEGER: pa.int64(),
    LogicalType.FLOAT: pa.float64(),
    LogicalType.STRING: pa.string(),
    LogicalType.BOOLEAN: pa.bool_(),
    LogicalType.DATE: pa.date32(),
    LogicalType.TIME: pa.time64("us"),
    LogicalType.TIMESTAMP: pa.timestamp("us"),
    # With TimeZone = UTC the text always ends in "+00", which Arrow reads as a UTC offset.
    LogicalType.TIMESTAMP_TZ: pa.timestamp("us", tz="UTC"),
    LogicalType.JSON: pa.string(),
    LogicalType.BINARY: pa.string(),
}

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
        self.schema = pa.schema([pa.field(c.name, _arrow_type(c)) for c in columns])

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


class PostgresSource(PostgresTraits, Block):
    """Reads ranges of PostgreSQL tables (in one schema) as Arrow record batches."""

    _block_type_name = "Migration PostgreSQL Source"
    _block_type_slug = "migration-postgres-source"

    credentials: PostgresCredentials = Field(default_factory=PostgresCredentials)
    schema_name: str = Field(default="public", description="Schema the source tables live in")
    copy_block_bytes: int = Field(
        default=8 << 20, ge=1 << 16, description="Bytes of COPY data parsed at a time (bounds memory)"
    )

    @model_validator(mode="before")
    @classmethod
    def _nest_login(cls, data: Any) -> Any:
        """Saved blocks and callers from before `credentials` give the login as flat fields."""
        return nest_login(data)

    def describe_target(self) -> str:
        return self.credentials.describe_server()

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A read-only connection with the session settings the export relies on, reused within
        the process (`blocks.postgres.pool`) when its work ended without an error."""
        with pg_pool.pooled(self.credentials.pool_key("source"), self._open) as conn:
            yield conn
            conn.rollback()  # end the read-only transaction, so the connection can be reused

    def _open(self) -> psycopg.Connection:
        conn = self.credentials.get_connection("prefect-migrate-source", autocommit=True)
        try:
            conn.execute(_SESSION)
            conn.autocommit = False
            conn.read_only = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _table(self, table: str) -> sql.Identifier:
        return sql.Identifier(self.schema_name, table)

    def check(self) -> None:
        """Raise `ConnectionCheckError` unless a login succeeds and the schema exists.

        An unreachable server fails the check too: before a run it is a setting to fix, where
        during a run (`ConnectionError`) it is retried."""
        try:
            with self.connect() as conn:
                found = conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema_name,)
                ).fetchone()
        except ConnectionError as exc:
            raise ConnectionCheckError(str(exc)) from None
        if found is None:
            raise ConnectionCheckError(
                f"{self.describe_target()} has no schema {self.schema_name!r} (source.schema)"
            )

    def describe(self, table: str) -> TableSchema:
        """The table's (or view's) columns in order. A missing table, or a column whose type
        has no mapping, raises `SourceSchemaError` naming it."""
        with self.connect() as conn:
            return self._describe(conn, table)

    def _describe(self, conn: psycopg.Connection, table: str) -> TableSchema:
        rows = conn.execute(
            "SELECT a.attname, t.typname, a.atttypmod, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "LEFT JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "ORDER BY a.attnum",
            (self.schema_name, table),
        ).fetchall()
        if not rows:
            raise SourceSchemaError(
                f"table {table!r} not found in schema {self.schema_name!r} of {self.describe_target()}"
            )
        columns = []
        for name, type_name, typmod, formatted, not_null in rows:
            if name is None:
                continue  # a table without columns
            try:
                columns.append(pg_column(name, type_name, typmod, formatted, not_null))
            except SourceSchemaError as exc:
                raise SourceSchemaError(f"table {table}: {exc}") from None
        return TableSchema(table=table, columns=tuple(columns))

    def _range(self, column: str, lower: Any, upper: Any) -> tuple[sql.Composable, tuple]:
        col = sql.Identifier(column)
        where, params = [], []
        if lower is not None:
            where.append(sql.SQL("{} >= %s").format(col))
            params.append(lower)
        if upper is not None:
            where.append(sql.SQL("{} < %s").format(col))
            params.append(upper)
        if not where:
            return sql.SQL(""), ()
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where), tuple(params)

    def bounds(self, table: str, column: str) -> tuple[Any, Any]:
        """(min, max) of a column; (None, None) for an empty table."""
        col = sql.Identifier(column)
        query = sql.SQL("SELECT min({}), max({}) FROM {}").format(col, col, self._table(table))
        with self.connect() as conn:
            lo, hi = conn.execute(query).fetchone()
        return lo, hi

    def count(self, table: str, column: str, lower: Any, upper: Any) -> int:
        """Rows with lower <= column < upper (None: unbounded on that side)."""
        clause, params = self._range(column, lower, upper)
        query = sql.SQL("SELECT count(*) FROM {}").format(self._table(table)) + clause
        with self.connect() as conn:
            return int(conn.execute(query, params).fetchone()[0])

    def count_nulls(self, table: str, column: str) -> int:
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            self._table(table), sql.Identifier(column)
        )
        with self.connect() as conn:
            return int(conn.execute(query).fetchone()[0])

    def occupied_buckets(self, table: str, column: str, origin: int, step: int) -> list[int]:
        """floor((column - origin) / step) for every bucket that holds a row, ascending.

        Exact for any key: in bigint arithmetic, or in numeric when a key's distance from
        `origin` (or the step) does not fit a bigint.
        """
        params = {"o": int(origin), "s": int(step)}
        with self.connect() as conn:
            try:
                return self._buckets(conn, table, column, "bigint", "{k} / {s}", params)
            except psycopg.errors.NumericValueOutOfRange:
                conn.rollback()
                return self._buckets(conn, table, column, "numeric", "div({k}, {s})", params)

    def _buckets(
        self, conn: psycopg.Connection, table: str, column: str, kind: str, quotient: str, params: dict
    ) -> list[int]:
        # % truncates toward zero in both types; a negative remainder means floor is one lower.
        k, s = sql.SQL("k"), sql.SQL("%(s)s::" + kind)
        query = sql.SQL(
            "SELECT DISTINCT {q} - CASE WHEN k %% {s} < 0 THEN 1 ELSE 0 END AS b FROM "
            "(SELECT {c}::{kind} - %(o)s::{kind} AS k FROM {t} WHERE {c} IS NOT NULL) AS keys ORDER BY b"
        ).format(
            q=sql.SQL(quotient).format(k=k, s=s),
            s=s,
            c=sql.Identifier(column),
            kind=sql.SQL(kind),
            t=self._table(table),
        )
        return [int(row[0]) for row in conn.execute(query, params).fetchall()]

    def read_chunk(
        self, table: str, columns: list[str], column: str, lower: Any, upper: Any
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows with lower <= column < upper as Arrow batches, columns in the asked order.

        A column the table lacks raises `SourceSchemaError`; a value Arrow cannot hold exactly
        (numeric NaN, an infinite or BC date, time 24:00) raises `DataConversionError` naming
        the column.
        """
        with self.connect() as conn:
            yield from self._read(conn, table, columns, column, lower, upper)

    def _read(
        self, conn: psycopg.Connection, table: str, columns: list[str], column: str, lower: Any, upper: Any
    ) -> Iterator[pa.RecordBatch]:
        schema = self._describe(conn, table)
        missing = [c for c in columns if schema.column(c) is None]
        if missing:
            raise SourceSchemaError(
                f"table {table}: column(s) {missing} not found; the source has "
                f"{sorted(c.name for c in schema.columns)}"
            )
        picked = [schema.column(c) for c in columns]
        clause, params = self._range(column, lower, upper)
        select = sql.SQL(", ").join(_select_expression(c) for c in picked)
        query = (
            sql.SQL("COPY (SELECT {} FROM {}").format(select, self._table(table))
            + clause
            + sql.SQL(") TO STDOUT (FORMAT csv)")
        )
        parser = CsvBlockParser(table, picked)
        with conn.cursor() as cur, cur.copy(query, params) as copy:
            blocks = copy_blocks(copy, self.copy_block_bytes)
            first = next(blocks, None)
            second = next(blocks, None) if first is not None else None
            if second is None:  # a chunk of one block (or none) parses here: no thread to start
                if first is not None:
                    yield from parser.parse(first)
                return
            with ThreadPoolExecutor(1, thread_name_prefix="pg-source-parse") as parsing:
                # Block k parses in the worker while block k+1 arrives here, so the parse keeps
                # pace with the server; at most two raw blocks and one parsed block are held.
                pending = parsing.submit(parser.parse, first)
                for block in itertools.chain([second], blocks):
                    parsed = parsing.submit(parser.parse, block)
                    yield from pending.result()
                    pending = parsed
                yield from pending.result()


def _select_expression(column: Column) -> sql.Composable:
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


def _arrow_type(column: Column) -> pa.DataType:
    if column.logical is LogicalType.BINARY:
        return pa.binary()
    return _csv_type(column)


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
