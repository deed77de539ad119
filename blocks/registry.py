"""From the `type` a config section gives to the system that serves it.

Each line names a settings model (`package:Class`). The settings model is small and imports
no client library; its `build()` imports the system's blocks when a migration uses it. Adding
a system is one package under `blocks/` and one line here.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module

SOURCES = {
    "snowflake": "blocks.snowflake:SnowflakeSettings",
    "postgres": "blocks.postgres:PostgresSettings",
    "timestream": "blocks.timestream:TimestreamSettings",
    "parquet": "blocks.parquet:ParquetSettings",
}
TARGETS = {
    "postgres": "blocks.postgres:PostgresSettings",
    "influxdb": "blocks.influxdb:InfluxSettings",
}
LEDGERS = {
    "postgres": "blocks.postgres:PostgresSettings",
}
STAGING = {
    "local": "blocks.staging:LocalStagingSettings",
    "s3": "blocks.staging:S3StagingSettings",
}


@cache
def settings_model(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def settings_models(kind: dict[str, str]) -> tuple[type, ...]:
    """The settings models of one kind, each once (PostgreSQL serves as source and target)."""
    return tuple(dict.fromkeys(settings_model(path) for path in kind.values()))
