"""Parquet files as a source: a folder per table (local or S3), or a Timestream UNLOAD manifest."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from blocks.settings import AwsAccess, SystemSettings


class ParquetTraits:
    schema_can_drift: ClassVar[bool] = False  # the files are checked against each other before a run
    time_unit: ClassVar[str] = "ns"
    # Tables may name their own folder (`path`) or UNLOAD manifest (`manifest`).
    reads_table_files: ClassVar[bool] = True


class ParquetSettings(ParquetTraits, AwsAccess, SystemSettings):
    type: Literal["parquet"]
    location: str = Field(description="Folder or s3://bucket/prefix; each table is a sub-folder by default")
    read_in_place: bool = Field(
        default=True,
        description="Load each chunk from the files themselves (true), or from a copy in staging (false)",
    )

    @property
    def stages_by_reference(self) -> bool:
        return self.read_in_place

    def build(self, where: str, tables: dict[str, tuple[str | None, str | None]] | None = None):
        from blocks.parquet.source import ParquetTables

        paths = [self.location, *(p for pair in (tables or {}).values() for p in pair if p)]
        on_s3 = any(p.startswith("s3://") for p in paths)
        return ParquetTables(
            location=self.location,
            # Local files need no AWS credentials, and no import of prefect-aws (seconds).
            credentials=self.aws_credentials(where) if on_s3 else None,
            tables=tables,
            read_in_place=self.read_in_place,
        )

    def build_source(self, tables: list):
        return self.build("source", {t.name: (t.path, t.manifest) for t in tables})
