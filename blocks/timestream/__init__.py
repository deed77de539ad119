"""Amazon Timestream for LiveAnalytics: a source, read by the paged Query API or by UNLOAD to S3.

`TimestreamReading` is the one model of how a database is read; the config
(`TimestreamSettings`) and the block (`source.TimestreamSource`) both build on it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from blocks.settings import AwsAccess, SystemSettings, load_saved_block


class TimestreamTraits:
    schema_can_drift: ClassVar[bool] = False  # a DESCRIBE is a billed query
    time_unit: ClassVar[str] = "ns"
    reads_table_files: ClassVar[bool] = False


class TimestreamReading(BaseModel):
    database: str | None = Field(default=None, description="Timestream database, e.g. ons_energy_data")
    page_rows: int | None = Field(default=None, gt=0, description="MaxRows per query page")
    export_mode: Literal["query", "unload"] = Field(
        default="query", description="query: paged Query API; unload: UNLOAD to S3 as Parquet"
    )
    unload_location: str | None = Field(
        default=None, description="s3://bucket/prefix that UNLOAD writes under (export_mode unload)"
    )

    @field_validator("unload_location")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.startswith("s3://") or not value.removeprefix("s3://").strip("/")
        ):
            raise ValueError(f"must be an S3 URI, s3://bucket/prefix, got {value!r}")
        return value

    @property
    def stages_by_reference(self) -> bool:
        """In unload mode a chunk's UNLOAD files are read in place, not copied into staging."""
        return self.export_mode == "unload"

    def _inline(self) -> bool:
        return True

    @model_validator(mode="after")
    def _complete(self):
        if not self._inline():
            return self
        if self.database is None:
            raise ValueError("inline Timestream settings need database (or set block)")
        if self.export_mode == "unload" and not self.unload_location:
            raise ValueError("export_mode unload needs unload_location (an s3://bucket/prefix)")
        return self


class TimestreamSettings(TimestreamTraits, AwsAccess, SystemSettings, TimestreamReading):
    type: Literal["timestream"]
    block: str | None = Field(default=None, description="Name of a saved migration-timestream-source block")

    def _inline(self) -> bool:
        return self.block is None

    def build(self, where: str):
        from blocks.timestream.source import TimestreamSource

        if self.block:
            return load_saved_block(TimestreamSource, self.block, f"{where}.block")
        return TimestreamSource(
            credentials=self.aws_credentials(where),
            **self.model_dump(include=set(TimestreamReading.model_fields)),
        )
