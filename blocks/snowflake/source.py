"""Snowflake as a migration source.

The block wraps prefect-snowflake's `SnowflakeConnector` (credentials plus database, schema
and warehouse) and adds what a migration needs: describe a table, count and bound a range,
and stream a range as Arrow record batches. `host`, `port` and `protocol` let it reach a
private endpoint or a local stand-in such as fakesnow's server.

Timestamps are read exactly over Snowflake's whole range (years 1 to 9999). The connector
decodes each record batch's timestamps to nanoseconds when they fit (1677-09-21 ..
2262-04-11) and to microseconds when they do not, so batches of one result can disagree and
fail to assemble (snowflake-connector-python #1378). `force_microsecond_precision` drops finer
digits without a word, and connector 4.8 with it labels the nanoseconds it makes of a
TIMESTAMP(7..9) sent as a plain int64 as microseconds. So each timestamp column is selected as
its whole second (at scale 0, which every encoding and unit carries exactly) plus
`DATE_PART(NANOSECOND, ...)`, and `exact_times` rebuilds the value from the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect.blocks.core import Block
from prefect_snowflake import SnowflakeConnector
from pydantic import Field

from blocks.columns import Column, LogicalType, TableSchema
from blocks.errors import ConnectionCheckError, DataConversionError, SourceSchemaError
from blocks.snowflake import SnowflakeTraits
from blocks.timeunits import EPOCH, NS_PER_SECOND, NS_PER_UNIT, US_PER_SECOND

_LOGICAL_BY_SNOWFLAKE_TYPE = {
    "FLOAT": LogicalType.FLOAT,
    "FLOAT4": LogicalType.FLOAT,
    "FLOAT8": LogicalType.FLOAT,
    "DOUBLE": LogicalType.FLOAT,
    "REAL": LogicalType.FLOAT,
    "TEXT": LogicalType.STRING,
    "VARCHAR": LogicalType.STRING,
    "STRING": LogicalType.STRING,
    "CHAR": LogicalType.STRING,
    "BOOLEAN": LogicalType.BOOLEAN,
    "DATE": LogicalType.DATE,
    "TIME": LogicalType.TIME,
    "TIMESTAMP_NTZ": LogicalType.TIMESTAMP,
    "DATETIME": LogicalType.TIMESTAMP,
    "TIMESTAMP_TZ": LogicalType.TIMESTAMP_TZ,
    "TIMESTAMP_LTZ": LogicalType.TIMESTAMP_TZ,
    "VARIANT": LogicalType.JSON,
    "OBJECT": LogicalType.JSON,
    "ARRAY": LogicalType.JSON,
    "BINARY": LogicalType.BINARY,
    "VARBINARY": LogicalType.BINARY,
}


# The Snowflake type each timestamp column is read as, by its information_schema name.
_TIMESTAMP_TYPES = {
    "TIMESTAMP_NTZ": "TIMESTAMP_NTZ",
    "DATETIME": "TIMESTAMP_NTZ",
    "TIMESTAMP_LTZ": "TIMESTAMP_LTZ",
    "TIMESTAMP_TZ": "TIMESTAMP_TZ",
}
# Whole seconds whose every nanosecond fits Arrow's int64 nanoseconds; the two seconds just
# outside hold some that fit and some that do not.
_NS_SAFE_SECONDS = (-(2**63) // NS_PER_SECOND + 1, (2**63 - 1) // NS_PER_SECOND - 1)
_NS_RANGE = "1677-09-21 00:12:43.145224192 .. 2262-04-11 23:47:16.854775807"


def quote_snowflake(identifier: str) -> str:
    """Quote one Snowflake identifier exactly as written (case kept, quotes doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def snowflake_column(name: str, data_type: str, precision: Any, scale: Any, nullable: str) -> Column:
    """Map one information_schema row to a `Column`; unknown types raise `SourceSchemaError`."""
    kind = data_type.upper()
    if kind in ("NUMBER", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT"):
        p = int(precision) if precision is not None else 38
        s = int(scale) if scale is not None else 0
        logical = LogicalType.INTEGER if s == 0 else LogicalType.DECIMAL
        return Column(
            name=name,
            logical=logical,
            precision=p,
            scale=s,
            nullable=nullable == "YES",
            source_type=f"NUMBER({p},{s})",
        )
    logical = _LOGICAL_BY_SNOWFLAKE_TYPE.get(kind)
    if logical is None:
        raise SourceSchemaError(f"column {name!r} has Snowflake type {data_type}, which has no mapping")
    return Column(name=name, logical=logical, nullable=nullable == "YES", source_type=kind)


def timestamp_select(name: str, snowflake_type: str) -> tuple[str, str]:
    """The SQL that reads one timestamp column exactly: its whole second, as the same kind of
    timestamp at scale 0 (named as the column), and the nanoseconds of that second."""
    column = quote_snowflake(name)
    whole = f"CAST(DATE_TRUNC('SECOND', {column}) AS {_TIMESTAMP_TYPES[snowflake_type]}(0)) AS {column}"
    return whole, f"DATE_PART(NANOSECOND, {column})"


def exact_times(batch: pa.RecordBatch, columns: list[str], timed: list[int], table: str) -> pa.RecordBatch:
    """The batch's first `len(columns)` columns, named `columns`, with each timestamp column
    (positions `timed`) rebuilt from its whole seconds and the nanoseconds that follow in the
    batch, one column for each in `timed` order. Whatever unit the connector chose for the
    seconds, the result is microseconds, or nanoseconds when a value in the batch has finer
    digits. Such a value outside the nanosecond range raises `DataConversionError` naming the
    table, column and value: no Arrow unit holds it."""
    arrays = list(batch.columns[: len(columns)])
    for k, i in enumerate(timed):
        arrays[i] = _exact_time(arrays[i], batch.column(len(columns) + k), f"{table}.{columns[i]}")
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def _exact_time(seconds: pa.Array, nanoseconds: pa.Array, where: str) -> pa.Array:
    tz = seconds.type.tz
    try:
        whole = seconds.cast(pa.timestamp("s", tz), safe=True).cast(pa.int64())
    except pa.ArrowInvalid:
        raise DataConversionError(
            f"{where}: Snowflake sent a time that is not a whole second: {seconds}"
        ) from None
    nanos = nanoseconds.cast(pa.int64())
    micros = pc.divide(nanos, NS_PER_UNIT["us"])  # nanos >= 0: integer division is the floor
    finer = pc.not_equal(pc.subtract(nanos, pc.multiply(micros, NS_PER_UNIT["us"])), 0)
    if not pc.any(finer).as_py():
        return pc.add(pc.multiply(whole, US_PER_SECOND), micros).cast(pa.timestamp("us", tz))
    try:
        exact = pc.add_checked(pc.multiply_checked(whole, NS_PER_SECOND), nanos)
    except pa.ArrowInvalid:
        low, high = _NS_SAFE_SECONDS
        edge = pc.and_(finer, pc.or_(pc.less(whole, low), pc.greater(whole, high)))
        for row in pc.indices_nonzero(edge).to_pylist():
            s, n = whole[row].as_py(), nanos[row].as_py()
            if not -(2**63) <= s * NS_PER_SECOND + n < 2**63:
                moment = EPOCH + timedelta(seconds=s)
                value = f"{moment.isoformat(sep=' ')}.{n:09d}" + (" UTC" if tz else "")
                raise DataConversionError(
                    f"{where} holds {value}, finer than a microsecond (PostgreSQL keeps microseconds) "
                    f"and outside {_NS_RANGE}, where nanosecond times end: it cannot be staged exactly"
                ) from None
        raise
    return exact.cast(pa.timestamp("ns", tz))


def batches_disagree(exc: pa.ArrowInvalid, labels: list[str], table: str) -> DataConversionError | None:
    """The permanent error for the connector's "Schema at index N was different" (record batches
    of one result that came out with different column types), naming each such column of
    `labels` (the selected columns, in order); None for any other error."""
    text = str(exc)
    if " was different: " not in text or "\nvs\n" not in text:
        return None
    before, after = text.split(" was different: ", 1)[1].split("\nvs\n", 1)

    def fields(schema: str) -> list[str]:
        return [
            line
            for line in schema.splitlines()
            if line and not line[0].isspace() and not line.startswith("--")
        ]

    one, other = fields(before), fields(after)
    if len(one) == len(other) == len(labels):
        parts = [
            f"{table}.{label}: Snowflake sent it as {a.split(': ', 1)[-1]} in one record batch and as "
            f"{b.split(': ', 1)[-1]} in another"
            for label, a, b in zip(labels, one, other, strict=True)
            if a != b
        ]
    else:
        parts = [
            f"{table}: Snowflake sent record batches of different columns ({before.strip()} vs {after.strip()})"
        ]
    return DataConversionError("; ".join(parts) + ", so the chunk cannot be staged")


def snowflake_unreachable(exc: Exception) -> bool:
    """True when a connect error means Snowflake could not be reached for now: the connector's
    `OperationalError` (no answer, a timeout, a 5xx) or a socket error. Refused logins
    (`DatabaseError` with Snowflake's 390xxx codes), an HTTP 403, a TLS certificate that will
    never verify, and bad settings are permanent."""
    from snowflake.connector.errors import NonRetryableTlsError, OperationalError, RevocationCheckError

    if isinstance(exc, NonRetryableTlsError | RevocationCheckError):
        return False
    return isinstance(exc, OperationalError | OSError)


class SnowflakeSource(SnowflakeTraits, Block):
    """Reads ranges of Snowflake tables as Arrow record batches."""

    _block_type_name = "Migration Snowflake Source"
    _block_type_slug = "migration-snowflake-source"

    connector: SnowflakeConnector = Field(description="prefect-snowflake connector: credentials and database")
    host: str | None = Field(default=None, description="Override the host (private link or a local stand-in)")
    port: int | None = Field(default=None, description="Override the port")
    protocol: str | None = Field(default=None, description="http or https (default https)")
    login_timeout: int = Field(default=30, description="Seconds to wait for login before failing")

    def _connect_kwargs(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "database": self.connector.database,
            "schema": self.connector.schema_,
            "warehouse": self.connector.warehouse,
            "login_timeout": self.login_timeout,
            # Without this the connector turns scaled NUMBER columns into float64 Arrow arrays.
            "arrow_number_to_decimal": True,
            "network_timeout": self.login_timeout,
            # Out-of-band telemetry would phone home; a migration must work offline.
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
            # At each login the connector otherwise probes cloud metadata endpoints
            # (169.254.169.254 and others) to report its platform, stalling up to 5 s when
            # they do not answer.
            "platform_detection_timeout_seconds": 0.0,
        }
        for key in ("host", "port", "protocol"):
            if getattr(self, key) is not None:
                extra[key] = getattr(self, key)
        return extra

    @contextmanager
    def connection(self):
        """A fresh connection per caller, so concurrent chunks never share one.

        A login Snowflake refuses, or settings that cannot work, raise `ConnectionCheckError`
        (permanent); a service that cannot be reached or times out raises `ConnectionError`,
        which the steps' retries retry."""
        try:
            conn = self.connector.credentials.get_client(**self._connect_kwargs())
        except Exception as exc:  # the connector raises many types; all mean "cannot connect"
            message = f"cannot connect to Snowflake {self.describe_target()}: {exc}"
            secret = self.connector.credentials.password
            if secret is not None and secret.get_secret_value():
                message = message.replace(secret.get_secret_value(), "***")
            if snowflake_unreachable(exc):
                raise ConnectionError(message) from None
            raise ConnectionCheckError(message) from None
        try:
            yield conn
        finally:
            conn.close()

    def describe_target(self) -> str:
        where = f"{self.host}:{self.port}" if self.host else f"account {self.connector.credentials.account}"
        return f"({where}, database {self.connector.database})"

    def qualified(self, table: str) -> str:
        return ".".join(quote_snowflake(p) for p in (self.connector.database, self.connector.schema_, table))

    def check(self) -> None:
        """Raise `ConnectionCheckError` unless a login and a trivial query succeed; an
        unreachable service fails the check too (before a run it is a setting to fix)."""
        try:
            with self.connection() as conn:
                cur = conn.cursor()
                try:
                    cur.execute("SELECT 1")
                    cur.fetchall()
                except Exception as exc:
                    raise ConnectionCheckError(
                        f"Snowflake {self.describe_target()} refused a query: {exc}"
                    ) from None
        except ConnectionError as exc:
            raise ConnectionCheckError(str(exc)) from None

    def describe(self, table: str) -> TableSchema:
        """The table's columns in order. A missing table raises `SourceSchemaError`."""
        with self.connection() as conn:
            return self._describe(conn.cursor(), table)

    def _describe(self, cur: Any, table: str) -> TableSchema:
        cur.execute(
            "SELECT column_name, data_type, numeric_precision, numeric_scale, is_nullable "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position",
            (self.connector.schema_, table),
        )
        rows = cur.fetchall()
        if not rows:
            raise SourceSchemaError(
                f"table {table!r} not found in Snowflake {self.connector.database}.{self.connector.schema_}"
            )
        return TableSchema(table=table, columns=tuple(snowflake_column(*row) for row in rows))

    def _range_sql(self, table: str, column: str, lower: Any, upper: Any) -> tuple[str, tuple]:
        where, params = [], []
        if lower is not None:
            where.append(f"{quote_snowflake(column)} >= %s")
            params.append(lower)
        if upper is not None:
            where.append(f"{quote_snowflake(column)} < %s")
            params.append(upper)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return clause, tuple(params)

    def bounds(self, table: str, column: str) -> tuple[Any, Any]:
        """(min, max) of a column; (None, None) for an empty table."""
        with self.connection() as conn:
            cur = conn.cursor()
            col = quote_snowflake(column)
            cur.execute(f"SELECT MIN({col}), MAX({col}) FROM {self.qualified(table)}")
            lo, hi = cur.fetchone()
        return lo, hi

    def count(self, table: str, column: str, lower: Any, upper: Any) -> int:
        """Rows with lower <= column < upper."""
        clause, params = self._range_sql(table, column, lower, upper)
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT COUNT(*) FROM {self.qualified(table)}{clause}", params)
            return int(cur.fetchone()[0])

    def read_chunk(
        self, table: str, columns: list[str], column: str, lower: Any, upper: Any
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows with lower <= column < upper as Arrow batches, in server-sized pieces.

        Timestamps come exact from year 1 to 9999 (see the module's docstring), in microseconds,
        or in nanoseconds in a batch holding a finer value. A finer value outside the nanosecond
        range, or record batches whose column types disagree, raise `DataConversionError`
        naming the column, which is not retried."""
        clause, params = self._range_sql(table, column, lower, upper)
        with self.connection() as conn:
            cur = conn.cursor()
            types = {c.name: c.source_type for c in self._describe(cur, table).columns}
            timed = [i for i, name in enumerate(columns) if types.get(name) in _TIMESTAMP_TYPES]
            select = [quote_snowflake(name) for name in columns]
            nanoseconds = []
            for i in timed:
                select[i], extra = timestamp_select(columns[i], types[columns[i]])
                nanoseconds.append(extra)
            labels = columns + [f"DATE_PART(NANOSECOND, {columns[i]})" for i in timed]
            cur.execute(
                f"SELECT {', '.join(select + nanoseconds)} FROM {self.qualified(table)}{clause}", params
            )
            try:
                # The seconds are whole, so microseconds lose nothing; forcing them keeps one
                # unit for all batches where a server sends a finer scale anyway (fakesnow does).
                for piece in cur.fetch_arrow_batches(force_microsecond_precision=True):
                    for batch in piece.to_batches():
                        yield exact_times(batch, columns, timed, table)
            except pa.ArrowInvalid as exc:  # the connector assembles each piece from its batches
                error = batches_disagree(exc, labels, table)
                if error is None:
                    raise
                raise error from None

    def count_nulls(self, table: str, column: str) -> int:
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute(
                f"SELECT COUNT(*) FROM {self.qualified(table)} WHERE {quote_snowflake(column)} IS NULL"
            )
            return int(cur.fetchone()[0])

    def occupied_buckets(self, table: str, column: str, origin: int, step: int) -> list[int]:
        """floor((column - origin) / step) for every bucket that holds a row, ascending."""
        col = quote_snowflake(column)
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute(
                f"SELECT DISTINCT FLOOR(({col} - %s) / %s) AS b FROM {self.qualified(table)} "
                f"WHERE {col} IS NOT NULL ORDER BY b",
                (origin, step),
            )
            return [int(row[0]) for row in cur.fetchall()]
