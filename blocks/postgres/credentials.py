"""`PostgresCredentials`: how to log in to a PostgreSQL server, as a saved Prefect block.

Like prefect-snowflake's `SnowflakeCredentials`, the login lives apart from the I/O blocks
(`PostgresTarget`, `PostgresSource` and the ledger each hold one), and the non-secret fields
are the `PostgresConnection` the config's settings use too.
"""

from __future__ import annotations

from typing import Any

import psycopg
from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr, model_validator

from blocks.postgres import PostgresConnection, nest_login
from blocks.postgres import pool as pg_pool


class PostgresCredentials(Block, PostgresConnection):
    """A PostgreSQL login: server, database, user, password, SSL mode and connect timeout."""

    _block_type_name = "Migration PostgreSQL Credentials"
    _block_type_slug = "migration-postgres-credentials"

    password: SecretStr | None = None

    def secret(self) -> str:
        """The password in clear ("" when none is set)."""
        return self.password.get_secret_value() if self.password else ""

    def connect_kwargs(self, **options: Any) -> dict[str, Any]:
        """Keyword arguments for `psycopg.connect`, the password included, plus `options`."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.secret() or None,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
            **options,
        }

    def get_connection(self, application_name: str, **options: Any) -> psycopg.Connection:
        """A new connection, never pooled. A login refused for good raises `ConnectionCheckError`,
        a server unavailable for now `ConnectionError` (see `blocks.postgres.pool`)."""
        return pg_pool.open_connection(self, application_name, **options)

    def pool_key(self, use: str) -> tuple:
        """What makes two connections of this login interchangeable for `use`."""
        return pg_pool.pool_key(use, self)


class PostgresLogin(BaseModel):
    """The login part every PostgreSQL I/O block shares: its `credentials`, given nested or, as
    saved blocks from before `credentials` existed hold them, as flat fields."""

    credentials: PostgresCredentials = Field(default_factory=PostgresCredentials)

    @model_validator(mode="before")
    @classmethod
    def _nest_login(cls, data: Any) -> Any:
        return nest_login(data)

    def describe_target(self) -> str:
        return self.credentials.describe_server()
