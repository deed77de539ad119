"""What every system's settings model shares: strict parsing, secrets named by environment
variable, saved Prefect blocks, and AWS access.

Each system's package declares its settings model (the connection model the config and the
blocks both use) and a `build()` that returns its block; `blocks.registry` maps the config's
`type` to it. A settings model imports its block's module only inside `build()`, so reading a
config never loads a client library a migration does not use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from blocks.errors import ConfigError

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SystemSettings(Strict):
    """A source, target, staging area or ledger as `migrations.yaml` names it."""

    type: str
    kind: ClassVar[str] = ""  # "source", "target", "staging" or "ledger": what build() returns

    def build(self, where: str) -> Any:
        """The system's block; `where` ("source", "target", "ledger", …) prefixes error messages.

        Raises `ConfigError` naming the setting when a secret's environment variable is unset
        or a saved block cannot be loaded."""
        raise NotImplementedError

    def build_source(self, tables: list) -> Any:
        """The block as the migration's source; `tables` (its `TableSpec`s) for a source whose
        tables name their own files (`reads_table_files`)."""
        return self.build("source")


def secret_from_env(variable: str | None, setting: str) -> str | None:
    """The secret held in `variable`; a named but unset variable raises ConfigError (value never shown)."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"environment variable {variable} (named by {setting}) is not set")
    return value


def load_saved_block(block_type, name: str, setting: str):
    """The saved block `name` of `block_type`; any failure is a `ConfigError` naming `setting`."""
    try:
        return block_type.load(name)
    except Exception as exc:
        raise ConfigError(f"{setting}: cannot load {block_type.__name__} block {name!r}: {exc}") from None


class AwsAccess(Strict):
    """How to reach an AWS service: a saved prefect-aws AwsCredentials block, or inline settings
    with the keys named by environment variables (unset: boto3's default chain)."""

    credentials_block: str | None = Field(default=None, description="Name of a saved AwsCredentials block")
    region: str | None = None
    endpoint_url: str | None = Field(default=None, description="Override the AWS endpoint (e.g. a stand-in)")
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None

    def aws_credentials(self, where: str) -> AwsCredentials:
        """prefect-aws credentials from the saved block or from the inline settings."""
        from prefect_aws import AwsClientParameters, AwsCredentials

        if self.credentials_block:
            return load_saved_block(AwsCredentials, self.credentials_block, f"{where}.credentials_block")
        return AwsCredentials(
            aws_access_key_id=secret_from_env(self.access_key_id_env, f"{where}.access_key_id_env"),
            aws_secret_access_key=secret_from_env(
                self.secret_access_key_env, f"{where}.secret_access_key_env"
            ),
            region_name=self.region,
            aws_client_parameters=AwsClientParameters(endpoint_url=self.endpoint_url),
        )
