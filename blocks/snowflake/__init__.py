"""Snowflake: a source, read through prefect-snowflake's connector (credentials kept apart in
its `SnowflakeCredentials`, as prefect-snowflake does)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from blocks.settings import SystemSettings, load_saved_block, secret_from_env


class SnowflakeTraits:
    schema_can_drift: ClassVar[bool] = True
    stages_by_reference: ClassVar[bool] = False
    time_unit: ClassVar[str] = "ns"
    reads_table_files: ClassVar[bool] = False


class SnowflakeSettings(SnowflakeTraits, SystemSettings):
    type: Literal["snowflake"]
    block: str | None = Field(
        default=None, description="Name of a saved prefect-snowflake SnowflakeConnector"
    )
    account: str | None = None
    user: str | None = None
    password_env: str | None = Field(default=None, description="Environment variable holding the password")
    database: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    warehouse: str | None = None
    role: str | None = None
    host: str | None = None
    port: int | None = None
    protocol: Literal["http", "https"] | None = None
    login_timeout: int = 30

    @model_validator(mode="after")
    def _block_or_inline(self) -> SnowflakeSettings:
        if self.block is None:
            # password_env is the one way inline settings log in, and SnowflakeCredentials refuses
            # a login without one; key pairs, SSO and OAuth go through a saved connector block.
            needed = ("account", "user", "password_env", "database", "schema_name")
            missing = [k for k in needed if getattr(self, k) is None]
            if missing:
                names = ["schema" if m == "schema_name" else m for m in missing]
                raise ValueError(f"inline Snowflake settings need {', '.join(names)} (or set block)")
        return self

    def build(self, where: str):
        from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

        from blocks.snowflake.source import SnowflakeSource

        if self.block:
            connector = load_saved_block(SnowflakeConnector, self.block, f"{where}.block")
        else:
            credentials = SnowflakeCredentials(
                account=self.account,
                user=self.user,
                password=secret_from_env(self.password_env, f"{where}.password_env"),
                role=self.role,
            )
            connector = SnowflakeConnector(
                credentials=credentials,
                database=self.database,
                schema=self.schema_name,
                warehouse=self.warehouse or "COMPUTE_WH",
            )
        return SnowflakeSource(
            connector=connector,
            host=self.host,
            port=self.port,
            protocol=self.protocol,
            login_timeout=self.login_timeout,
        )
