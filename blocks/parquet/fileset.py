"""One set of Parquet files: a local folder or an S3 prefix, or a Timestream UNLOAD.

Timestream's `UNLOAD ... WITH (format='PARQUET')` writes result files plus a `manifest.json`
that lists every file with its row count. Given that manifest, exactly the files it lists are
read, and their row counts are checked against it; without one, every `*.parquet` file under
`location` is read. Time windows are read with a pushed-down filter, batch by batch.

Nothing here imports prefect-aws unless S3 is read with the default credentials: local files
cost a migration no AWS imports (seconds of a run's fixed cost).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from blocks.errors import ConnectionCheckError, MigrationError, SourceSchemaError, ValidationFailed
from blocks.parquet.scan import READ_BATCH_ROWS, FileFooter, column_bounds, read_footers, window_filter

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials


class ManifestFile(NamedTuple):
    """One file an UNLOAD manifest lists."""

    url: str
    rows: int
    bytes: int


class ParquetFiles:
    """Reads time windows of a set of Parquet files as Arrow record batches: the methods of
    `ParquetFileSet` and of the `ParquetFilesSource` block, over their `location`, `manifest`
    (a Timestream UNLOAD manifest.json, or None) and `credentials` (prefect-aws
    `AwsCredentials` for s3:// URIs; None: boto3's default chain)."""

    def describe_target(self) -> str:
        return f"Parquet files at {self.manifest or self.location}"

    def _filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        if not uri.startswith("s3://"):
            return pafs.LocalFileSystem(), uri
        if self.credentials is None:
            from prefect_aws import AwsCredentials  # boto3's default chain; imported only for S3

            creds = AwsCredentials()
        else:
            creds = self.credentials
        endpoint = creds.aws_client_parameters.endpoint_url if creds.aws_client_parameters else None
        options: dict[str, Any] = {"region": creds.region_name or "us-east-1"}
        if creds.aws_access_key_id:
            options["access_key"] = creds.aws_access_key_id
            options["secret_key"] = creds.aws_secret_access_key.get_secret_value()
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host, scheme=scheme)
        return pafs.S3FileSystem(**options), uri.removeprefix("s3://")

    def manifest_entries(self) -> list[ManifestFile]:
        """Every file an UNLOAD manifest lists: its URI, row count and size in bytes (0 when
        the manifest leaves the size out). A manifest of another shape raises `SourceSchemaError`."""
        fs, path = self._filesystem(self.manifest)
        with fs.open_input_stream(path) as stream:
            manifest = json.loads(stream.read())
        try:
            return [
                ManifestFile(
                    f["url"],
                    int(f["file_metadata"]["row_count"]),
                    int(f["file_metadata"].get("content_length_in_bytes") or 0),
                )
                for f in manifest["result_files"]
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise SourceSchemaError(
                f"{self.manifest} is not a Timestream UNLOAD manifest: missing {exc}"
            ) from None

    def manifest_files(self) -> list[tuple[str, int]]:
        """(file URI, row count) for every file an UNLOAD manifest lists."""
        return [(entry.url, entry.rows) for entry in self.manifest_entries()]

    def files(self) -> list[str]:
        """The manifest's files, or every *.parquet under `location` (none if it does not exist)."""
        if self.manifest:
            return [uri for uri, _ in self.manifest_files()]
        fs, path = self._filesystem(self.location)
        selector = pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True)
        found = sorted(
            i.path for i in fs.get_file_info(selector) if i.is_file and i.path.endswith(".parquet")
        )
        prefix = "s3://" if self.location.startswith("s3://") else ""
        return [prefix + p for p in found]

    def dataset(self, files: list[str] | None = None) -> ds.FileSystemDataset:
        """A dataset over `files` (default: `self.files()`); its schema is the first file's."""
        files = self.files() if files is None else files
        if not files:
            raise SourceSchemaError(f"no Parquet files found at {self.location}")
        fs, _ = self._filesystem(files[0])
        return ds.dataset([self._filesystem(f)[1] for f in files], format="parquet", filesystem=fs)

    def verify_manifest_rows(self, footers: list[FileFooter]) -> None:
        """Raise `ValidationFailed` unless every file holds the row count the manifest gives it."""
        expected = {self._filesystem(uri)[1]: rows for uri, rows in self.manifest_files()}
        for footer in footers:
            if footer.rows != expected.get(footer.path):
                raise ValidationFailed(
                    f"{footer.path} holds {footer.rows} rows, the UNLOAD manifest says "
                    f"{expected.get(footer.path)}"
                )

    def check(self) -> None:
        try:
            dataset = self.dataset()
            if self.manifest:
                self.verify_manifest_rows(read_footers(dataset))
        except MigrationError:
            raise
        except Exception as exc:
            raise ConnectionCheckError(f"cannot read {self.describe_target()}: {exc}") from None

    def schema(self) -> pa.Schema:
        return self.dataset().schema

    def _window(self, dataset: ds.Dataset, column: str, lower: datetime | None, upper: datetime | None):
        if column not in dataset.schema.names:
            raise SourceSchemaError(
                f"time column {column!r} not in {self.describe_target()}: {dataset.schema.names}"
            )
        condition = pc.field(column).is_valid()
        window = window_filter(dataset.schema, column, lower, upper)
        return condition if window is None else condition & window

    def read_chunk(
        self, column: str, lower: datetime | None, upper: datetime | None, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Rows with lower <= column < upper, streamed in batches of at most READ_BATCH_ROWS."""
        dataset = self.dataset()
        scanner = dataset.scanner(
            columns=columns, filter=self._window(dataset, column, lower, upper), batch_size=READ_BATCH_ROWS
        )
        yield from (b for b in scanner.to_batches() if b.num_rows)

    def count(self, column: str, lower: datetime | None, upper: datetime | None) -> int:
        dataset = self.dataset()
        return dataset.count_rows(filter=self._window(dataset, column, lower, upper))

    def bounds(self, column: str) -> tuple[Any, Any]:
        """(min, max) of a column over all files, read batch by batch."""
        return column_bounds(self.dataset(), column)


class ParquetFileSet(ParquetFiles):
    """A set of Parquet files as a plain object (no Prefect block, no validation on build)."""

    def __init__(
        self, location: str, manifest: str | None = None, credentials: AwsCredentials | None = None
    ) -> None:
        self.location, self.manifest, self.credentials = location, manifest, credentials
