"""Catch-up runs: after a migration's backfill, each run moves only what changed since.

A table with `incremental` names a cursor: a timestamp column the source sets on every insert
and update (for a time series, the point time). Every job of such a table records, with its
plan and before it exports anything, the table's high-water mark: the cursor's maximum, and
how many rows the window (mark − lookback .. mark) held. The first job of a migration is its
backfill. Once the backfill completed, a run without a job id is a catch-up: for each table
whose source moved past its mark (a newer maximum, or a different count in the window, from
rows committed late), it moves the rows from (mark − lookback) up to the current maximum,
chunked on the cursor, upserted on the primary key (rows) or written again (points, which is
idempotent). A table the source has not changed loads nothing. The mark that counts is the
newest of a completed job of the chain (the backfill and the catch-ups after it); a rolled
back job's mark no longer counts.

Rows deleted in the source are never seen by a cursor; the `verify` flow finds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from blocks.errors import ConfigError, SourceSchemaError, TargetGuardError
from blocks.job_status import RESUMABLE
from blocks.seam import LoadMode
from blocks.spec import TableSpec
from tasks.config import MigrationSpec, RunWindow
from tasks.connections import build_ledger, build_source
from tasks.plan import TablePlan, bound_text, plain_bound, plan_table_chunks
from tasks.policy import run_step, step_task

ONE_MICROSECOND = timedelta(microseconds=1)
DEAD = ("rolled_back", "superseded")


class CatchUpTable(BaseModel):
    """One table of a catch-up job: the cursor range it moves and the mark it records."""

    table: str
    cursor_column: str
    since: str | None  # None: from the table's first row (its mark found it empty)
    until: str
    window_rows: int  # rows in [until - lookback, until] when planned: the new mark's count
    after_job: str  # the job whose mark this catch-up starts from


class Chain(BaseModel):
    """What the ledger says about a migration's backfill and the catch-ups after it."""

    backfill: dict | None = None  # the newest full job not rolled back or superseded
    unfinished_catch_up: dict | None = None
    marks: dict[str, dict] = {}  # table -> its mark: that of the newest completed job of the chain
    newest_job: str | None = None


class RunKind(BaseModel):
    """How a run of the migration goes: the full way (a backfill, or a job given by id), a
    catch-up (new, or one to resume), or nothing to do. `job_id`: the job the run takes up
    (None: a new one, or the one the ledger picks); for `up_to_date`, the newest job."""

    kind: Literal["full", "catch_up", "up_to_date"]
    job_id: str | None = None
    tables: list[CatchUpTable] = []
    note: str = ""


@contextmanager
def one_catch_up_at_a_time(spec: MigrationSpec, kind: RunKind) -> Iterator[None]:
    """Hold the migration's catch-up lock for the body of a catch-up run (other runs pass).

    Two catch-ups at once could each read a row at a different moment and upsert the older
    read last; the second one raises `TargetGuardError`, naming the run that holds the lock,
    before it starts a job. The lock goes with the run's session, however the run ends."""
    if kind.kind != "catch_up":
        yield
        return
    from prefect.runtime import flow_run

    lock = build_ledger(spec).run_lock(f"catch-up/{spec.name}", flow_run.id)
    holder = run_step(lock.acquire, spec.retries, f"lock catch-ups of {spec.name}")
    if holder is not None:
        raise TargetGuardError(
            f"another catch-up of migration {spec.name!r} is running in {holder}; this one stops before "
            "starting a job. The next run catches up from where that one ends. " + lock.how_to_free()
        )
    try:
        yield
    finally:
        lock.release()


def incremental(spec: MigrationSpec) -> list[TableSpec]:
    return [t for t in spec.tables if t.incremental is not None]


def is_catch_up(run: dict | None) -> bool:
    return bool(run and "catch_up" in (run.get("parameters") or {}))


def read_chain(spec: MigrationSpec) -> Chain:
    """The migration's chain, from its ledger (reads only)."""
    jobs = build_ledger(spec).migration_jobs(spec.name)
    chain = Chain(newest_job=jobs[0]["job_id"] if jobs else None)
    base = next((i for i, j in enumerate(jobs) if not is_catch_up(j) and j["status"] not in DEAD), None)
    if base is None:
        return chain
    chain.backfill = jobs[base]
    after = [j for j in jobs[:base] if is_catch_up(j)]  # newest first
    chain.unfinished_catch_up = next((j for j in after if j["status"] in RESUMABLE), None)
    for job in [*after, jobs[base]]:
        if job["status"] != "completed":
            continue
        for mark in job["marks"]:
            chain.marks.setdefault(mark["table"], {**mark, "job_id": job["job_id"]})
    return chain


def describe_job(job: dict) -> str:
    return f"job {job['job_id']} ({job['status']}, {job['chunks_done']}/{job['chunks_total']} chunks loaded)"


@step_task("choose-run")
def choose_run(spec: MigrationSpec, job_id: str | None, catch_up: bool, no_resume: bool) -> RunKind:
    """How this run goes. A migration with `incremental` tables runs its backfill the full way
    until it completed; then a run without a job id is a catch-up. An unfinished catch-up is
    resumed first, exactly once like any job.

    `catch_up` asks for a catch-up only: refused (`TargetGuardError`) while the backfill is
    unfinished, naming it and how to finish it, and when there is none; `ConfigError` when no
    table has `incremental`. A job given by id runs as it started (a catch-up stays one)."""
    tables = incremental(spec)
    if catch_up and not tables:
        raise ConfigError(
            f"migration {spec.name!r} has no table with incremental: a catch-up needs a cursor, "
            "e.g. incremental: {cursor_column: UPDATED_AT, lookback: 10m}"
        )
    if job_id is not None:
        run = build_ledger(spec).job_run(job_id)
        if is_catch_up(run) and run["migration"] == spec.name:
            recorded = [CatchUpTable.model_validate(t) for t in run["parameters"]["catch_up"]]
            return RunKind(kind="catch_up", job_id=job_id, tables=recorded)
        if catch_up:
            raise TargetGuardError(f"job {job_id} is not a catch-up job; run it without catch_up")
        return RunKind(kind="full")
    if not tables or (no_resume and not catch_up):
        return RunKind(kind="full")
    chain = read_chain(spec)
    backfill = chain.backfill
    if backfill is None or backfill["status"] != "completed":
        if not catch_up:  # the backfill, resumed whatever its age (a catch-up needs it whole)
            return RunKind(kind="full", job_id=backfill["job_id"] if backfill else None)
        if backfill is None:
            raise TargetGuardError(
                f"catch-up of migration {spec.name!r} refused: it has no backfill yet. Run the "
                f"migration once without catch_up (prefect-migrate run {spec.name}); catch-ups follow it"
            )
        raise TargetGuardError(
            f"catch-up of migration {spec.name!r} refused: its backfill, {describe_job(backfill)}, is "
            f"unfinished, and a catch-up would start from a mark the target does not hold yet. Finish it "
            f"first (prefect-migrate run {spec.name} --job-id {backfill['job_id']}), or roll it back"
        )
    if chain.unfinished_catch_up is not None:
        job = chain.unfinished_catch_up
        recorded = [CatchUpTable.model_validate(t) for t in job["parameters"]["catch_up"]]
        return RunKind(kind="catch_up", job_id=job["job_id"], tables=recorded, note="resumed")
    return changed_tables(spec, tables, chain)


def changed_tables(spec: MigrationSpec, tables: list[TableSpec], chain: Chain) -> RunKind:
    """A new catch-up of the tables whose source moved past their mark, or up to date."""
    source = build_source(spec)
    moved, same = [], []
    for table in tables:
        cursor = table.cursor_column
        mark = chain.marks.get(table.name)
        if mark is None:
            raise TargetGuardError(
                f"table {table.name}: no completed job of migration {spec.name!r} recorded a high-water "
                f"mark for it (its incremental setting is newer than the backfill, "
                f"{chain.backfill['job_id']}); start a new backfill with no_resume, or roll back and rerun"
            )
        if mark["cursor_column"] != cursor:
            raise TargetGuardError(
                f"table {table.name}: the backfill followed cursor {mark['cursor_column']}, the config now "
                f"names {cursor}; restore it, or start a new backfill with no_resume"
            )
        refuse_nulls(source, table)
        _, newest = (plain_bound(b) for b in source.bounds(table.name, cursor))
        high = parse_mark(mark["high_water"])
        lookback = table.incremental.lookback
        since = None if high is None else high - lookback
        now_rows = 0 if newest is None else source.count(table.name, cursor, since, _after(high))
        if newest is None or (newest == high and now_rows == mark["window_rows"]):
            same.append(f"{table.name} ({cursor} up to {mark['high_water']}, mark of job {mark['job_id']})")
            continue
        window = source.count(table.name, cursor, newest - lookback, newest + ONE_MICROSECOND)
        moved.append(
            CatchUpTable(
                table=table.name,
                cursor_column=cursor,
                since=bound_text(since),
                until=bound_text(newest),
                window_rows=window,
                after_job=mark["job_id"],
            )
        )
    note = f"unchanged since their marks: {', '.join(same)}" if same else ""
    if not moved:
        return RunKind(kind="up_to_date", job_id=chain.newest_job, note=note)
    return RunKind(kind="catch_up", tables=moved, note=note)


def refuse_nulls(source: Any, table: TableSpec) -> None:
    """A row with a NULL cursor is never seen by a catch-up: refuse (`SourceSchemaError`)."""
    cursor = table.cursor_column
    if cursor == table.chunk_column:
        return  # planning refuses NULLs in the chunk column already
    nulls = source.count_nulls(table.name, cursor)
    if nulls:
        raise SourceSchemaError(
            f"table {table.name}: {nulls} rows have NULL in cursor_column {cursor}; catch-up runs would "
            "never see them. Give them a value in the source, or follow a NOT NULL column"
        )


def parse_mark(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _after(value: datetime | None) -> datetime | None:
    return None if value is None else value + ONE_MICROSECOND


def catch_up_spec(spec: MigrationSpec, tables: list[CatchUpTable]) -> MigrationSpec:
    """The migration as a catch-up job runs it: only `tables`, chunked on their cursor, rows
    upserted on their key (a point target writes points again, which is idempotent)."""
    by_name = {t.name: t for t in spec.tables}
    mode = {} if spec.target.writes_points else {"load_mode": LoadMode.UPSERT}
    chosen = [
        by_name[t.table].model_copy(update={"chunk_column": t.cursor_column, "chunk_size": None, **mode})
        for t in tables
        if t.table in by_name
    ]
    missing = [t.table for t in tables if t.table not in by_name]
    if missing:
        raise ConfigError(f"catch-up job moves table(s) {missing}, which the migrations file no longer lists")
    return spec.model_copy(update={"tables": chosen})


def spec_for_job(spec: MigrationSpec, run: dict) -> MigrationSpec:
    """The migration as the job in ledger row `run` moved it: a catch-up job's tables chunked
    on their cursor (for `verify`, which re-reads the job's ranges); any other job's as written."""
    if not is_catch_up(run):
        return spec
    return catch_up_spec(spec, [CatchUpTable.model_validate(t) for t in run["parameters"]["catch_up"]])


def catch_up_parameters(tables: list[CatchUpTable]) -> list[dict]:
    return [t.model_dump(mode="json") for t in tables]


def plan_catch_up_chunks(plan: TablePlan, table: CatchUpTable, data_min: Any) -> TablePlan:
    """The table's chunks over its cursor range [since, until], by its chunk_interval."""
    since, until = parse_mark(table.since), parse_mark(table.until)
    window = RunWindow(start_time=as_utc(since or data_min), end_time=as_utc(until + ONE_MICROSECOND))
    chunks = plan_table_chunks(plan, window, since or data_min, until)
    return plan.model_copy(update={"chunks": chunks, "catch_up": True})


@step_task("plan-catch-up")
def plan_catch_up(spec: MigrationSpec, plans: list[TablePlan], tables: list[CatchUpTable]) -> list[TablePlan]:
    """A new catch-up job's chunks: each table's cursor range, cut by its chunk_interval."""
    by_name = {t.table: t for t in tables}
    source = build_source(spec)
    planned = []
    for plan in plans:
        table = by_name[plan.spec.name]
        data_min = None
        if table.since is None:  # the mark found the table empty: from its first row on
            data_min, _ = (plain_bound(b) for b in source.bounds(table.table, table.cursor_column))
        planned.append(plan_catch_up_chunks(plan, table, data_min))
    return planned


def for_run(plans: list[TablePlan], kind: RunKind) -> list[TablePlan]:
    """The table plans as this run moves them: a catch-up's are flagged (`TablePlan.catch_up`)."""
    if kind.kind != "catch_up":
        return plans
    return [p.model_copy(update={"catch_up": True}) for p in plans]


def describe_catch_up(kind: RunKind) -> str:
    ranges = "; ".join(
        f"{t.table}: {t.cursor_column} from {t.since or 'the first row'} to {t.until} (after job {t.after_job})"
        for t in kind.tables
    )
    return ranges + (f"; {kind.note}" if kind.note and kind.note != "resumed" else "")


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@step_task("high-water-marks")
def high_water_marks(spec: MigrationSpec, tables: list[CatchUpTable] | None = None) -> list[dict]:
    """The marks a new job records with its plan: a catch-up's come with its tables; a
    backfill's are read from the source now, before any chunk is exported, so every row that
    changes later has a cursor past the mark (or within its lookback)."""
    if tables is not None:
        lookback = {t.name: t.incremental.lookback for t in spec.tables}
        return [
            {
                "table": t.table,
                "cursor_column": t.cursor_column,
                "high_water": t.until,
                "window_start": bound_text(parse_mark(t.until) - lookback[t.table]),
                "window_rows": t.window_rows,
            }
            for t in tables
        ]
    source = build_source(spec)
    marks = []
    for table in incremental(spec):
        refuse_nulls(source, table)
        cursor = table.cursor_column
        _, newest = (plain_bound(b) for b in source.bounds(table.name, cursor))
        start = None if newest is None else newest - table.incremental.lookback
        rows = 0 if newest is None else source.count(table.name, cursor, start, newest + ONE_MICROSECOND)
        marks.append(
            {
                "table": table.name,
                "cursor_column": cursor,
                "high_water": bound_text(newest),
                "window_start": bound_text(start),
                "window_rows": rows,
            }
        )
    return marks
