"""What the job's ledger says, next to what Prefect says: the ledger is the one truth.

`flows.status` reads Prefect's API, which remembers what a run did. The ledger, where the
data lives, also knows what happened since: a forced rollback of another job that removed
some of this job's data (`incomplete`), a `replace` that truncated it away (`superseded`), a
rollback (`rolled_back`), or a run that was killed (`running` with no live run).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Ledger statuses that say more than the newest flow run can: data changed after the run.
LEDGER_WINS = ("incomplete", "superseded", "rolled_back")


class LedgerView(BaseModel):
    status: str | None = None
    chunks_done: int | None = None
    chunks_total: int | None = None
    rows_total: int | None = None
    error: str | None = None
    verified: dict[str, int] = {}
    """How the job's loaded chunks were verified: {"content": n, "counts": m}."""
    unread: str | None = None
    """Why the ledger was not read (no config for the migration, a secret not set, unreachable)."""


def ledger_view(job_id: str, migration: str | None, migrations_file: str | None = None) -> LedgerView:
    """The job's row in its migration's ledger; `unread` says why not when it cannot be read.
    Never raises: status works without the ledger, from Prefect's API alone."""
    if not migration:
        return LedgerView(unread="the flow run names no migration")
    return ledger_views({migration: [job_id]}, migrations_file)[job_id]


def ledger_views(jobs: dict[str, list[str]], migrations_file: str | None = None) -> dict[str, LedgerView]:
    """job id -> its ledger row, for jobs grouped by migration (one query per migration). A
    migration whose ledger cannot be read gives each of its jobs a view saying why."""
    views: dict[str, LedgerView] = {}
    for migration, job_ids in jobs.items():
        try:
            from tasks.config import load_migration, migrations_path
            from tasks.connections import build_ledger

            spec = load_migration(migration, migrations_path(migrations_file))
            ledger = build_ledger(spec)
            runs, verified = ledger.job_runs(job_ids), ledger.verification_counts(job_ids)
        except Exception as exc:  # the ledger is extra here: say why it was not read, and go on
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            views.update({job: LedgerView(unread=reason) for job in job_ids})
            continue
        for job in job_ids:
            run = runs.get(job)
            views[job] = (
                LedgerView(unread=f"job {job} is not in the ledger of migration {migration!r}")
                if run is None
                else LedgerView(
                    status=run["status"],
                    chunks_done=run["chunks_done"],
                    chunks_total=run["chunks_total"],
                    rows_total=run["rows_total"],
                    error=run["error"],
                    verified=verified.get(job, {}),
                )
            )
    return views


def migration_lags(migration: str, migrations_file: str | None = None) -> list[dict]:
    """Each catch-up table's lag (`tasks.catch_up_lag.table_lags`, as dicts): [] for a migration
    without `incremental` tables, or whose config cannot be read (the ledger line says why).
    Never raises: a ledger that cannot be read gives one entry saying why."""
    from tasks.catch_up import incremental
    from tasks.catch_up_lag import table_lags
    from tasks.config import load_migration, migrations_path

    try:
        spec = load_migration(migration, migrations_path(migrations_file))
    except Exception:  # noqa: BLE001 - no config for it here: nothing to say about lags
        return []
    if not incremental(spec):
        return []
    try:
        return [lag.model_dump(mode="json") for lag in table_lags(spec)]
    except Exception as exc:  # noqa: BLE001 - the lag is extra here: say why it is missing
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return [{"table": "(all)", "error": f"not read ({reason})"}]


def render_lag(lag: dict) -> str:
    from tasks.catch_up_lag import TableLag

    if lag.get("table") == "(all)":
        return f"lag unknown: {lag['error']}"
    return TableLag.model_validate(lag).render()


def apply_ledger(summary: Any, view: LedgerView | None) -> bool:
    """Where the ledger knows better than the newest flow run (the job was rolled back, or its
    data removed or replaced by another job since), put its status and counts on `summary` (a
    status or a job-list line). Returns whether it did."""
    if view is None or view.status not in LEDGER_WINS:
        return False
    summary.state = view.status
    summary.rows = view.rows_total
    summary.chunks_done, summary.chunks_total = view.chunks_done, view.chunks_total
    summary.percent = 100.0 * view.chunks_done / view.chunks_total if view.chunks_total else None
    return True


def render_ledger(view: LedgerView) -> str:
    if view.unread:
        return f"not read ({view.unread})"
    text = f"{view.status}, {view.chunks_done}/{view.chunks_total} chunks, {view.rows_total:,} rows"
    text += f"; {render_verified(view.verified)}" if view.verified else ""
    return text + (f": {view.error}" if view.error and view.status != "completed" else "")


def render_verified(verified: dict[str, int]) -> str:
    """{"content": 3} -> "verified: content (3 chunks)"; several kinds -> each with its count."""
    return "verified: " + ", ".join(f"{kind} ({n} chunks)" for kind, n in sorted(verified.items()))
