"""How a source table's rows become InfluxDB points: the configured mapping, completed by defaults.

Defaults (each applies only where the table's `mapping:` leaves the part unset):

- measurement: the `measure_name` column when the table has one (Timestream), else the
  target name (`target:`, or the table name);
- tags: Timestream dimensions; for sources without dimension roles (Parquet files, UNLOAD
  output), the text columns that are not the measurement, a measure (`measure_value::*`) or
  the time;
- fields: every other column, under its own name, with the type its values carry (bigint →
  integer, double → float, varchar → string, boolean → boolean, timestamps as integer
  nanoseconds or RFC 3339 strings as `timestamp_fields` says);
- time: the table's `chunk_column`, with nanoseconds kept.
"""

from __future__ import annotations

from pydantic import BaseModel

from blocks.columns import Column, LogicalType
from blocks.errors import ConfigError, SourceSchemaError
from blocks.influxdb.line_protocol import FieldSpec, PointMapping
from blocks.spec import FieldSettings, TableSpec

_TIME_TYPES = (LogicalType.TIMESTAMP, LogicalType.TIMESTAMP_TZ)
_TAG_TYPES = (LogicalType.STRING, LogicalType.INTEGER, LogicalType.BOOLEAN)
# Which source types each explicitly configured field kind can carry exactly.
_KIND_ACCEPTS = {
    "integer": (LogicalType.INTEGER, LogicalType.DECIMAL),
    "unsigned": (LogicalType.INTEGER, LogicalType.DECIMAL),
    "float": (LogicalType.INTEGER, LogicalType.FLOAT, LogicalType.DECIMAL),
    "boolean": (LogicalType.BOOLEAN,),
    "string": (
        LogicalType.STRING,
        LogicalType.JSON,
        LogicalType.DATE,
        LogicalType.TIME,
        LogicalType.DECIMAL,
        *_TIME_TYPES,
    ),
}


class FieldPlan(BaseModel, frozen=True):
    column: str
    key: str
    kind: str | None = None


class PointsPlan(BaseModel, frozen=True):
    """A resolved mapping: every part explicit, checked against the source columns."""

    time_column: str
    measurement: str | None = None
    measurement_column: str | None = None
    tags: tuple[str, ...] = ()
    fields: tuple[FieldPlan, ...] = ()
    timestamp_fields: str = "integer"
    count_field: str | None = None

    @property
    def columns(self) -> list[str]:
        named = [self.time_column, *([self.measurement_column] if self.measurement_column else [])]
        return [*named, *self.tags, *(f.column for f in self.fields)]

    @property
    def label(self) -> str:
        return self.measurement or f"<{self.measurement_column}>"

    def point_mapping(self) -> PointMapping:
        return PointMapping(
            fields=tuple(FieldSpec(f.column, f.key, f.kind) for f in self.fields),
            time_column=self.time_column,
            tags=self.tags,
            measurement=self.measurement,
            measurement_column=self.measurement_column,
            timestamp_fields=self.timestamp_fields,
        )


def resolve_points(table: TableSpec, columns: tuple[Column, ...], default_measurement: str) -> PointsPlan:
    """The table's mapping with defaults filled in; a column that is missing or has a type
    the mapping cannot represent raises `SourceSchemaError`, a mapping InfluxDB could never
    accept raises `ConfigError`, each naming the table and the column."""
    by_name = {c.name: c for c in columns}
    where = f"table {table.name}"
    settings = table.mapping

    def need(name: str, what: str) -> Column:
        if name not in by_name:
            raise SourceSchemaError(
                f"{where}: mapping {what} {name!r} not found; the source has {sorted(by_name)}"
            )
        return by_name[name]

    time_col = need(table.chunk_column, "time column (chunk_column)")
    if time_col.logical not in _TIME_TYPES:
        raise SourceSchemaError(
            f"{where}: chunk_column {time_col.name} is {time_col.source_type or time_col.logical}; "
            "an InfluxDB target needs a timestamp column for the point time"
        )
    measurement = settings.measurement if settings else None
    measurement_column = settings.measurement_column if settings else None
    if measurement is None and measurement_column is None:
        measure_name = next(
            (c for c in columns if c.role == "measure_name" or c.name == "measure_name"), None
        )
        if measure_name is not None:
            measurement_column = measure_name.name
        else:
            measurement = default_measurement
    if (
        measurement_column is not None
        and need(measurement_column, "measurement_column").logical is not LogicalType.STRING
    ):
        raise SourceSchemaError(f"{where}: measurement_column {measurement_column} must be a text column")

    used = {time_col.name, *([measurement_column] if measurement_column else [])}
    tags = _tags(settings.tags if settings else None, columns, used, need, where)
    used |= set(tags)
    fields = _fields(settings.fields if settings else None, columns, used, need, where)
    count_field = settings.count_field if settings else None
    if count_field is not None and count_field not in {f.key for f in fields}:
        raise ConfigError(f"{where}: count_field {count_field!r} is not one of the mapped field keys")
    plan = PointsPlan(
        time_column=time_col.name,
        measurement=measurement,
        measurement_column=measurement_column,
        tags=tuple(tags),
        fields=tuple(fields),
        timestamp_fields=settings.timestamp_fields if settings else "integer",
        count_field=count_field,
    )
    try:
        plan.point_mapping()
    except ValueError as exc:
        raise ConfigError(f"{where}: the point mapping cannot work: {exc}") from None
    return plan


def _tags(configured: list[str] | None, columns, used: set[str], need, where: str) -> list[str]:
    if configured is None:
        if any(c.role == "dimension" for c in columns):
            configured = [c.name for c in columns if c.role == "dimension" and c.name not in used]
        else:  # no dimension roles (Parquet files, UNLOAD output): text columns that are no measure
            configured = [
                c.name
                for c in columns
                if c.logical is LogicalType.STRING
                and c.name not in used
                and c.role not in ("measure", "measure_name", "time")
                and not c.name.startswith("measure_value::")
            ]
    for name in configured:
        column = need(name, "tag")
        if column.logical not in _TAG_TYPES:
            raise SourceSchemaError(
                f"{where}: tag {name} is {column.source_type or column.logical}; tags carry text, "
                "integers or booleans. Map it as a field instead"
            )
        if name in used:
            raise ConfigError(f"{where}: column {name} cannot be a tag: it is the time or the measurement")
    return configured


def _fields(
    configured: list[str | FieldSettings] | None, columns, used: set[str], need, where: str
) -> list[FieldPlan]:
    if configured is None:
        configured = [c.name for c in columns if c.name not in used]
    if not configured:
        raise ConfigError(f"{where}: no column is left to be a field; a point needs at least one")
    plans = []
    for entry in configured:
        spec = FieldSettings(column=entry) if isinstance(entry, str) else entry
        column = need(spec.column, "field")
        if spec.column in used:
            raise ConfigError(f"{where}: column {spec.column} is already the time, measurement or a tag")
        if column.logical is LogicalType.BINARY:
            raise SourceSchemaError(
                f"{where}: field {spec.column} is {column.source_type or 'binary'}; line protocol has no "
                "binary field type. Leave the column out of the mapping's fields"
            )
        if spec.kind is not None and column.logical not in _KIND_ACCEPTS[spec.kind]:
            raise SourceSchemaError(
                f"{where}: field {spec.column} is {column.source_type or column.logical}, which cannot be "
                f"written as kind {spec.kind}"
            )
        plans.append(FieldPlan(column=spec.column, key=spec.key or spec.column, kind=spec.kind))
    return plans
