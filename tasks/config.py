"""The `migrations.yaml` model: named migrations, parsed and checked at flow start.

Secrets never live in the file: inline settings name the environment variable that holds
each one (`password_env: SNOWFLAKE_PASSWORD`), or a saved Prefect block holds them.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from blocks.errors import ConfigError
from blocks.postgres.target import LoadMode

DEFAULT_MIGRATIONS_FILE = Path(__file__).resolve().parent.parent / "migrations.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetryPolicy(_Strict, frozen=True):
    attempts: int = Field(default=3, ge=0, le=20, description="Retries after the first try")
    delay_seconds: float = Field(default=2.0, ge=0, description="First backoff delay; doubles each retry")
    jitter: float = Field(default=0.5, ge=0, le=1, description="Random spread as a fraction of the delay")


class SnowflakeSettings(_Strict):
    type: Literal["snowflake"]
    block: str | None = Field(
        default=None, description="Name of a saved prefect-snowflake SnowflakeConnector"
    )
    account: str | None = None
    user: str | None = None
    password_env: str | None = Field(default=None, description="Environment variable holding the password")
    database: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    warehouse: str | None = None
    role: str | None = None
    host: str | None = None
    port: int | None = None
    protocol: Literal["http", "https"] | None = None
    login_timeout: int = 30

    @model_validator(mode="after")
    def _block_or_inline(self) -> SnowflakeSettings:
        if self.block is None:
            missing = [k for k in ("account", "user", "database", "schema_name") if getattr(self, k) is None]
            if missing:
                names = ["schema" if m == "schema_name" else m for m in missing]
                raise ValueError(f"inline Snowflake settings need {', '.join(names)} (or set block)")
        return self


class PostgresSettings(_Strict):
    """A PostgreSQL connection: a target, the ledger, or a source (whose `schema` is the one
    read from, and whose `block` names a saved migration-postgres-source block)."""

    type: Literal["postgres"]
    block: str | None = Field(default=None, description="Name of a saved migration-postgres-target block")
    host: str = "localhost"
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    password_env: str | None = None
    sslmode: str = "prefer"
    schema_name: str = Field(default="public", alias="schema", description="Schema the tables land in")
    connect_timeout: int = 10


class AwsAccess(_Strict):
    """How to reach an AWS service: a saved prefect-aws AwsCredentials block, or inline settings
    with the keys named by environment variables (unset: boto3's default chain)."""

    credentials_block: str | None = Field(default=None, description="Name of a saved AwsCredentials block")
    region: str | None = None
    endpoint_url: str | None = Field(default=None, description="Override the AWS endpoint (e.g. a stand-in)")
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None


class TimestreamSettings(AwsAccess):
    type: Literal["timestream"]
    block: str | None = Field(default=None, description="Name of a saved migration-timestream-source block")
    database: str | None = Field(default=None, description="Timestream database, e.g. ons_energy_data")
    export_mode: Literal["query", "unload"] = Field(
        default="query", description="query: paged Query API; unload: UNLOAD to S3 as Parquet"
    )
    unload_location: str | None = Field(default=None, description="s3://bucket/prefix for export_mode unload")
    page_rows: int | None = Field(default=None, gt=0, description="MaxRows per query page")

    @model_validator(mode="after")
    def _complete(self) -> TimestreamSettings:
        if self.block is None and self.database is None:
            raise ValueError("inline Timestream settings need database (or set block)")
        if self.export_mode == "unload" and self.block is None and not self.unload_location:
            raise ValueError("export_mode unload needs unload_location (an s3://bucket/prefix)")
        return self


class ParquetSettings(AwsAccess):
    type: Literal["parquet"]
    location: str = Field(description="Folder or s3://bucket/prefix; each table is a sub-folder by default")


class InfluxSettings(_Strict):
    type: Literal["influxdb"]
    block: str | None = Field(default=None, description="Name of a saved migration-influxdb-target block")
    url: str | None = Field(default=None, description="Base URL, e.g. http://localhost:8086")
    api: Literal["v2", "v1"] = Field(
        default="v2", description="v2: 2.x, 3.x, Timestream for InfluxDB; v1: 1.x"
    )
    token_env: str | None = Field(default=None, description="Environment variable holding the v2 token")
    org: str | None = None
    bucket: str | None = None
    database: str | None = Field(default=None, description="v1 database")
    retention_policy: str | None = None
    username: str | None = None
    password_env: str | None = Field(default=None, description="Environment variable holding the v1 password")
    batch_lines: int = Field(default=10_000, ge=1, description="Lines per write request, at most")
    writers: int = Field(default=2, ge=1, le=16, description="Write requests in flight per chunk")
    gzip: bool = True
    timeout_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> InfluxSettings:
        if self.block is None:
            if not self.url:
                raise ValueError("inline InfluxDB settings need url (or set block)")
            if self.api == "v2" and not self.bucket:
                raise ValueError("api v2 needs bucket")
            if self.api == "v1" and not self.database:
                raise ValueError("api v1 needs database")
        return self

    @property
    def container(self) -> str:
        return (self.bucket if self.api == "v2" else self.database) or self.block or ""


class FieldSettings(_Strict):
    column: str
    key: str | None = Field(default=None, description="Field key (default: the column name)")
    kind: Literal["float", "integer", "unsigned", "string", "boolean"] | None = None


class MappingSettings(_Strict):
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


class LocalStagingSettings(_Strict):
    type: Literal["local"] = "local"
    path: str = Field(default="staging", description="Folder (relative to the working directory)")


class S3StagingSettings(AwsAccess):
    type: Literal["s3"]
    bucket_block: str | None = Field(default=None, description="Name of a saved prefect-aws S3Bucket block")
    bucket: str | None = None
    prefix: str = ""

    @model_validator(mode="after")
    def _block_or_bucket(self) -> S3StagingSettings:
        if self.bucket_block is None and self.bucket is None:
            raise ValueError("S3 staging needs bucket or bucket_block")
        return self


_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
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


class TableSpec(_Strict):
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

    @field_validator("chunk_interval", mode="before")
    @classmethod
    def _parse_duration(cls, value):
        if isinstance(value, str):
            match = _DURATION.match(value)
            if not match:
                raise ValueError("use a number and a unit: 30m, 6h, 1d, 1w")
            return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return value

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


class MigrationSpec(_Strict):
    name: str = ""
    description: str = ""
    source: Annotated[
        SnowflakeSettings | TimestreamSettings | ParquetSettings | PostgresSettings,
        Field(discriminator="type"),
    ]
    target: Annotated[PostgresSettings | InfluxSettings, Field(discriminator="type")]
    ledger: PostgresSettings | None = Field(
        default=None, description="Where job state lives (default: the PostgreSQL target)"
    )
    staging: Annotated[LocalStagingSettings | S3StagingSettings, Field(discriminator="type")] = Field(
        default_factory=LocalStagingSettings
    )
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

    @model_validator(mode="after")
    def _unique_tables(self) -> MigrationSpec:
        names = [t.name for t in self.tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"table(s) listed twice: {dupes}")
        influx = self.target.type == "influxdb"
        if not influx and self.ledger is not None:
            raise ValueError("ledger applies to influxdb targets; a PostgreSQL target keeps its own ledger")
        if influx and self.ledger is None:
            raise ValueError(
                "an influxdb target needs ledger: a PostgreSQL connection (type: postgres) that keeps "
                "the job ledger, because InfluxDB cannot store it"
            )
        for table in self.tables:
            if table.mapping is not None and not influx:
                raise ValueError(f"table {table.name}: mapping applies to influxdb targets only")
            if table.allow_rewrite_loaded_points and not influx:
                raise ValueError(
                    f"table {table.name}: allow_rewrite_loaded_points applies to influxdb targets only; "
                    "for PostgreSQL use load_mode upsert or replace"
                )
            if influx and table.load_mode is not LoadMode.APPEND:
                raise ValueError(
                    f"table {table.name}: load_mode {table.load_mode} is not available for influxdb "
                    "targets; points with the same series and time overwrite, so append is already idempotent"
                )
            if (table.path or table.manifest) and self.source.type != "parquet":
                raise ValueError(f"table {table.name}: path and manifest apply to parquet sources only")
        return self

    @property
    def ledger_settings(self) -> PostgresSettings:
        return self.ledger or self.target


class MigrationsFile(_Strict):
    migrations: dict[str, MigrationSpec] = Field(min_length=1)


class RunWindow(BaseModel):
    """The flow's run parameters, checked."""

    start_time: datetime | None = None
    end_time: datetime | None = None
    batch_size: int | None = None


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        lines.append(f"{loc or '(top level)'}: {err['msg']}")
    return f"{source} is invalid:\n  " + "\n  ".join(lines)


def migrations_path(override: str | None = None) -> Path:
    return Path(override or os.environ.get("MIGRATIONS_FILE") or DEFAULT_MIGRATIONS_FILE)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value, where: str = ""):
    """Replace `${NAME}` / `${NAME:-default}` in string values; a value that expands to "" becomes None.

    Meant for hosts, ports and names that differ between environments. Secrets stay out of
    the file altogether: use the `*_env` settings for them.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{where}: environment variable {name} is not set and has no default")
        return default

    expanded = _ENV_REF.sub(substitute, value)
    return None if expanded == "" else expanded


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping holds the same key twice (PyYAML would keep the last one silently)."""


class _MigrationsLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping; keys a merge (`<<`)
    brings in may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: the constructor below says so
                if first is not key_node.start_mark:
                    raise _DuplicateKey(
                        f"in the mapping that starts at line {node.start_mark.line + 1}",
                        None,
                        f"key {key!r} appears twice (first at line {first.line + 1}, column {first.column + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    """`path`, line and column (1-based), and what the parser expected, without the file's text."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ConfigError(f"{path} is not valid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or "invalid YAML"
    if exc.context:
        context = exc.context
        if exc.context_mark and exc.context_mark is not mark and "line" not in context:
            context += f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        problem += f" ({context})"
    return ConfigError(f"{path} is not valid YAML{where}: {problem}")


def read_yaml(path: Path):
    """The YAML document in `path`, or None when it is empty.

    Raises `ConfigError` naming the path when the file cannot be read, is not UTF-8, or is not
    valid YAML (then also the line and column, 1-based), and when a mapping holds a key twice.
    Messages never quote the file's text, which might hold a pasted secret.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path} is not UTF-8 text at line {line} (byte {exc.start}): {exc.reason}"
        ) from None
    try:
        return yaml.load(text, Loader=_MigrationsLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None


def load_migrations(path: Path) -> MigrationsFile:
    """Parse and check the whole file; any problem raises `ConfigError` naming the file, and
    the key (or, for YAML syntax, the line and column)."""
    if not path.exists():
        raise ConfigError(f"migrations file {path} does not exist (set MIGRATIONS_FILE or migrations_file)")
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path} is empty: it needs a top-level 'migrations:' mapping")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with a 'migrations:' key, not a {type(raw).__name__}")
    try:
        parsed = MigrationsFile.model_validate(expand_env(raw))
    except ValidationError as exc:
        raise ConfigError(_format_errors(str(path), exc)) from None
    for name, spec in parsed.migrations.items():
        spec.name = name
    return parsed


def load_migration(source_name: str, path: Path) -> MigrationSpec:
    migrations = load_migrations(path).migrations
    if source_name not in migrations:
        raise ConfigError(
            f"unknown source_name {source_name!r}: {path} defines {', '.join(sorted(migrations))}"
        )
    return migrations[source_name]


def parse_time(name: str, value: str | datetime | None) -> datetime | None:
    """ISO 8601 to an aware UTC datetime (naive input is taken as UTC); bad input raises ConfigError."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{name} {value!r} is not an ISO 8601 time (e.g. 2024-01-31T00:00:00Z)"
            ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


WINDOWS = {"previous_day": timedelta(days=1), "previous_hour": timedelta(hours=1)}


def relative_window(window: str, scheduled: datetime) -> tuple[datetime, datetime]:
    """The whole day (or hour) before `scheduled`, in UTC: `previous_day` at 02:00 gives
    yesterday 00:00 up to today 00:00."""
    if window not in WINDOWS:
        raise ConfigError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
    scheduled = scheduled.astimezone(UTC)
    if window == "previous_day":
        end = scheduled.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        end = scheduled.replace(minute=0, second=0, microsecond=0)
    return end - WINDOWS[window], end


def run_window(
    start_time, end_time, batch_size, window: str | None = None, scheduled: datetime | None = None
) -> RunWindow:
    """The run's checked window; `window` (a name in WINDOWS) fills start and end from the
    run's scheduled time, and explicit start_time/end_time win over it."""
    start = parse_time("start_time", start_time)
    end = parse_time("end_time", end_time)
    if window:
        default_start, default_end = relative_window(window, scheduled or datetime.now(UTC))
        start, end = start or default_start, end or default_end
    if start and end and end <= start:
        raise ConfigError(f"end_time {end.isoformat()} is not after start_time {start.isoformat()}")
    if batch_size is not None and int(batch_size) <= 0:
        raise ConfigError(f"batch_size must be a positive number of rows, got {batch_size}")
    return RunWindow(start_time=start, end_time=end, batch_size=batch_size)


def secret_from_env(variable: str | None, setting: str) -> str | None:
    """The secret held in `variable`; a named but unset variable raises ConfigError (value never shown)."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"environment variable {variable} (named by {setting}) is not set")
    return value
