"""Staging: where each chunk's Parquet file waits between export and load (local disk or S3)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from blocks.settings import AwsAccess, Strict, SystemSettings, load_saved_block


class LocalStagingSettings(Strict):
    type: Literal["local"] = "local"
    path: str = Field(default="staging", description="Folder (relative to the working directory)")

    def build(self, where: str = "staging"):
        from blocks.staging.local import LocalStaging

        return LocalStaging(path=self.path)


class S3StagingSettings(AwsAccess, SystemSettings):
    type: Literal["s3"]
    bucket_block: str | None = Field(default=None, description="Name of a saved prefect-aws S3Bucket block")
    bucket: str | None = None
    prefix: str = ""

    @model_validator(mode="after")
    def _block_or_bucket(self) -> S3StagingSettings:
        if self.bucket_block is None and self.bucket is None:
            raise ValueError("S3 staging needs bucket or bucket_block")
        return self

    def build(self, where: str = "staging"):
        from prefect_aws import S3Bucket

        from blocks.staging.s3 import S3Staging

        if self.bucket_block:
            bucket = load_saved_block(S3Bucket, self.bucket_block, f"{where}.bucket_block")
        else:
            bucket = S3Bucket(
                bucket_name=self.bucket, bucket_folder=self.prefix, credentials=self.aws_credentials(where)
            )
        return S3Staging(bucket=bucket)
