"""Content verification of a chunk inside its load transaction (WIP, issue 13).

The rows the transaction wrote (their `xmin` is its id) are read back through COPY text, a
path independent of the load's binary encoder, each column cast to the canonical form of its
staged Arrow type, and compared with the staged chunk value by value. A mismatch raises
`ValidationFailed` naming the column, one key and both values; the caller's transaction then
rolls back, so no wrong value is committed.
"""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from psycopg import sql

from blocks.columns import LogicalType
from blocks.errors import ValidationFailed
from blocks.postgres.csv_copy import batch_to_copy_csv
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
    return None  # binary: not compared yet


def _json_columns(table: TargetTable) -> set[str]:
    return {c.name for c in table.columns if c.logical is LogicalType.JSON}


def read_back(conn: psycopg.Connection, table: TargetTable, schema: pa.Schema, xid: int) -> pa.Table:
    """The rows transaction `xid` wrote to `table`, typed as `schema` (the staged one); JSON
    columns as jsonb's canonical text (keys sorted, no insignificant space)."""
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    fields = [f for f in schema if _cast(f.type) is not None]
    json = _json_columns(table)
    select = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(
            sql.Identifier(f.name), sql.SQL("jsonb::text" if f.name in json else _cast(f.type))
        )
        for f in fields
    )
    query = sql.SQL("COPY (SELECT {} FROM {} WHERE xmin = %s::text::xid) TO STDOUT (FORMAT csv)").format(
        select, ident(table)
    )
    return _copy_out(conn, query, (str(xid),), fields)


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
    buffer = io.BytesIO()
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        for block in copy:
            buffer.write(block)
    if not buffer.getbuffer().nbytes:
        return pa.schema(fields).empty_table()
    names = [f"c{i}" for i in range(len(fields))]
    parsed = pcsv.read_csv(
        pa.BufferReader(buffer.getvalue()),
        read_options=pcsv.ReadOptions(column_names=names),
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
    return pa.table(parsed.columns, schema=pa.schema(fields))


def verify_chunk(
    conn: psycopg.Connection, table: TargetTable, staged: pa.Table, xid: int, where: str
) -> None:
    """Compare what transaction `xid` wrote to `table` with the staged chunk; see `compare`."""
    written = read_back(conn, table, staged.schema, xid)
    for name in _json_columns(table) & set(written.column_names):
        staged = staged.set_column(
            staged.schema.get_field_index(name), name, canonical_json(conn, staged[name])
        )
    compare(staged, written, list(table.primary_key), where)


def _comparable(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    # Floats by their bits: NaN equals NaN, and -0.0 differs from 0.0, as stored.
    if pa.types.is_float64(arr.type):
        return pa.chunked_array([c.view(pa.int64()) for c in arr.chunks], pa.int64())
    return arr


def compare(staged: pa.Table, written: pa.Table, key: list[str], where: str) -> None:
    """Raise `ValidationFailed` at the first column whose values differ, naming a key and both values."""
    if staged.num_rows != written.num_rows:
        raise ValidationFailed(f"{where}: wrote {written.num_rows} rows, staged {staged.num_rows}")
    staged = staged.select(written.column_names)
    order = [(k, "ascending") for k in (key or written.column_names)]
    staged, written = staged.sort_by(order), written.sort_by(order)
    for name in written.column_names:
        a, b = _comparable(staged[name]), _comparable(written[name])
        same = pc.or_kleene(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b)))
        differs = pc.invert(pc.fill_null(same, False))
        if pc.any(differs).as_py():
            i = pc.index(differs, True).as_py()
            row = {k: staged[k][i].as_py() for k in (key or [])}
            raise ValidationFailed(
                f"{where}: column {name} holds {written[name][i].as_py()!r} where the source has "
                f"{staged[name][i].as_py()!r}" + (f" (key {row})" if row else f" (row {i} in sort order)")
            )
