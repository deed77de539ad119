"""Register this project's block types with the Prefect server, so the UI can create them.

    python -m deployments.register_blocks

Idempotent: registering again updates the block types in place.
"""

from __future__ import annotations

from blocks.influxdb.target import InfluxDBTarget
from blocks.notify.sns import SnsNotification
from blocks.parquet.files import ParquetFilesSource
from blocks.postgres.source import PostgresSource
from blocks.postgres.target import PostgresTarget
from blocks.snowflake.source import SnowflakeSource
from blocks.staging.local import LocalStaging
from blocks.staging.s3 import S3Staging
from blocks.timestream.source import TimestreamSource

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
