"""Read PostgreSQL rows back in canonical form, and verify a chunk inside its load transaction.

The rows the load transaction wrote (their `xmin` is its id) are read back through COPY CSV,
a path independent of the load's binary encoder, each column cast to the canonical form of
its staged Arrow type under `TimeZone = UTC`:

- float/double as `float8`, compared by bits (so an existing `real` column, NaN and -0.0 show);
- integers as `bigint`, numeric by value at the staged scale, boolean, date, time;
- a tz-aware staged timestamp as a `timestamptz` instant; a `timestamp without time zone`
  column holding one is taken in the target's default TimeZone (what its readers see), so an
  instant shifted by a session time zone shows; a naive staged timestamp as `timestamp`;
- JSON as jsonb's canonical text on both sides (the staged text goes through a temp table);
- text as text; bytea as its bytes.

and compared with the staged chunk value by value (`blocks.diff`). A mismatch raises
`ValidationFailed` naming the column, one key and both values; the caller's transaction then
rolls back, so no wrong value is committed.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
from psycopg import sql

from blocks.columns import LogicalType
from blocks.diff import diff_tables, same_rows
from blocks.errors import ValidationFailed
from blocks.postgres.csv_copy import batch_to_copy_csv
from blocks.postgres.csv_export import hex_to_binary
from blocks.postgres.tables import TargetTable, ident

# The SQL cast that gives each staged Arrow type's canonical text (TimeZone is UTC meanwhile).
_CANONICAL = [
    (pa.types.is_floating, "float8"),
    (pa.types.is_integer, "bigint"),
    (pa.types.is_decimal, "numeric"),
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_date, "date"),
    (pa.types.is_time, "time"),
]


def _cast(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    for test, cast in _CANONICAL:
        if test(arrow_type):
            return cast
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "bytea"
    return None


def _json_columns(table: TargetTable) -> set[str]:
    return {c.name for c in table.columns if c.logical is LogicalType.JSON}


def read_rows(
    conn: psycopg.Connection,
    table: TargetTable,
    schema: pa.Schema,
    where: sql.Composable,
    params: Sequence[Any] = (),
) -> pa.Table:
    """The rows of `table` that `where` selects, typed as `schema` (the staged one), each column
    in its canonical form (see the module docstring). Sets TimeZone = UTC for the transaction."""
    naive, zone = _naive_columns(conn, table), _default_zone(conn)
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    # Rows in heap order, mostly the order COPY wrote them, so the cheapest check holds more
    # often (blocks.diff.same_rows): a parallel scan's Gather interleaves its workers' rows, a
    # synchronised scan starts mid-table.
    conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    conn.execute("SET LOCAL synchronize_seqscans = off")
    fields = [f for f in schema if _cast(f.type) is not None]
    json = _json_columns(table)
    select = sql.SQL(", ").join(_canonical(f, json, naive, zone) for f in fields)
    query = sql.SQL("COPY (SELECT {} FROM {}{}) TO STDOUT (FORMAT csv)").format(select, ident(table), where)
    wire = [pa.field(f.name, pa.string()) if _cast(f.type) == "bytea" else f for f in fields]
    rows = _copy_out(conn, query, tuple(params), wire)
    for i, f in enumerate(fields):
        if _cast(f.type) == "bytea":
            decoded = pa.chunked_array([hex_to_binary(c) for c in rows.column(i).chunks], pa.binary())
            rows = rows.set_column(i, f.name, decoded.cast(f.type))
    return rows


def _canonical(field: pa.Field, json: set[str], naive: set[str], zone: str) -> sql.Composable:
    column = sql.Identifier(field.name)
    if field.name in json:
        return sql.SQL("{}::jsonb::text").format(column)
    if pa.types.is_timestamp(field.type) and field.type.tz and field.name in naive:
        # A `timestamp without time zone` column holding an instant: the instant it denotes is
        # its wall time in the zone the target's own sessions default to.
        return sql.SQL("({} AT TIME ZONE {})").format(column, sql.Literal(zone))
    if _cast(field.type) == "bytea":
        return sql.SQL("encode({}::bytea, 'hex')").format(column)  # CSV cannot carry raw bytes
    return sql.SQL("{}::{}").format(column, sql.SQL(_cast(field.type)))


def _naive_columns(conn: psycopg.Connection, table: TargetTable) -> set[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped AND atttypid = 'timestamp'::regtype",
        (ident(table).as_string(conn),),
    ).fetchall()
    return {r[0] for r in rows}


def _default_zone(conn: psycopg.Connection) -> str:
    """The TimeZone a new session of the target gets (server, database or role default)."""
    return conn.execute("SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'").fetchone()[0]


def written_by(
    conn: psycopg.Connection,
    table: TargetTable,
    schema: pa.Schema,
    xid: int,
    within: tuple[sql.Composable, Sequence[Any]] | None = None,
    rows_written: int | None = None,
) -> pa.Table:
    """The rows transaction `xid` (the current one) wrote to `table`, in canonical form.

    `within`: the chunk's range as a WHERE clause and its parameters, and `rows_written` the
    rows the load sent. The rows are then read from that range only (an index on the chunk
    column serves it, as it serves the load's counts) instead of scanning the whole table for
    the transaction's id; when the range holds fewer or more of them than were sent (a trigger
    moved a row, say), the whole table is read, so such a row still shows. (The transaction's
    own row statistics, `pg_stat_xact_user_tables`, were tried instead: on a pooled connection
    they also held earlier transactions' rows not yet flushed.)"""
    mine = sql.SQL("xmin = %s::text::xid")
    if within is not None and rows_written is not None:
        where, params = within
        glue = sql.SQL(" AND ") if where.as_string(conn).strip() else sql.SQL(" WHERE ")
        rows = read_rows(conn, table, schema, where + glue + mine, [*params, str(xid)])
        if rows.num_rows == rows_written:
            return rows
    return read_rows(conn, table, schema, sql.SQL(" WHERE ") + mine, (str(xid),))


def canonical_staged(conn: psycopg.Connection, table: TargetTable, staged: pa.Table) -> pa.Table:
    """The staged chunk in the same canonical form as `read_rows` gives (JSON as jsonb text)."""
    for name in _json_columns(table) & set(staged.column_names):
        staged = staged.set_column(
            staged.schema.get_field_index(name), name, canonical_json(conn, staged[name])
        )
    return staged


def canonical_json(conn: psycopg.Connection, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """The staged JSON texts as jsonb's canonical text, in order, by one round trip through a
    temporary table (no per-value Python)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _verify_json (n bigint, j text) ON COMMIT DROP")
    conn.execute("TRUNCATE _verify_json")
    numbered = pa.table({"n": pa.array(range(len(values)), pa.int64()), "j": values})
    with conn.cursor() as cur, cur.copy("COPY _verify_json (n, j) FROM STDIN (FORMAT csv)") as copy:
        for batch in numbered.to_batches():
            copy.write(batch_to_copy_csv(batch))
    query = sql.SQL("COPY (SELECT j::jsonb::text FROM _verify_json ORDER BY n) TO STDOUT (FORMAT csv)")
    return _copy_out(conn, query, (), [pa.field("j", pa.string())]).column(0)


def _copy_out(conn: psycopg.Connection, query, params, fields: list[pa.Field]) -> pa.Table:
    # Parsed once the whole text is in: pyarrow's streaming CSV reader over the COPY held less
    # (content verification's peak RSS about 10% lower) but cost 0.6 s more CPU per 1M rows.
    buffer = io.BytesIO()
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        for block in copy:
            buffer.write(block)
    if not buffer.getbuffer().nbytes:
        return pa.schema(fields).empty_table()
    names = [f"c{i}" for i in range(len(fields))]
    try:
        parsed = pcsv.read_csv(
            pa.BufferReader(pa.py_buffer(buffer.getbuffer())),
            # One thread: the chunks in flight and the servers already keep the cores busy, and
            # the threaded parse costs more CPU for the same time.
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pcsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(
                column_types={n: f.type for n, f in zip(names, fields, strict=True)},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
    except pa.ArrowInvalid as exc:  # e.g. a numeric with more digits than the staged scale
        at = re.search(r"CSV column #(\d+)", str(exc))
        field = fields[int(at.group(1))] if at else None
        named = f"column {field.name} holds a value its staged type {field.type}" if field else "a value"
        raise ValidationFailed(f"{named} cannot hold exactly, so it differs from the source: {exc}") from exc
    return pa.table(parsed.columns, schema=pa.schema(fields))


def verify_chunk(
    conn: psycopg.Connection,
    table: TargetTable,
    staged: pa.Table,
    xid: int,
    where: str,
    within: tuple[sql.Composable, Sequence[Any]] | None = None,
) -> None:
    """Compare what transaction `xid` wrote to `table` (looking in the chunk's range `within`
    first, see `written_by`) with the staged chunk; raise `ValidationFailed` naming the first
    differing column, a key and both values."""
    try:
        written = written_by(conn, table, staged.schema, xid, within, staged.num_rows)
    except ValidationFailed as exc:
        raise ValidationFailed(f"{where}: {exc}") from exc
    staged, key = staged.select(written.column_names), list(table.primary_key)
    # Staged JSON that equals jsonb's canonical text is canonical already (a PostgreSQL source
    # stages it so): the server round trip that canonicalises it is paid only on a difference.
    if same_rows(staged, written, key):
        return
    diff = diff_tables(canonical_staged(conn, table, staged), written, key)
    if diff.same:
        return
    raise ValidationFailed(diff.describe(where))
