"""What the job's ledger says, next to what Prefect says: the ledger is the one truth.

`flows.status` reads Prefect's API, which remembers what a run did. The ledger, where the
data lives, also knows what happened since: a forced rollback of another job that removed
some of this job's data (`incomplete`), a `replace` that truncated it away (`superseded`), a
rollback (`rolled_back`), or a run that was killed (`running` with no live run).
"""

from __future__ import annotations

from pydantic import BaseModel


class LedgerView(BaseModel):
    status: str | None = None
    chunks_done: int | None = None
    chunks_total: int | None = None
    rows_total: int | None = None
    error: str | None = None
    unread: str | None = None
    """Why the ledger was not read (no config for the migration, a secret not set, unreachable)."""


def ledger_view(job_id: str, migration: str | None, migrations_file: str | None = None) -> LedgerView:
    """The job's row in its migration's ledger; `unread` says why not when it cannot be read.
    Never raises: status works without the ledger, from Prefect's API alone."""
    if not migration:
        return LedgerView(unread="the flow run names no migration")
    try:
        from tasks.config import load_migration, migrations_path
        from tasks.connections import build_ledger

        spec = load_migration(migration, migrations_path(migrations_file))
        run = build_ledger(spec).job_run(job_id)
    except Exception as exc:  # the ledger is extra here: say why it was not read, and go on
        return LedgerView(unread=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    if run is None:
        return LedgerView(unread=f"job {job_id} is not in the ledger of migration {migration!r}")
    return LedgerView(
        status=run["status"],
        chunks_done=run["chunks_done"],
        chunks_total=run["chunks_total"],
        rows_total=run["rows_total"],
        error=run["error"],
    )


def ledger_views(jobs: dict[str, list[str]], migrations_file: str | None = None) -> dict[str, LedgerView]:
    """job id -> its ledger row, for jobs grouped by migration (one query per migration). A
    migration whose ledger cannot be read gives each of its jobs a view saying why."""
    views: dict[str, LedgerView] = {}
    for migration, job_ids in jobs.items():
        try:
            from tasks.config import load_migration, migrations_path
            from tasks.connections import build_ledger

            spec = load_migration(migration, migrations_path(migrations_file))
            runs = build_ledger(spec).job_runs(job_ids)
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
                )
            )
    return views


def render_ledger(view: LedgerView) -> str:
    if view.unread:
        return f"not read ({view.unread})"
    text = f"{view.status}, {view.chunks_done}/{view.chunks_total} chunks, {view.rows_total:,} rows"
    return text + (f": {view.error}" if view.error and view.status != "completed" else "")
