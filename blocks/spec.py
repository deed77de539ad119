"""The model of one migration in `migrations.yaml`: its source, target, ledger and staging
(each a system's settings model, found through `blocks.registry` by its `type`), its tables,
and how it runs. Reading the file is `tasks.config`'s job.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from blocks import registry
from blocks.seam import LoadMode
from blocks.settings import Strict


def _union(kind: dict[str, str]):
    models = registry.settings_models(kind)
    return Annotated[Union[models], Field(discriminator="type")] if len(models) > 1 else models[0]  # noqa: UP007


SourceSettings = _union(registry.SOURCES)
TargetSettings = _union(registry.TARGETS)
LedgerSettings = _union(registry.LEDGERS)
StagingSettings = _union(registry.STAGING)


class RetryPolicy(Strict, frozen=True):
    attempts: int = Field(default=3, ge=0, le=20, description="Retries after the first try")
    delay_seconds: float = Field(default=2.0, ge=0, description="First backoff delay; doubles each retry")
    jitter: float = Field(default=0.5, ge=0, le=1, description="Random spread as a fraction of the delay")


class FieldSettings(Strict):
    column: str
    key: str | None = Field(default=None, description="Field key (default: the column name)")
    kind: Literal["float", "integer", "unsigned", "string", "boolean"] | None = None


class MappingSettings(Strict):
    """How a table's rows become InfluxDB points; unset parts take the defaults in the README."""

    measurement: str | None = Field(default=None, description="Constant measurement name")
    measurement_column: str | None = Field(default=None, description="Column holding each row's measurement")
    tags: list[str] | None = None
    fields: list[str | FieldSettings] | None = None
    timestamp_fields: Literal["integer", "string"] = Field(
        default="integer", description="Timestamp measures as integer nanoseconds or RFC 3339 strings"
    )
    count_field: str | None = Field(
        default=None, description="A field every point carries; makes reconcile counts cheap"
    )

    @model_validator(mode="after")
    def _one_measurement(self) -> MappingSettings:
        if self.measurement is not None and self.measurement_column is not None:
            raise ValueError("give measurement or measurement_column, not both")
        return self


_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value):
    """'30m', '6h', '1d' to a timedelta; other values pass through for pydantic to check."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("use a number and a unit: 30m, 6h, 1d, 1w")
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    return value


class IncrementalSettings(Strict):
    """Catch-up runs after the backfill: rows whose cursor moved past the last high-water mark."""

    cursor_column: str | None = Field(
        default=None,
        description="Timestamp column the source sets on every insert and update (default: the "
        "chunk_column, the point time of a time series)",
    )
    lookback: timedelta = Field(
        default=timedelta(0),
        description="How far before the high-water mark a catch-up reads again, for rows committed late",
    )

    @field_validator("lookback", mode="before")
    @classmethod
    def _parse_lookback(cls, value):
        return parse_duration(value)

    @field_validator("lookback")
    @classmethod
    def _not_negative(cls, value):
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value


# A PostgreSQL type name: an optionally schema-qualified name with an optional (n) or (n,m),
# then the words of multi-word types (double precision, timestamp(3) with time zone,
# interval day to second), then array brackets.
_PG_TYPE_NAME = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?( *\( *\d+ *(, *-?\d+ *)?\))?"
    r"( +[A-Za-z]+( *\( *\d+ *\))?)*( *\[\d*\])*$"
)
# The only words allowed after the first: those of PostgreSQL's multi-word type names.
_PG_TYPE_NAME_WORD = re.compile(
    r" (?!(precision|varying|with|without|time|zone|year|month|day|hour|minute|second|to)\b)[A-Za-z]",
    re.IGNORECASE,
)


class TableSpec(Strict):
    name: str = Field(description="Source table, spelled as the source stores it")
    target: str | None = Field(default=None, description="Target table name (default: name, lowercased)")
    chunk_column: str = Field(description="Integer key or timestamp column that chunks split on")
    chunk_size: int | None = Field(default=None, gt=0, description="Key span per chunk (integer keys)")
    chunk_interval: timedelta | None = Field(default=None, description="Time span per chunk, e.g. 1d, 6h")
    load_mode: LoadMode = LoadMode.APPEND
    primary_key: list[str] = Field(default_factory=list)
    columns: list[str] | None = Field(default=None, description="Subset of columns (default: all)")
    type_overrides: dict[str, str] = Field(
        default_factory=dict, description="Source column -> target SQL type"
    )
    allow_truncate_foreign_rows: bool = False
    allow_rewrite_loaded_points: bool = Field(
        default=False,
        description="influxdb target: write points over a range another job loaded (the ledger "
        "records that both jobs share it)",
    )
    path: str | None = Field(default=None, description="parquet source: folder of this table's files")
    manifest: str | None = Field(
        default=None, description="parquet source: a Timestream UNLOAD manifest.json"
    )
    mapping: MappingSettings | None = Field(default=None, description="influxdb target: points from rows")
    incremental: IncrementalSettings | None = Field(
        default=None, description="Catch-up runs after the backfill move only what changed (a cursor)"
    )

    @field_validator("chunk_interval", mode="before")
    @classmethod
    def _parse_duration(cls, value):
        return parse_duration(value)

    @property
    def cursor_column(self) -> str | None:
        """The column catch-up runs follow (None: the table takes no catch-up runs)."""
        if self.incremental is None:
            return None
        return self.incremental.cursor_column or self.chunk_column

    @field_validator("chunk_interval")
    @classmethod
    def _positive(cls, value):
        if value is not None and value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @field_validator("type_overrides")
    @classmethod
    def _type_names(cls, value: dict[str, str]) -> dict[str, str]:
        # The type goes into CREATE TABLE as written, so only a type name may get there.
        for column, type_name in value.items():
            if not _PG_TYPE_NAME.fullmatch(type_name) or _PG_TYPE_NAME_WORD.search(type_name):
                raise ValueError(
                    f"{column}: {type_name!r} is not a PostgreSQL type name (such as numeric(38,0), "
                    "varchar(20), timestamp with time zone, double precision or text[])"
                )
        return value

    @model_validator(mode="after")
    def _upsert_needs_key(self) -> TableSpec:
        if self.load_mode is LoadMode.UPSERT and not self.primary_key:
            raise ValueError("load_mode upsert needs primary_key")
        return self


def _types_with(capability: str, kind: dict[str, str] = registry.TARGETS) -> str:
    return " or ".join(t for t, path in kind.items() if getattr(registry.settings_model(path), capability))


def _types_without(capability: str) -> str:
    return " or ".join(
        t for t, path in registry.TARGETS.items() if not getattr(registry.settings_model(path), capability)
    )


class MigrationSpec(Strict):
    name: str = ""
    description: str = ""
    source: SourceSettings
    target: TargetSettings
    ledger: LedgerSettings | None = Field(
        default=None, description="Where job state lives (default: the target, when it can hold it)"
    )
    staging: StagingSettings = Field(default_factory=registry.settings_model(registry.STAGING["local"]))
    tables: list[TableSpec] = Field(min_length=1)
    concurrency: int = Field(default=2, ge=1, le=64, description="Chunks in flight at once")
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    max_consecutive_chunk_failures: int = Field(
        default=1,
        ge=1,
        description="Circuit breaker: after this many chunks fail in a row (each after its retries), "
        "no new chunk starts; those in flight finish",
    )
    lowercase_identifiers: bool = Field(default=True, description="Lowercase target table and column names")
    keep_staged_files: bool = Field(default=True, description="Keep Parquet files after a job completes")
    verify: Literal["content", "counts"] = Field(
        default="content",
        description="content: each chunk's written values are read back and compared with the staged "
        "chunk before it counts as loaded; counts: row counts only",
    )

    @model_validator(mode="after")
    def _unique_tables(self) -> MigrationSpec:
        names = [t.name for t in self.tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"table(s) listed twice: {dupes}")
        target, kind = self.target, self.target.type
        if target.holds_ledger and self.ledger is not None:
            raise ValueError(
                f"ledger applies to {_types_without('holds_ledger')} targets; a {kind} target keeps its own ledger"
            )
        if not target.holds_ledger and self.ledger is None:
            raise ValueError(
                f"an {kind} target needs ledger: a connection of type {' or '.join(registry.LEDGERS)} that "
                f"keeps the job ledger, because {kind} cannot store it"
            )
        points = _types_with("writes_points")
        for table in self.tables:
            if table.mapping is not None and not target.writes_points:
                raise ValueError(f"table {table.name}: mapping applies to {points} targets only")
            if table.allow_rewrite_loaded_points and not target.writes_points:
                raise ValueError(
                    f"table {table.name}: allow_rewrite_loaded_points applies to {points} targets only; "
                    f"for {kind} use load_mode upsert or replace"
                )
            if table.load_mode not in target.load_modes:
                raise ValueError(
                    f"table {table.name}: load_mode {table.load_mode} is not available for {kind} "
                    f"targets; {getattr(target, 'load_modes_note', '')}"
                )
            if table.incremental is not None:
                cursor = table.cursor_column
                if target.writes_points and cursor != table.chunk_column:
                    raise ValueError(
                        f"table {table.name}: on {kind} targets the cursor is the point time, the "
                        f"chunk_column {table.chunk_column}; leave incremental.cursor_column out"
                    )
                if not target.writes_points and not table.primary_key:
                    raise ValueError(
                        f"table {table.name}: incremental needs primary_key: catch-up runs upsert "
                        "the rows that changed on it"
                    )
            if (table.path or table.manifest) and not self.source.reads_table_files:
                raise ValueError(
                    f"table {table.name}: path and manifest apply to {_types_with('reads_table_files', registry.SOURCES)} "
                    "sources only"
                )
        return self

    @property
    def ledger_settings(self):
        """The settings of the database that keeps the job ledger."""
        return self.ledger or self.target


class MigrationsFile(Strict):
    migrations: dict[str, MigrationSpec] = Field(min_length=1)
