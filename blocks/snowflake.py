"""Snowflake as a migration source.

The block wraps prefect-snowflake's `SnowflakeConnector` (credentials plus database, schema
and warehouse) and adds what a migration needs: describe a table, count and bound a range,
and stream a range as Arrow record batches. `host`, `port` and `protocol` let it reach a
private endpoint or a local stand-in such as fakesnow's server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from prefect.blocks.core import Block
from prefect_snowflake import SnowflakeConnector
from pydantic import Field

from blocks.columns import Column, LogicalType, TableSchema
from blocks.errors import ConnectionCheckError, SourceSchemaError

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


def snowflake_unreachable(exc: Exception) -> bool:
    """True when a connect error means Snowflake could not be reached for now: the connector's
    `OperationalError` (no answer, a timeout, a 5xx) or a socket error. Refused logins
    (`DatabaseError` with Snowflake's 390xxx codes), an HTTP 403, a TLS certificate that will
    never verify, and bad settings are permanent."""
    from snowflake.connector.errors import NonRetryableTlsError, OperationalError, RevocationCheckError

    if isinstance(exc, NonRetryableTlsError | RevocationCheckError):
        return False
    return isinstance(exc, OperationalError | OSError)


class SnowflakeSource(Block):
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
            cur = conn.cursor()
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
        """Stream the rows with lower <= column < upper as Arrow batches, in server-sized pieces."""
        clause, params = self._range_sql(table, column, lower, upper)
        select = ", ".join(quote_snowflake(c) for c in columns)
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT {select} FROM {self.qualified(table)}{clause}", params)
            for table_piece in cur.fetch_arrow_batches():
                yield from table_piece.to_batches()

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
