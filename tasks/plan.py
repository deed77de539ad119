"""Inspect the source tables and split each into chunks with deterministic ids.

A chunk is the half-open range `lower <= chunk_column < upper` of one table. Integer keys
split by key span (`chunk_size`, or the flow's `batch_size`); timestamps by `chunk_interval`
within the run's start_time/end_time. The same inputs always give the same chunk ids, and a
resumed job takes its chunks from the ledger, so the plan never shifts under a job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from blocks.arrow_types import staged_schema
from blocks.columns import Column, LogicalType, TableSchema, TargetTable
from blocks.errors import ConfigError, SourceSchemaError
from blocks.spec import TableSpec
from tasks.config import MigrationSpec, RunWindow
from tasks.connections import build_source
from tasks.policy import step_task

DEFAULT_CHUNK_SIZE = 100_000
DEFAULT_CHUNK_INTERVAL = timedelta(days=1)
MAX_CHUNKS_PER_TABLE = 100_000
CHUNKABLE = (LogicalType.INTEGER, LogicalType.TIMESTAMP, LogicalType.TIMESTAMP_TZ)
Bound = int | datetime | None


class Chunk(BaseModel, frozen=True):
    table: str
    chunk_id: str
    index: int
    lower: Bound
    upper: Bound


class TablePlan(BaseModel):
    """One source table, the columns we move, where they land, and its chunks."""

    spec: TableSpec
    source_columns: tuple[Column, ...]
    target: TargetTable
    chunk_kind: LogicalType
    # Point targets: how rows become points (the target settings' `plan_points()`).
    points: Any = None
    # The times the target can store, and its name for messages (None: any time a source has).
    time_range: tuple[datetime, datetime] | None = None
    target_system: str = ""
    time_unit: str = "us"  # the finest time the target keeps: staged files carry times in it
    catch_up: bool = False  # a catch-up job's table, chunked on its cursor (`tasks.catch_up`)
    chunks: list[Chunk] = []

    @property
    def source_names(self) -> list[str]:
        return [c.name for c in self.source_columns]

    @property
    def moves_every_column(self) -> bool:
        """True when the table's columns are not listed, so a column added to the source
        would be moved too (for InfluxDB: when tags or fields are left to the defaults)."""
        mapping = self.spec.mapping
        if self.spec.columns is not None:
            return False
        return self.points is None or mapping is None or mapping.tags is None or mapping.fields is None

    def staged_schema(self) -> pa.Schema:
        """The Arrow schema of this table's staged files, times in the target's `time_unit`."""
        return staged_schema(self.target.columns, set(self.target.type_overrides), self.time_unit == "ns")


def chunk_id(table: str, column: str, index: int, lower: Bound, upper: Bound) -> str:
    digest = hashlib.sha1(f"{table}|{column}|{bound_text(lower)}|{bound_text(upper)}".encode()).hexdigest()
    return f"{index:05d}-{digest[:10]}"


def bound_text(value: Bound) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def plain_bound(value: Any) -> Bound:
    """A source's min or max as an int or a `datetime` (a pandas Timestamp's nanoseconds are
    cut off, which rounds down: ranges built from it still cover the value)."""
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime(warn=False)
    return value


def parse_bound(kind: LogicalType, text: str | None) -> Bound:
    if text is None:
        return None
    if kind is LogicalType.INTEGER:
        return int(text)
    return datetime.fromisoformat(text)


def split_range(lower: Any, upper: Any, step: Any) -> list[tuple[Any, Any]]:
    """[lower, upper) cut into consecutive pieces of `step` (the last one may be shorter)."""
    pieces = []
    start = lower
    while start < upper:
        end = min(start + step, upper)
        pieces.append((start, end))
        start = end
        if len(pieces) > MAX_CHUNKS_PER_TABLE:
            raise ConfigError(f"more than {MAX_CHUNKS_PER_TABLE} chunks: raise chunk_size or chunk_interval")
    return pieces


def _to_column_time(value: datetime | None, kind: LogicalType) -> datetime | None:
    """Run-window times are aware UTC; TIMESTAMP_NTZ columns compare against naive UTC."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.replace(tzinfo=None) if kind is LogicalType.TIMESTAMP else value


def integer_step(plan: TablePlan, window: RunWindow) -> int:
    return window.batch_size or plan.spec.chunk_size or DEFAULT_CHUNK_SIZE


def key_ranges(data_min: int, data_max: int, step: int, occupied: list[int] | None) -> list[tuple[int, int]]:
    """Consecutive ranges covering [data_min, data_max + 1), one per occupied bucket.

    Bucket b spans [data_min + b*step, data_min + (b+1)*step); `occupied` lists the buckets that
    hold rows. A sparse key space then gives one chunk per bucket with data instead of
    thousands of empty chunks, and the ranges stay contiguous, so no key falls outside them.
    """
    if occupied is None:
        return split_range(data_min, data_max + 1, step)
    starts = sorted({data_min + b * step for b in occupied if 0 <= b <= (data_max - data_min) // step})
    if len(starts) > MAX_CHUNKS_PER_TABLE:
        raise ConfigError(f"more than {MAX_CHUNKS_PER_TABLE} chunks: raise chunk_size")
    starts[0] = data_min
    ends = [*starts[1:], data_max + 1]
    return list(zip(starts, ends, strict=True))


def plan_table_chunks(
    plan: TablePlan, window: RunWindow, data_min: Any, data_max: Any, occupied: list[int] | None = None
) -> list[Chunk]:
    """The chunks of one table for this run. Pure: same inputs, same chunks and ids."""
    spec, kind = plan.spec, plan.chunk_kind
    if kind is LogicalType.INTEGER:
        if data_min is None:
            lower = upper = None
        else:
            lower, upper = data_min, data_max + 1
            ranges = key_ranges(data_min, data_max, integer_step(plan, window), occupied)
    else:
        step = spec.chunk_interval or DEFAULT_CHUNK_INTERVAL
        lower = _to_column_time(window.start_time, kind) or data_min
        upper = _to_column_time(window.end_time, kind)
        if upper is None and data_max is not None:
            upper = data_max + timedelta(microseconds=1)
    if lower is None or upper is None:
        ranges = [(None, None)]  # empty table: one chunk, so the table is still created and reconciled
    elif kind is not LogicalType.INTEGER:
        if plan.time_range is not None:
            check_time_range(plan, window, data_min, data_max)
        count = -((lower - upper) // step)
        if count > MAX_CHUNKS_PER_TABLE:
            raise ConfigError(
                f"table {spec.name}: {spec.chunk_column} from {lower.isoformat()} to {upper.isoformat()} "
                f"makes {count:,} chunks of {step}, more than {MAX_CHUNKS_PER_TABLE:,}. If a few rows lie "
                "far from the rest (a wrong year, a placeholder date), set start_time and end_time to the "
                "range to migrate; otherwise raise chunk_interval"
            )
        ranges = split_range(lower, upper, step) or [(lower, upper)]
    return [
        Chunk(
            table=spec.name,
            chunk_id=chunk_id(spec.name, spec.chunk_column, i, lo, hi),
            index=i,
            lower=lo,
            upper=hi,
        )
        for i, (lo, hi) in enumerate(ranges)
    ]


def check_time_range(plan: TablePlan, window: RunWindow, data_min: Any, data_max: Any) -> None:
    """Refuse (`ConfigError`) a table whose rows in the run's window hold times the target
    cannot store (its `time_range`; InfluxDB: before 1677-09-21 or after 2262-04-11)."""
    first_time, last_time = plan.time_range
    name = plan.target_system
    if data_min is None:
        return

    def utc(value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    spec = plan.spec
    first = max([utc(data_min), *([window.start_time] if window.start_time else [])])
    last = min([utc(data_max), *([window.end_time] if window.end_time else [])])
    bad = []
    if first < first_time:
        bad.append(f"from {first.isoformat()}, before {first_time.isoformat()}")
    if last > last_time:
        bad.append(f"up to {last.isoformat()}, after {last_time.isoformat()}")
    if bad:
        raise ConfigError(
            f"table {spec.name}: {spec.chunk_column} holds times {' and '.join(bad)}, which {name} cannot "
            f"store. Set start_time and end_time within {first_time.isoformat()} .. "
            f"{last_time.isoformat()} to migrate the rows {name} can hold"
        )


def schema_drift(planned: Sequence[Column], current: Sequence[Column], moves_every_column: bool) -> list[str]:
    """How the source's columns now differ from the planned ones, one line per column; empty
    when nothing that matters changed. Columns are matched by name (their order does not
    matter); a column that became nullable counts, one that became NOT NULL does not. Added
    columns count only when `moves_every_column`."""
    now = {c.name: c for c in current}
    lines = []
    for column in planned:
        was = column.source_type or column.logical
        new = now.get(column.name)
        if new is None:
            lines.append(f"column {column.name} ({was}) was removed")
        elif (new.logical, new.precision, new.scale, new.source_type) != (
            column.logical,
            column.precision,
            column.scale,
            column.source_type,
        ):
            lines.append(
                f"column {column.name} was {was} when the job was planned, now {new.source_type or new.logical}"
            )
        elif not column.nullable and new.nullable:
            lines.append(f"column {column.name} was NOT NULL when the job was planned, now allows NULL")
    if moves_every_column:
        names = {c.name for c in planned}
        lines += [
            f"column {c.name} ({c.source_type or c.logical}) was added"
            for c in current
            if c.name not in names
        ]
    return lines


def check_schema_drift(
    plan: TablePlan, current: Sequence[Column], planned: Sequence[Column] | None = None
) -> None:
    """Raise `SourceSchemaError` when the source's columns (`current`) differ from those the
    table's job was planned with (`planned`, by default the plan's own source columns),
    naming each changed column and what to do."""
    lines = schema_drift(
        plan.source_columns if planned is None else planned, current, plan.moves_every_column
    )
    if lines:
        raise SourceSchemaError(
            f"schema drift in {plan.spec.name}: {'; '.join(lines)}. The job's chunks are planned, and some "
            "may be loaded, with the old columns: restore them in the source and resume, or roll the job "
            "back and start a new job (no_resume) that plans the new ones"
        )


def target_name(name: str, lowercase: bool) -> str:
    return name.lower() if lowercase else name


def table_plan(spec: MigrationSpec, table: TableSpec, schema: TableSchema) -> TablePlan:
    """Check a table spec against the source schema; any unknown name raises SourceSchemaError."""
    known = {c.name for c in schema.columns}

    def require(names: list[str], what: str) -> None:
        missing = [n for n in names if n not in known]
        if missing:
            raise SourceSchemaError(
                f"table {table.name}: {what} {missing} not found; the source has {sorted(known)}"
            )

    require([table.chunk_column], "chunk_column")
    require(table.columns or [], "column(s)")
    require(table.primary_key, "primary_key column(s)")
    require(list(table.type_overrides), "type_overrides column(s)")
    wanted = table.columns or [c.name for c in schema.columns]
    if table.chunk_column not in wanted:
        wanted = [*wanted, table.chunk_column]
    source_columns = tuple(c for c in schema.columns if c.name in wanted)
    chunk_col = schema.column(table.chunk_column)
    if chunk_col.logical not in CHUNKABLE:
        raise SourceSchemaError(
            f"table {table.name}: chunk_column {table.chunk_column} is {chunk_col.source_type}; "
            "it must be an integer or a timestamp"
        )
    if spec.target.writes_points:
        return _points_plan(spec, table, source_columns, chunk_col.logical)
    low = spec.lowercase_identifiers
    target_columns = tuple(c.model_copy(update={"name": target_name(c.name, low)}) for c in source_columns)
    refuse_name_collisions(table.name, [c.name for c in source_columns], low)
    target = TargetTable(
        schema_name=spec.target.schema_name,
        name=table.target or target_name(table.name, low),
        columns=target_columns,
        chunk_column=target_name(table.chunk_column, low),
        primary_key=tuple(target_name(k, low) for k in table.primary_key),
        type_overrides={target_name(k, low): v for k, v in table.type_overrides.items()},
    )
    return TablePlan(
        spec=table,
        source_columns=source_columns,
        target=target,
        chunk_kind=chunk_col.logical,
        time_range=spec.target.time_range,
        target_system=spec.target.display_name,
        time_unit=spec.target.time_unit,
    )


def refuse_name_collisions(table: str, names: list[str], lowercase: bool) -> None:
    """Refuse (`SourceSchemaError`) source columns that would become one target column."""
    by_target: dict[str, list[str]] = {}
    for name in names:
        by_target.setdefault(target_name(name, lowercase), []).append(name)
    clashes = {t: n for t, n in by_target.items() if len(n) > 1}
    if clashes:
        target, sources = next(iter(clashes.items()))
        why = " (lowercase_identifiers is on)" if lowercase else ""
        raise SourceSchemaError(
            f"table {table}: columns {sources} would all become column {target!r} in the target{why}; "
            "list the columns to move in columns:, rename one in the source, or set "
            "lowercase_identifiers: false"
        )


def _points_plan(
    spec: MigrationSpec, table: TableSpec, columns: tuple[Column, ...], chunk_kind: LogicalType
) -> TablePlan:
    """A point target's table plan: only the mapped columns are staged, under their source names."""
    points = spec.target.plan_points(table, columns, table.target or table.name)
    mapped = set(points.columns)
    staged = tuple(c for c in columns if c.name in mapped)
    target = TargetTable(
        schema_name=spec.target.container,
        name=points.label,
        columns=staged,
        chunk_column=table.chunk_column,
    )
    return TablePlan(
        spec=table,
        source_columns=staged,
        target=target,
        chunk_kind=chunk_kind,
        points=points,
        time_range=spec.target.time_range,
        target_system=spec.target.display_name,
        time_unit=spec.target.time_unit,
    )


@step_task("inspect-source")
def inspect_source(spec: MigrationSpec) -> list[TablePlan]:
    """Describe every table and check names and chunk columns, reading the source only."""
    source = build_source(spec)
    plans = []
    for table in spec.tables:
        plan = table_plan(spec, table, source.describe(table.name))
        chunk_col = next(c for c in plan.source_columns if c.name == table.chunk_column)
        if chunk_col.nullable:
            nulls = source.count_nulls(table.name, table.chunk_column)
            if nulls:
                raise SourceSchemaError(
                    f"table {table.name}: {nulls} rows have NULL in chunk_column {table.chunk_column}; "
                    "they would fall outside every chunk. Choose a NOT NULL column"
                )
        plans.append(plan)
    return plans


@step_task("plan-chunks")
def plan_chunks(spec: MigrationSpec, plans: list[TablePlan], window: RunWindow) -> list[TablePlan]:
    """Fresh chunk plans from the source's current bounds (a new job)."""
    source = build_source(spec)
    planned = []
    for plan in plans:
        data_min, data_max = (plain_bound(b) for b in source.bounds(plan.spec.name, plan.spec.chunk_column))
        occupied = None
        if plan.chunk_kind is LogicalType.INTEGER and data_min is not None:
            occupied = source.occupied_buckets(
                plan.spec.name, plan.spec.chunk_column, data_min, integer_step(plan, window)
            )
        chunks = plan_table_chunks(plan, window, data_min, data_max, occupied)
        planned.append(plan.model_copy(update={"chunks": chunks}))
    return planned
