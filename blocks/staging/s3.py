"""Staging in an S3 bucket through prefect-aws's `S3Bucket`.

Files are uploaded whole from a local temporary file, so a crash never leaves a half-written
object under a chunk's key. An upload or download that S3 does not complete (after boto3's
own retries) raises `StagingUnavailable`, naming the file's s3:// URI.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from prefect.blocks.core import Block
from prefect_aws import S3Bucket

from blocks.errors import ConnectionCheckError, TransientError
from blocks.staging.local import StagedFile, write_parquet

_S3_ERRORS = (Boto3Error, BotoCoreError, ClientError, OSError)


class StagingUnavailable(TransientError, RuntimeError):
    """Staging did not take or give back a chunk's file (unreachable, erroring, missing):
    transient, so the chunk step is retried. The message names the file's location, never a
    credential."""


class S3Staging(Block):
    """Staging in S3 through prefect-aws's `S3Bucket` (its `bucket_folder` prefixes every key)."""

    _block_type_name = "Migration S3 Staging"
    _block_type_slug = "migration-s3-staging"

    bucket: S3Bucket

    def describe_target(self) -> str:
        return f"S3 staging bucket s3://{self.bucket.bucket_name}/{self.bucket.bucket_folder}"

    def _client(self):
        return self.bucket.credentials.get_s3_client()

    def _key(self, key: str) -> str:
        folder = self.bucket.bucket_folder.strip("/")
        return f"{folder}/{key}" if folder else key

    def check(self) -> None:
        try:
            self._client().head_bucket(Bucket=self.bucket.bucket_name)
        except Exception as exc:
            raise ConnectionCheckError(f"cannot reach {self.describe_target()}: {exc}") from None

    def _failed(self, exc: Exception, doing: str) -> StagingUnavailable:
        # boto3 wraps the S3 error of an upload in S3UploadFailedError, with a local path around it
        cause = exc.__context__ if isinstance(exc, Boto3Error) and exc.__context__ is not None else exc
        return StagingUnavailable(f"cannot reach {self.describe_target()} while {doing}: {cause}")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket.bucket_name}/{self._key(key)}"

    def write(self, key: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> StagedFile:
        with tempfile.TemporaryDirectory(prefix="migrate-") as tmp:
            local = Path(tmp) / "chunk.parquet"
            rows = write_parquet(local, schema, batches)
            size = local.stat().st_size
            try:
                self._client().upload_file(str(local), self.bucket.bucket_name, self._key(key))
            except _S3_ERRORS as exc:
                raise self._failed(exc, f"uploading {self.uri(key)}") from None
        return StagedFile(uri=self.uri(key), rows=rows, bytes=size)

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="migrate-") as tmp:
            local = Path(tmp) / "chunk.parquet"
            try:
                self._client().download_file(self.bucket.bucket_name, self._key(key), str(local))
            except _S3_ERRORS as exc:
                raise self._failed(exc, f"downloading {self.uri(key)}") from None
            yield local

    def exists(self, key: str) -> bool:
        try:
            self._client().head_object(Bucket=self.bucket.bucket_name, Key=self._key(key))
            return True
        except Exception:
            return False

    def delete_prefix(self, prefix: str) -> None:
        client = self._client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket.bucket_name, Prefix=self._key(prefix)):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket.bucket_name, Delete={"Objects": keys})
