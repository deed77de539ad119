"""A dry run's plan as text: aligned for a terminal and the flow's log, and as the rows and
markdown of its Prefect artifacts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.dry_run import MigrationPlan, TableDryRun

# A table with more chunks than this shows its first and last ones only.
CHUNKS_SHOWN_WHOLE = 20
FIRST_SHOWN, LAST_SHOWN = 10, 5


def aligned(rows: list[list[str]], indent: str = "    ") -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def chunk_lines(table: TableDryRun) -> list[str]:
    rows = [["#", "chunk", "lower", "upper", "est. rows" if table.rows_estimated else "rows", ""]]
    for c in table.chunks:
        rows.append(
            [
                str(c.index),
                c.chunk_id,
                c.lower or "(open)",
                c.upper or "(open)",
                f"{c.estimated_rows:,}",
                "loaded" if c.loaded else "",
            ]
        )
    lines = aligned(rows)
    if len(table.chunks) > CHUNKS_SHOWN_WHOLE:
        hidden = len(table.chunks) - FIRST_SHOWN - LAST_SHOWN
        lines = [*lines[: FIRST_SHOWN + 1], f"    … {hidden} more chunks", *lines[-LAST_SHOWN:]]
    return lines


def render_plan(plan: MigrationPlan) -> str:
    """The plan as aligned text: a header, then per table its chunks (the first 10 and last 5
    of more than 20), DDL, guard decisions and type mapping with flags, then the refusals."""
    window = ", ".join(f"{k}={v}" for k, v in plan.window.items() if v is not None) or "the data's bounds"
    lines = [
        f"Dry run of migration {plan.migration!r}: nothing was written",
        f"  target: {plan.target}",
        f"  ledger: {plan.ledger}",
        f"  window: {window}",
        f"  job:    {plan.job.summary}",
        *[f"  {d.guard}: {d.outcome}, {d.reason}" for d in plan.job_guards],
    ]
    for table in plan.tables:
        rows = sum(c.estimated_rows for c in table.chunks)
        how = "estimated by share of each chunk's span" if table.rows_estimated else "counted"
        lines += [
            "",
            f"Table {table.table} -> {table.target} ({table.load_mode}, chunks on {table.chunk_column}): "
            f"{len(table.chunks)} chunks, {rows:,} rows ({how})",
            *chunk_lines(table),
            "  DDL:",
            *([f"    {statement};" for statement in table.ddl] or ["    (none)"]),
            "  Guards:",
            *aligned([[d.guard, d.outcome, d.reason] for d in table.guards]),
            "  Columns:",
            *aligned(
                [["source", "type", "staged", "target", "type", "flag"]]
                + [
                    [
                        m.source_name,
                        m.source_type,
                        m.staged_type,
                        m.target_name,
                        m.target_type,
                        f"{m.flag.upper()}: {m.reason}" if m.flag else "",
                    ]
                    for m in table.columns
                ]
            ),
        ]
    lines += [
        "",
        f"Refusals ({len(plan.refusals)}):" if plan.refusals else "Refusals: none, a run would go ahead",
    ]
    lines += [f"  - {r}" for r in plan.refusals]
    return "\n".join(lines)


def chunk_rows(plan: MigrationPlan) -> list[dict]:
    """One row per chunk for the plan's table artifact."""
    return [
        {
            "table": t.table,
            "chunk": c.chunk_id,
            "lower": c.lower,
            "upper": c.upper,
            "est. rows": c.estimated_rows,
            **({"loaded": c.loaded} if plan.job.action == "resume" else {}),
        }
        for t in plan.tables
        for c in t.chunks
    ]


def plan_markdown(plan: MigrationPlan) -> str:
    """The DDL, guard decisions and type mapping of each table, and the refusals, as markdown."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    parts = [f"# Dry run of `{plan.migration}`", "", f"Target: {plan.target}. Job: {cell(plan.job.summary)}"]
    parts += [f"- {d.guard}: {d.outcome}, {cell(d.reason)}" for d in plan.job_guards]
    for t in plan.tables:
        parts += ["", f"## {t.table} → {t.target} ({t.load_mode})", "", "DDL:", ""]
        parts += ["```sql", *[f"{s};" for s in t.ddl], "```"] if t.ddl else ["(none)"]
        parts += ["", "| guard | outcome | reason |", "| --- | --- | --- |"]
        parts += [f"| {d.guard} | {d.outcome} | {cell(d.reason)} |" for d in t.guards]
        parts += [
            "",
            "| source | type | staged | target | type | flag | reason |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        parts += [
            f"| {cell(m.source_name)} | {cell(m.source_type)} | {m.staged_type} | {cell(m.target_name)} | "
            f"{cell(m.target_type)} | {m.flag} | {cell(m.reason)} |"
            for m in t.columns
        ]
    parts += ["", "## Refusals", ""]
    parts += [f"- {cell(r)}" for r in plan.refusals] or ["None: a run would go ahead."]
    return "\n".join(parts)


def publish_plan(plan: MigrationPlan) -> None:
    """Inside a flow run: the plan as a table artifact (`migration-plan-<slug>`, one row per
    chunk) and a markdown artifact (DDL, guards, type mapping, refusals), and in the log."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.progress import artifact_slug

    slug = artifact_slug(plan.migration)
    summary = f"Dry run: {plan.job.summary}; {len(plan.refusals)} refusal(s)"
    create_table_artifact(
        table=chunk_rows(plan) or [{"table": "(no chunks)"}],
        key=f"migration-plan-{slug}",
        description=summary,
    )
    create_markdown_artifact(
        markdown=plan_markdown(plan), key=f"migration-plan-details-{slug}", description=summary
    )
    get_run_logger().info("%s", plan.render())
