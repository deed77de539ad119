"""PostgreSQL: a source, a target that keeps its own job ledger, and the ledger of other targets.

This module holds the connection settings `migrations.yaml` gives and what a PostgreSQL
target can do; the blocks live in `source`, `target` and `ledger`, imported when built.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from blocks.seam import LoadMode
from blocks.settings import SystemSettings, load_saved_block, secret_from_env


class PostgresTraits:
    """What PostgreSQL can do, as a source and as a target (the blocks share these flags)."""

    schema_can_drift: ClassVar[bool] = True
    time_unit: ClassVar[str] = "us"
    transactional_load: ClassVar[bool] = True
    load_modes: ClassVar[frozenset[LoadMode]] = frozenset(LoadMode)
    keeps_row_provenance: ClassVar[bool] = True
    writes_points: ClassVar[bool] = False
    holds_ledger: ClassVar[bool] = True
    reads_table_files: ClassVar[bool] = False


class PostgresSettings(PostgresTraits, SystemSettings):
    """A PostgreSQL connection: a target, the ledger, or a source (whose `schema` is the one
    read from, and whose `block` names a saved migration-postgres-source block)."""

    type: Literal["postgres"]
    block: str | None = Field(default=None, description="Name of a saved migration-postgres-target block")
    host: str = "localhost"
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    password_env: str | None = None
    sslmode: str = "prefer"
    schema_name: str = Field(default="public", alias="schema", description="Schema the tables land in")
    connect_timeout: int = 10

    def scope(self, lowercase_identifiers: bool) -> dict:
        """Where a job's tables land, as the job's fingerprint records it."""
        return {"schema": self.schema_name, "lowercase": lowercase_identifiers}

    @property
    def container(self) -> str:
        return self.schema_name

    def _login(self, where: str) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": secret_from_env(self.password_env, f"{where}.password_env"),
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
        }

    def build_ledger(self, where: str):
        """The job ledger kept in this database."""
        return self.build(where)

    def build(self, where: str):
        if where == "source":
            from blocks.postgres.source import PostgresSource

            if self.block:
                return load_saved_block(PostgresSource, self.block, "source.block")
            return PostgresSource(**self._login(where), schema_name=self.schema_name)
        from blocks.postgres.target import PostgresTarget

        if self.block:
            return load_saved_block(PostgresTarget, self.block, f"{where}.block")
        return PostgresTarget(**self._login(where))
