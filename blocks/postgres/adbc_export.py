"""A chunk of a PostgreSQL table as Arrow record batches, read with the ADBC PostgreSQL driver.

The driver runs `COPY (SELECT …) TO STDOUT (FORMAT binary)` and decodes the binary rows into
Arrow arrays in C, a batch of about `batch_bytes` at a time, so no Python code touches a value
and memory holds about one batch (plus the one the caller is working on). The driver's Arrow
form is exact for every type `blocks.postgres.csv_export.pg_column` accepts; this module
brings it to the staged type:

- int2 and int4 widen to int64, real to double (both exact casts);
- numeric arrives as its text (an opaque extension type) and is cast to decimal128(p, s);
  the text always has exactly s decimals, so the cast never rounds, and NaN is refused;
- json and jsonb arrive as their text (jsonb's canonical form, as `jsonb::text` prints it);
- uuid is selected as `uuid::text`, the staged form;
- dates, times and timestamps arrive in Arrow's own units, but the driver maps infinity (and
  24:00) onto out-of-range numbers instead of refusing them, so each batch's range is checked:
  years 1 to 9999 and times below 24:00, as the text path accepts.

A value without an exact Arrow form raises `DataConversionError` naming the column. Connections
come from a small per-process pool (`_IDLE`): a SCRAM login cost 20 to 80 ms here, a sixth of
a 250k-row chunk's read; the connection string quotes every value and is never shown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from blocks.arrow_types import arrow_type
from blocks.columns import Column, LogicalType
from blocks.errors import ConnectionCheckError, DataConversionError
from blocks.postgres import pool as pg_pool

BATCH_HINT_OPTION = "adbc.postgresql.batch_size_hint_bytes"
MAX_IDLE_PER_KEY = 8
_IDLE: dict[tuple, list[adbc.Connection]] = {}
_LOCK = threading.Lock()

# The range the text path parses (years 1 to 9999), in each type's Arrow integer form.
_DAY_RANGE = (-719_162, 2_932_896)  # 0001-01-01 and 9999-12-31, in days from 1970-01-01
_US_RANGE = (-62_135_596_800_000_000, 253_402_300_799_999_999)
_TIME_RANGE = (0, 86_400_000_000 - 1)  # 24:00:00, which PostgreSQL allows, has no time64 form
_RANGES = {
    LogicalType.DATE: (pa.int32(), _DAY_RANGE),
    LogicalType.TIME: (pa.int64(), _TIME_RANGE),
    LogicalType.TIMESTAMP: (pa.int64(), _US_RANGE),
    LogicalType.TIMESTAMP_TZ: (pa.int64(), _US_RANGE),
}


def conninfo(credentials: Any, application_name: str) -> str:
    """A libpq `key='value'` connection string for a `PostgresCredentials` block: each value
    quoted (any password, or a socket directory as host, is safe), a read-only UTF-8 session.

    It holds the password: pass it to the driver only, never to a log or a message."""
    settings = {
        "host": credentials.host,
        "port": credentials.port,
        "dbname": credentials.dbname,
        "user": credentials.user,
        "password": credentials.secret() or None,  # none: libpq looks in PGPASSWORD and .pgpass
        "sslmode": credentials.sslmode,
        "connect_timeout": credentials.connect_timeout,
        "application_name": application_name,
        "client_encoding": "UTF8",
        "options": "-c default_transaction_read_only=on",
    }
    return " ".join(f"{key}={_quoted(value)}" for key, value in settings.items() if value is not None)


def _quoted(value: Any) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _open(credentials: Any, application_name: str) -> adbc.Connection:
    """A new autocommit connection; a login refused for good raises `ConnectionCheckError`, a
    server unavailable for now `ConnectionError` (the rules of `blocks.postgres.pool`)."""
    try:
        return adbc.connect(conninfo(credentials, application_name), autocommit=True)
    except adbc_driver_manager.Error as exc:
        detail = _scrubbed(str(exc), credentials)
        message = f"cannot connect to {credentials.describe_server()}: {detail}"
        if pg_pool.refused_for_good(detail):
            raise ConnectionCheckError(message) from None
        raise ConnectionError(message) from None


def _scrubbed(text: str, credentials: Any) -> str:
    # libpq does not echo the password; should a message ever quote the settings, it still must not.
    secret = credentials.secret()
    return text.strip().replace(secret, "***") if secret else text.strip()


def _alive(conn: adbc.Connection) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
        return True
    except adbc_driver_manager.Error:
        return False


@contextmanager
def connection(credentials: Any, application_name: str) -> Iterator[adbc.Connection]:
    """An idle connection for this login, or a new one; it goes back to the pool only when the
    work ended without an error (a failed COPY may leave it mid-stream)."""
    key = credentials.pool_key("source-adbc")
    conn = None
    while conn is None:
        with _LOCK:
            idle = _IDLE.get(key)
            candidate = idle.pop() if idle else None
        if candidate is None:
            conn = _open(credentials, application_name)
        elif _alive(candidate):
            conn = candidate
        else:  # a server restart or a terminated backend leaves a dead connection behind
            _close(candidate)
    clean = False
    try:
        yield conn
        clean = True
    finally:
        if clean:
            with _LOCK:
                idle = _IDLE.setdefault(key, [])
                if len(idle) < MAX_IDLE_PER_KEY:
                    idle.append(conn)
                    conn = None
        if conn is not None:
            _close(conn)


def _close(conn: adbc.Connection) -> None:
    try:
        conn.close()
    except adbc_driver_manager.Error:
        pass


def close_all() -> None:
    """Close every idle connection (tests that drop databases call this)."""
    with _LOCK:
        conns = [c for idle in _IDLE.values() for c in idle]
        _IDLE.clear()
    for conn in conns:
        _close(conn)


def select_expression(column: Column) -> sql.Composable:
    """The column as the SELECT list of the export names it: uuid as its text, the staged form."""
    ident = sql.Identifier(column.name)
    if column.source_type == "uuid":
        return sql.SQL("{}::text AS {}").format(ident, ident)
    return ident


class BatchConformer:
    """Brings the driver's record batches to the staged Arrow types, exactly, or raises
    `DataConversionError` naming the column."""

    def __init__(self, table: str, columns: list[Column]):
        self.table = table
        self.columns = columns
        self.schema = pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])

    def conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_columns != len(self.columns):
            raise DataConversionError(
                f"{self.table}: the export returned {batch.num_columns} columns, not {len(self.columns)}"
            )
        arrays = [
            self._column(arr, col, field.type)
            for arr, col, field in zip(batch.columns, self.columns, self.schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _column(self, arr: pa.Array, column: Column, staged: pa.DataType) -> pa.Array:
        if isinstance(arr, pa.ExtensionArray):  # numeric (opaque), json, jsonb: their text
            arr = arr.storage
        if arr.type != staged:
            try:
                arr = arr.cast(staged, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise self._refused(column, str(exc)) from None
        limits = _RANGES.get(column.logical)
        if limits is not None and arr.null_count < len(arr):
            as_int, (low, high) = limits
            found = pc.min_max(arr.view(as_int))
            lowest, highest = found["min"].as_py(), found["max"].as_py()
            if lowest < low or highest > high:
                raise self._refused(
                    column,
                    "infinity, a year outside 1 to 9999, or (for a time) 24:00 "
                    f"(found {lowest if lowest < low else highest} in Arrow's {arr.type} units)",
                )
        return arr

    def _refused(self, column: Column, why: str) -> DataConversionError:
        return DataConversionError(
            f"{self.table}.{column.name} ({column.source_type}): a value has no exact Arrow form: {why}"
        )


def read_batches(
    credentials: Any, query: str, conformer: BatchConformer, batch_bytes: int
) -> Iterator[pa.RecordBatch]:
    """Run `query` (a SELECT with its values inlined: the driver streams through COPY only
    without parameters) and yield its rows as staged record batches of about `batch_bytes`.

    The next batch is read and conformed on a worker thread while the caller handles this one
    (the driver releases the GIL), so the server keeps sending meanwhile; at most two batches
    are held. A connection lost meanwhile raises `ConnectionError` (transient); other driver
    errors keep their type, with the password scrubbed from the message should it appear."""
    with connection(credentials, "prefect-migrate-source") as conn, conn.cursor() as cur:
        cur.adbc_statement.set_options(**{BATCH_HINT_OPTION: str(batch_bytes)})
        try:
            cur.execute(query)
            batches = (conformer.conform(b) for b in cur.fetch_record_batch() if b.num_rows)
            with ThreadPoolExecutor(1, thread_name_prefix="pg-source-read") as reading:
                pending = reading.submit(next, batches, None)
                while (batch := pending.result()) is not None:
                    pending = reading.submit(next, batches, None)
                    yield batch
        except adbc_driver_manager.OperationalError as exc:
            raise ConnectionError(
                f"reading from {credentials.describe_server()}: {_scrubbed(str(exc), credentials)}"
            ) from None
