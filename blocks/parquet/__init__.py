"""Parquet files as a source: a folder per table (local or S3), or a Timestream UNLOAD manifest."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from blocks.settings import AwsAccess, SystemSettings


class ParquetTraits:
    schema_can_drift: ClassVar[bool] = False  # the files are checked against each other before a run
    stages_by_reference: ClassVar[bool] = False
    time_unit: ClassVar[str] = "ns"
    # Tables may name their own folder (`path`) or UNLOAD manifest (`manifest`).
    reads_table_files: ClassVar[bool] = True


class ParquetSettings(ParquetTraits, AwsAccess, SystemSettings):
    type: Literal["parquet"]
    location: str = Field(description="Folder or s3://bucket/prefix; each table is a sub-folder by default")

    def build(self, where: str, tables: dict[str, tuple[str | None, str | None]] | None = None):
        from blocks.parquet.source import ParquetTables

        return ParquetTables(location=self.location, credentials=self.aws_credentials(where), tables=tables)

    def build_source(self, tables: list):
        return self.build("source", {t.name: (t.path, t.manifest) for t in tables})
