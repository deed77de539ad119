"""A dry run: what a run of a migration would do, worked out without writing anything.

`plan_migration` (no Prefect API needed) and the `migrate` flow's `dry_run` both end in
`dry_run_plan`: which job the run would take up, each table's chunks with estimated rows, the
DDL its target would run, every guard's decision, and where each column lands with which type.
Nothing on the way writes: the connection checks, the source's reads, and the target's and
the ledger's read-only lookups (`RowTarget.preview_table`, `PointTarget.preview_points`,
`Target.type_mapping`, `Ledger.job_to_take_up`), which create no ledger, table or file.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel

from blocks.columns import LogicalType
from blocks.errors import ConfigError, SourceSchemaError, TargetGuardError
from blocks.preview import ColumnMapping, GuardDecision, guard
from blocks.seam import Ledger, LoadMode, Source, Target
from blocks.timeunits import NS_PER_UNIT
from tasks.catch_up import (
    RunKind,
    catch_up_parameters,
    catch_up_spec,
    choose_run,
    describe_catch_up,
    for_run,
    plan_catch_up,
)
from tasks.config import MigrationSpec, RunWindow
from tasks.connections import build_ledger, build_source, build_target, check_connections, validate_config
from tasks.dry_run_job import JobPlan, job_decision, run_lock_decision
from tasks.guards import claims_in_the_way, refuse_overlap, refuse_point_overlap
from tasks.jobs import load_recorded_plan
from tasks.load_points import time_ns
from tasks.plan import TablePlan, bound_text, inspect_source, plan_chunks
from tasks.storage_keys import check_job_id

# Up to this many chunks a table's rows are counted chunk by chunk; beyond, once, and shared out.
COUNT_EACH_CHUNK_UP_TO = 200
_TIMES = (LogicalType.TIMESTAMP, LogicalType.TIMESTAMP_TZ, LogicalType.TIME)


class PlannedChunk(BaseModel):
    index: int
    chunk_id: str
    lower: str | None
    upper: str | None
    estimated_rows: int
    loaded: bool = False  # a resumed job's chunk the ledger shows loaded: not loaded again


class TableDryRun(BaseModel):
    """One table: its chunks, the DDL and guard decisions, and its type mapping."""

    table: str
    target: str
    load_mode: LoadMode
    chunk_column: str
    chunks: list[PlannedChunk] = []
    rows_estimated: bool = False  # True: counted once and shared out by each chunk's span
    ddl: list[str] = []
    guards: list[GuardDecision] = []
    columns: list[ColumnMapping] = []


class MigrationPlan(BaseModel):
    """What a run of `migration` would do; `refusals` lists every guard that would stop it."""

    migration: str
    target: str
    ledger: str
    window: dict[str, Any]
    job: JobPlan
    job_guards: list[GuardDecision] = []  # the job's own: another run holding it
    tables: list[TableDryRun]
    refusals: list[str] = []

    def render(self) -> str:
        """Aligned text for a terminal (see `tasks.dry_run_render`)."""
        from tasks.dry_run_render import render_plan

        return render_plan(self)


def plan_migration(
    source_name: str,
    migrations_file: str | None = None,
    start_time: str | None = None,
    end_time: str | None = None,
    batch_size: int | None = None,
    window: str | None = None,
    catch_up: bool = False,
    *,
    job_id: str | None = None,
    no_resume: bool = False,
    resume_max_age_hours: float = 12,
) -> MigrationPlan:
    """What `migrate` with these parameters would do, without a Prefect API and without
    writing anything. Bad config or times raise `ConfigError`, unreachable servers
    `ConnectionCheckError`, unknown tables or columns `SourceSchemaError`, as a run would;
    what a guard would refuse is in the plan's `refusals`. `window` is relative to now."""
    check_job_id(job_id)
    spec, run_window = validate_config.fn(
        source_name, migrations_file, start_time, end_time, batch_size, window
    )
    check_connections.fn(spec)
    tables = inspect_source.fn(spec)
    explicit = any(v is not None for v in (start_time, end_time, batch_size))
    return dry_run_plan(
        spec,
        run_window,
        tables,
        catch_up,
        job_id=job_id,
        no_resume=no_resume,
        resume_max_age_hours=resume_max_age_hours,
        explicit_window=explicit,
    )


def dry_run_plan(
    spec: MigrationSpec,
    run_window: RunWindow,
    tables: list[TablePlan],
    catch_up: bool = False,
    *,
    job_id: str | None = None,
    no_resume: bool = False,
    resume_max_age_hours: float = 12,
    explicit_window: bool = False,
) -> MigrationPlan:
    """The plan for `tables` (`inspect_source`'s) in `run_window`; writes nothing. A migration
    with `incremental` tables is planned as `tasks.catch_up.choose_run` decides: its backfill,
    a catch-up of the tables that changed (its chunks over their cursor ranges), or nothing."""
    source, target, ledger = build_source(spec), build_target(spec), build_ledger(spec)
    within = timedelta(hours=resume_max_age_hours)
    try:
        kind = choose_run.fn(spec, job_id, catch_up, no_resume)
    except (TargetGuardError, ConfigError) as exc:  # the run would stop here
        return whole_run_plan(spec, target, ledger, run_window, "refused", job_id, str(exc))
    if kind.kind == "up_to_date":
        note = f"up to date, nothing to load: {kind.note}"
        return whole_run_plan(spec, target, ledger, run_window, "up_to_date", kind.job_id, note)
    job_id = kind.job_id or job_id
    if kind.kind == "catch_up":
        spec = catch_up_spec(spec, kind.tables)
        tables = for_run(inspect_source.fn(spec), kind)
    ranges = catch_up_parameters(kind.tables) if kind.kind == "catch_up" else None
    job, run_window = job_decision(
        spec, ledger, run_window, job_id, no_resume, within, explicit_window, ranges
    )
    if kind.kind == "catch_up":
        job.summary = f"catch-up ({describe_catch_up(kind)}): {job.summary}"
    key = job.job_id or ""  # the job the guards leave out: none for a new job
    recorded, states, refusals = None, {}, []
    if job.action in ("resume", "completed"):
        states = ledger.chunk_states(key)
        try:
            recorded = load_recorded_plan.fn(spec, key, tables)
        except SourceSchemaError as exc:
            refusals.append(f"job {key}: {exc}")
    lock = run_lock_decision(ledger, job)
    results = []
    for plan in tables:
        chunking: GuardDecision | None = None
        if recorded is not None:
            plan = next(p for p in recorded if p.spec.name == plan.spec.name)
        else:
            try:
                (plan,) = chunk_tables(spec, [plan], run_window, kind)
            except ConfigError as exc:
                chunking = GuardDecision(guard="chunks and time range", outcome="refuse", reason=str(exc))
        table = table_dry_run(spec, source, target, ledger, plan, job, within, states)
        table.guards = [*([chunking] if chunking else []), *table.guards]
        results.append(table)
    refusals += [f"job: {job.summary}"] if job.action == "refused" else []
    refusals += (
        [f"job {job.job_id}: {lock.guard}: {lock.reason}"] if lock and lock.outcome == "refuse" else []
    )
    refusals += [
        f"table {t.table}: {d.guard}: {d.reason}" for t in results for d in t.guards if d.outcome == "refuse"
    ]
    return MigrationPlan(
        migration=spec.name,
        target=target.describe_target(),
        ledger=ledger.describe_target(),
        window=run_window.model_dump(mode="json"),
        job=job,
        job_guards=[lock] if lock else [],
        tables=results,
        refusals=list(dict.fromkeys(refusals)),
    )


def chunk_tables(
    spec: MigrationSpec, tables: list[TablePlan], window: RunWindow, kind: RunKind
) -> list[TablePlan]:
    """The chunked plans a new job would record: a catch-up's over its cursor ranges, any
    other's from the source's bounds in the run's window. Raises `ConfigError` where planning
    refuses (too many chunks, times the target cannot store)."""
    if kind.kind == "catch_up":
        return plan_catch_up.fn(spec, tables, kind.tables)
    return plan_chunks.fn(spec, tables, window)


def whole_run_plan(
    spec: MigrationSpec,
    target: Target,
    ledger: Ledger,
    window: RunWindow,
    action: Literal["refused", "up_to_date"],
    job_id: str | None,
    summary: str,
) -> MigrationPlan:
    """A plan with no table to show: the run would be refused as a whole, or find nothing to do."""
    return MigrationPlan(
        migration=spec.name,
        target=target.describe_target(),
        ledger=ledger.describe_target(),
        window=window.model_dump(mode="json"),
        job=JobPlan(action=action, job_id=job_id, summary=summary),
        tables=[],
        refusals=[f"job: {summary}"] if action == "refused" else [],
    )


def table_dry_run(
    spec: MigrationSpec,
    source: Source,
    target: Target,
    ledger: Ledger,
    plan: TablePlan,
    job: JobPlan,
    within: timedelta,
    states: dict[tuple[str, str], str],
) -> TableDryRun:
    """One table's chunks (rows counted in the source), DDL, guards and type mapping."""
    rows, estimated = estimate_rows(source, plan)
    chunks = [
        PlannedChunk(
            index=c.index,
            chunk_id=c.chunk_id,
            lower=bound_text(c.lower),
            upper=bound_text(c.upper),
            estimated_rows=n,
            loaded=states.get((c.table, c.chunk_id)) == "loaded",
        )
        for c, n in zip(plan.chunks, rows, strict=True)
    ]
    ddl, guards = table_guards(spec, target, ledger, plan, job, within)
    return TableDryRun(
        table=plan.spec.name,
        target=plan.target.qualified,
        load_mode=plan.spec.load_mode,
        chunk_column=plan.spec.chunk_column,
        chunks=chunks,
        rows_estimated=estimated,
        ddl=ddl,
        guards=guards,
        columns=type_mapping(source, target, plan),
    )


def table_guards(
    spec: MigrationSpec, target: Target, ledger: Ledger, plan: TablePlan, job: JobPlan, within: timedelta
) -> tuple[list[str], list[GuardDecision]]:
    """The DDL `prepare_targets` would run for the table, and each guard's decision, in the
    order a run meets them: the time range, the overlap guards, then the target's own."""
    if job.action == "completed":
        reason = f"job {job.job_id} is complete: no table is prepared and nothing is loaded"
        return [], [GuardDecision(guard="prepare", outcome="pass", reason=reason)]
    key = job.job_id or ""
    if plan.time_range is None:
        ranged = f"{plan.target_system} stores any time the source holds"
    else:
        first, last = (t.isoformat() for t in plan.time_range)
        ranged = f"the table's times lie within what {plan.target_system} stores ({first} .. {last})"
    decisions = [GuardDecision(guard="time range", outcome="pass", reason=ranged)] if plan.chunks else []
    if target.writes_points:
        decisions.append(point_claims_decision(target, ledger, plan, key, spec.name))
        preview = target.preview_points(plan.points)
    else:
        if plan.spec.load_mode is LoadMode.APPEND:
            decisions.append(
                guard(
                    "append overlap",
                    lambda: refuse_overlap(
                        plan, key, target.loaded_ranges(plan.target.qualified, exclude_job=key)
                    ),
                    f"no other live job loaded a range of {plan.spec.chunk_column} this job's chunks cover",
                )
            )
        preview = target.preview_table(
            key,
            plan.spec.name,
            spec.name,
            plan.target,
            plan.spec.load_mode,
            plan.spec.allow_truncate_foreign_rows,
            within,
        )
    return preview.ddl, [*decisions, *preview.decisions]


def point_claims_decision(
    target: Target, ledger: Ledger, plan: TablePlan, key: str, spec_name: str
) -> GuardDecision:
    """The point overlap guard of `prepare_targets`: other live jobs' claims on the
    measurement's time ranges (`Ledger.point_claims`)."""
    if plan.spec.allow_rewrite_loaded_points:
        reason = "allow_rewrite_loaded_points: points over other jobs' ranges are written, and the ledger records it"
        return GuardDecision(guard="point claims", outcome="note", reason=reason)
    if plan.points.measurement is None:
        reason = (
            f"measurements come from column {plan.points.measurement_column}: checked as each chunk loads"
        )
        return GuardDecision(guard="point claims", outcome="note", reason=reason)
    ranges = [(time_ns(c.lower), time_ns(c.upper)) for c in plan.chunks]
    return guard(
        "point claims",
        lambda: refuse_point_overlap(
            plan,
            key,
            claims_in_the_way(
                plan,
                spec_name,
                ledger.point_claims(key, target.describe_target(), [plan.points.measurement], ranges),
            ),
        ),
        f"no other live job claims measurement {plan.points.measurement} in these time ranges",
    )


def estimate_rows(source: Source, plan: TablePlan) -> tuple[list[int], bool]:
    """Each chunk's rows in the source, counted (up to `COUNT_EACH_CHUNK_UP_TO` chunks), else
    the table's rows in the chunks' whole range shared out by each chunk's span; True when so
    estimated. Shares are rounded so that they sum to the count."""
    name, column, chunks = plan.spec.name, plan.spec.chunk_column, plan.chunks
    if len(chunks) <= COUNT_EACH_CHUNK_UP_TO:
        return [source.count(name, column, c.lower, c.upper) for c in chunks], False
    total = source.count(name, column, chunks[0].lower, chunks[-1].upper)
    spans = [_span(c.lower, c.upper) for c in chunks]
    whole = sum(spans) or 1
    shares = [total * s / whole for s in spans]
    rows = [int(s) for s in shares]
    by_remainder = sorted(range(len(chunks)), key=lambda i: rows[i] - shares[i])
    for i in by_remainder[: total - sum(rows)]:
        rows[i] += 1
    return rows, True


def _span(lower: Any, upper: Any) -> float:
    if lower is None or upper is None:
        return 0.0
    span = upper - lower
    return span.total_seconds() if isinstance(span, timedelta) else float(span)


def type_mapping(source: Source, target: Target, plan: TablePlan) -> list[ColumnMapping]:
    """The target's mapping of each column (`Target.type_mapping`); a time column the source
    keeps finer than the target (`time_unit`) gets a `note` (unless flagged already): values
    with digits below the target's unit are refused at load, never rounded."""
    mappings = target.type_mapping(plan.target, plan.source_columns, plan.staged_schema(), plan.points)
    finer = NS_PER_UNIT[source.time_unit] < NS_PER_UNIT[target.time_unit]
    if not finer:
        return mappings
    kinds = {c.name: c.logical for c in plan.source_columns}
    reason = (
        f"the source keeps times to the {source.time_unit}, {target.display_name} to the {target.time_unit}: "
        f"values with digits below the {target.time_unit} are refused at load"
    )
    return [
        m.model_copy(update={"flag": m.flag or "note", "reason": "; ".join(filter(None, [m.reason, reason]))})
        if kinds[m.source_name] in _TIMES
        else m
        for m in mappings
    ]
