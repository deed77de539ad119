"""The source-neutral description of a table's columns, shared by every source and target."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class LogicalType(StrEnum):
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    STRING = "string"
    BOOLEAN = "boolean"
    DATE = "date"
    TIME = "time"
    TIMESTAMP = "timestamp"
    TIMESTAMP_TZ = "timestamp_tz"
    JSON = "json"
    BINARY = "binary"


class Column(BaseModel, frozen=True):
    """One source column, with the logical type that decides its Arrow and target types."""

    name: str
    logical: LogicalType
    precision: int | None = None
    scale: int | None = None
    nullable: bool = True
    source_type: str = ""
    role: str | None = None  # Timestream attribute: "dimension", "measure_name", "measure", "time"


class TableSchema(BaseModel, frozen=True):
    table: str
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None


class TargetTable(BaseModel, frozen=True):
    """Where one source table lands, in target names."""

    schema_name: str
    name: str
    columns: tuple[Column, ...]
    chunk_column: str
    primary_key: tuple[str, ...] = ()
    type_overrides: dict[str, str] = Field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"
