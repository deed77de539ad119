"""PostgreSQL: a source, a target that keeps its own job ledger, and the ledger of other targets.

This module holds the connection model (`PostgresConnection`, which the config's settings and
the saved `PostgresCredentials` block share) and what PostgreSQL can do. The blocks live in
`credentials`, `source`, `target` and `ledger_store`, imported when built: reading a config
never imports psycopg.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from blocks.seam import LoadMode
from blocks.settings import SystemSettings, load_saved_block, secret_from_env

# The login settings a PostgreSQL block once held itself, before `credentials` held them.
LOGIN_FIELDS = ("host", "port", "dbname", "user", "password", "sslmode", "connect_timeout")


class PostgresConnection(BaseModel):
    """Where a PostgreSQL server is and how to log in, without the secret: the one declaration
    the config's settings and the `PostgresCredentials` block both inherit."""

    host: str = "localhost"
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    sslmode: str = "prefer"
    connect_timeout: int = 10

    def describe_server(self) -> str:
        """`PostgreSQL user@host:port/dbname`: the server, never the password."""
        return f"PostgreSQL {self.user}@{self.host}:{self.port}/{self.dbname}"


def nest_login(data: Any) -> Any:
    """A block's fields with flat login keys (the shape saved before `credentials` existed)
    moved into `credentials`, so saved block documents of that shape keep loading.

    Keys already under `credentials` win over flat ones; anything that is not a dict is
    returned as it is, for pydantic to judge."""
    if not isinstance(data, dict) or not any(k in data for k in LOGIN_FIELDS):
        return data
    data = dict(data)
    flat = {k: data.pop(k) for k in LOGIN_FIELDS if k in data}
    nested = data.get("credentials")
    if nested is None:
        data["credentials"] = flat
    elif isinstance(nested, dict):
        data["credentials"] = {**flat, **nested}
    else:  # a credentials block already built: the flat keys cannot also apply
        raise ValueError(f"give the login either as credentials or as {sorted(flat)}, not both")
    return data


class PostgresTraits:
    """What PostgreSQL can do, as a source and as a target (the blocks share these flags)."""

    schema_can_drift: ClassVar[bool] = True
    stages_by_reference: ClassVar[bool] = False
    time_unit: ClassVar[str] = "us"
    time_range: ClassVar[tuple | None] = None  # wider than any time a source hands over
    display_name: ClassVar[str] = "PostgreSQL"
    transactional_load: ClassVar[bool] = True
    load_modes: ClassVar[frozenset[LoadMode]] = frozenset(LoadMode)
    keeps_row_provenance: ClassVar[bool] = True
    writes_points: ClassVar[bool] = False
    holds_ledger: ClassVar[bool] = True
    reads_table_files: ClassVar[bool] = False


class PostgresSettings(PostgresTraits, PostgresConnection, SystemSettings):
    """A PostgreSQL connection: a target, the ledger, or a source (whose `schema` is the one
    read from, and whose `block` names a saved migration-postgres-source block)."""

    type: Literal["postgres"]
    block: str | None = Field(default=None, description="Name of a saved migration-postgres-target block")
    password_env: str | None = None
    schema_name: str = Field(default="public", alias="schema", description="Schema the tables land in")

    def scope(self, lowercase_identifiers: bool) -> dict:
        """Where a job's tables land, as the job's fingerprint records it."""
        return {"schema": self.schema_name, "lowercase": lowercase_identifiers}

    @property
    def container(self) -> str:
        return self.schema_name

    def credentials(self, where: str):
        """The `PostgresCredentials` these settings name; the password comes from `password_env`."""
        from blocks.postgres.credentials import PostgresCredentials

        return PostgresCredentials(
            **{name: getattr(self, name) for name in PostgresConnection.model_fields},
            password=secret_from_env(self.password_env, f"{where}.password_env"),
        )

    def build_ledger(self, where: str):
        """The job ledger kept in this database (or in the saved target block's)."""
        from blocks.postgres.ledger_store import PostgresLedger

        if self.block:
            return PostgresLedger(credentials=self.build(where).credentials)
        return PostgresLedger(credentials=self.credentials(where))

    def build(self, where: str):
        if where == "source":
            from blocks.postgres.source import PostgresSource

            if self.block:
                return load_saved_block(PostgresSource, self.block, "source.block")
            return PostgresSource(credentials=self.credentials(where), schema_name=self.schema_name)
        from blocks.postgres.target import PostgresTarget

        if self.block:
            return load_saved_block(PostgresTarget, self.block, f"{where}.block")
        return PostgresTarget(credentials=self.credentials(where))
