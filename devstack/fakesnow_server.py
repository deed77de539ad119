"""fakesnow's Snowflake stand-in server, with three fixes so it behaves like Snowflake.

- fakesnow 0.12.1 builds its timestamp struct arrays without a validity mask, so a NULL
  TIMESTAMP reaches the client as 1970-01-01. Real Snowflake keeps it NULL; the mask is passed
  through.
- fakesnow sends a whole result as one Arrow record batch. Snowflake sends several, and the
  connector converts each on its own (a timestamp column can come back in nanoseconds in one
  and microseconds in the next); results go out in batches of `ROWS_PER_BATCH` rows.
- `DATE_PART(NANOSECOND, ts)` fails outside 1677-09-21 .. 2262-04-11 (sqlglot casts to
  DuckDB's TIMESTAMP_NS first); Snowflake answers for every timestamp. DuckDB's own strftime
  reads the sub-second digits without that cast.

Test and demo support only.
"""

from __future__ import annotations

import argparse

import fakesnow.arrow as fake_arrow
import pyarrow as pa
import uvicorn
from sqlglot import exp
from sqlglot.generators.duckdb import DuckDBGenerator

ROWS_PER_BATCH = 1000

_original = fake_arrow.timestamp_to_sf_struct


def _timestamp_to_sf_struct_keeping_nulls(ts):
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    struct = _original(ts)
    if ts.null_count == 0:
        return struct
    return pa.StructArray.from_arrays(struct.flatten(), fields=list(struct.type), mask=ts.is_null())


fake_arrow.timestamp_to_sf_struct = _timestamp_to_sf_struct_keeping_nulls


def _to_ipc_in_batches(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=ROWS_PER_BATCH)
    return sink.getvalue()


_extract_sql = DuckDBGenerator.extract_sql


def _extract_sql_over_the_whole_range(self, expression: exp.Extract) -> str:
    moment = expression.expression
    if expression.this.name.upper() != "NANOSECOND" or moment.is_type(exp.DType.TIME, exp.DType.TIMETZ):
        return _extract_sql(self, expression)
    strftime = exp.Anonymous(this="STRFTIME", expressions=[moment, exp.Literal.string("%n")])
    return self.sql(exp.cast(strftime, exp.DataType.build("BIGINT")))


DuckDBGenerator.extract_sql = _extract_sql_over_the_whole_range


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import fakesnow.server

    fakesnow.server.to_ipc = _to_ipc_in_batches
    uvicorn.run(fakesnow.server.app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
