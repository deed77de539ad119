"""Register this project's block types with the Prefect server, so the UI can create them.

    python -m deployments.register_blocks

Idempotent: registering again updates the block types in place.
"""

from __future__ import annotations

from blocks.influxdb import InfluxDBTarget
from blocks.parquet_files import ParquetFilesSource
from blocks.pg_source import PostgresSource
from blocks.postgres import PostgresTarget
from blocks.s3_staging import S3Staging
from blocks.snowflake import SnowflakeSource
from blocks.sns import SnsNotification
from blocks.staging import LocalStaging
from blocks.timestream import TimestreamSource

BLOCK_TYPES = (
    PostgresTarget,
    PostgresSource,
    SnowflakeSource,
    LocalStaging,
    S3Staging,
    TimestreamSource,
    ParquetFilesSource,
    InfluxDBTarget,
    SnsNotification,
)


def register() -> list[str]:
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [b.get_block_type_slug() for b in BLOCK_TYPES]


if __name__ == "__main__":
    print("registered block types:", ", ".join(register()))
