"""`ParquetFilesSource`: one set of Parquet files (`blocks.parquet.fileset`) as a saved Prefect block."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.parquet.fileset import ManifestFile, ParquetFiles, ParquetFileSet

__all__ = ["ManifestFile", "ParquetFileSet", "ParquetFilesSource"]


class ParquetFilesSource(ParquetFiles, Block):
    """Reads time windows of a set of Parquet files as Arrow record batches."""

    _block_type_name = "Migration Parquet Files Source"
    _block_type_slug = "migration-parquet-files-source"

    location: str = Field(description="A local folder, or s3://bucket/prefix")
    manifest: str | None = Field(
        default=None, description="Timestream UNLOAD manifest.json (local path or s3://)"
    )
    credentials: AwsCredentials | None = Field(default=None, description="For s3:// locations")
