"""`python -m flows.status [JOB_ID | FLOW_RUN_ID | --list [MIGRATION]] [--json]`: where migration
jobs stand, read from the Prefect API.

A job is found through the `job:<job_id>` tag its `migrate` flow runs carry; of several runs
(a failed one, then a resumed one) the newest decides. Percent and rows come from that run's
progress artifact, the stage from its chunk events, errors from its final state message and
its `migration.validation.failed` events. A flow run id (the UUID `prefect deployment run`
prints) stands for the job that run belongs to; a run that has no job yet (not started, or
failed before its job started) is shown on its own. Without an argument, or with `--list`,
the recent jobs are listed, one line each.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from uuid import UUID

from flows.job_runs import (
    MIGRATE_FLOW,
    RUN_PAGE,
    JobState,
    JobStatus,
    UnknownFlowRun,
    UnknownJob,
    ended_at,
    flow_run_status,
    job_state_of,
    job_status,
    migration_of,
    progress_fields,
    tag_value,
)
from flows.ledger_view import apply_ledger, ledger_view, migration_lags, render_lag, render_ledger

# What other modules import from here (flows.job_list, tests): the Prefect API is read in
# flows.job_runs, and this module renders what it gathers.
__all__ = [
    "MIGRATE_FLOW",
    "RUN_PAGE",
    "JobState",
    "JobStatus",
    "UnknownFlowRun",
    "UnknownJob",
    "ended_at",
    "flow_run_status",
    "job_state_of",
    "job_status",
    "main",
    "migration_of",
    "progress_fields",
    "render",
    "show_status",
    "tag_value",
    "when",
    "with_ledger",
]


def when(moment: datetime | None, missing: str) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else missing


def render(status: JobStatus) -> str:
    """The status as a few aligned lines for a terminal."""
    state = status.state + (f" (stage: {status.stage})" if status.stage else "")
    if len(status.stages) > 1:
        state += " [" + ", ".join(f"{s}: {n}" for s, n in status.stages.items()) + "]"
    percent = "unknown" if status.percent is None else f"{status.percent:.1f} %"
    if status.chunks_total is not None:
        percent += f" ({status.chunks_done}/{status.chunks_total} chunks)"
    migration = f" (migration {status.migration!r})" if status.migration else ""
    job = f"{status.job_id}{migration}"
    if status.job_id is None:
        job = f"none yet{migration}: the flow run has not started its job, so it has no job: tag"
    run = (
        f"flow run:   {status.flow_run_name} ({status.flow_run_id}), {status.prefect_state}, "
        f"started {when(status.started, 'not yet')}"
    )
    if status.ended:
        run += f", ended {when(status.ended, '')}"
    lines = [
        f"job:        {job}",
        f"state:      {state}",
        f"percent:    {percent}",
        f"rows moved: {'unknown' if status.rows is None else f'{status.rows:,}'}",
        run + (f"; newest of {status.runs} runs" if status.runs > 1 else ""),
    ]
    if status.ledger is not None:
        lines.append(f"ledger:     {render_ledger(status.ledger)}")
    lines.extend(f"lag:        {render_lag(lag)}" for lag in status.lags)
    if not status.errors:
        lines.append("errors:     none")
    else:
        lines.append(f"errors:     {len(status.errors)}")
        lines.extend(f"  - {error}" for error in status.errors)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the status of one job, or the list of recent jobs.

    Returns 0 when the job or flow run was found (and for a list, even an empty one); 2 for
    an unknown job, a flow run that does not exist or is not a `migrate` run, or bad
    arguments (through argparse); 1 when the Prefect API cannot be read.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flows.status",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Exit codes: 0 found (a list: always), 2 unknown job or flow run, or bad arguments, "
        "1 the Prefect API (PREFECT_API_URL) cannot be read.",
    )
    parser.add_argument(
        "job",
        nargs="?",
        metavar="JOB_ID|FLOW_RUN_ID",
        help="a job id, or the UUID of one of its `migrate` flow runs",
    )
    parser.add_argument(
        "--list",
        nargs="?",
        const="",
        metavar="MIGRATION",
        help="list the recent jobs (of MIGRATION, when given); the default without JOB_ID",
    )
    parser.add_argument("--limit", type=int, default=20, help="jobs to list, at most (default 20)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument(
        "--migrations-file",
        help="the config that names the job's ledger (default: $MIGRATIONS_FILE or migrations.yaml)",
    )
    parser.add_argument("--no-ledger", action="store_true", help="read only the Prefect API")
    args = parser.parse_args(argv)
    if args.job is not None and args.list is not None:
        parser.error("give a JOB_ID or FLOW_RUN_ID, or --list, not both")
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    return show_status(
        args.job,
        migration=args.list or None,
        limit=args.limit,
        as_json=args.json,
        migrations_file=args.migrations_file,
        ledger=not args.no_ledger,
    )


def show_status(
    job: str | None,
    *,
    migration: str | None = None,
    limit: int = 20,
    as_json: bool = False,
    migrations_file: str | None = None,
    ledger: bool = True,
) -> int:
    """Print the status of `job` (a job id, or the UUID of one of its `migrate` flow runs), or,
    when `job` is None, the `limit` most recent jobs (of `migration`, when given); as JSON when
    `as_json`. `python -m flows.status` and `prefect-migrate status`/`jobs` share it.

    Returns 0 when found (a list: always, even empty); 2, with the reason on stderr and nothing
    on stdout, for an unknown job or a flow run that does not exist or is not a `migrate` run;
    1 when the Prefect API cannot be read. `ledger` False reads only the Prefect API.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value() or "the local (ephemeral) Prefect API"
    try:
        if job is None:
            from flows.job_list import recent_jobs, render_list, with_ledgers

            found = recent_jobs(migration, limit)
            if ledger:
                with_ledgers(found, migrations_file)
            print(found.model_dump_json(indent=2) if as_json else render_list(found))
            return 0
        status, lookup_error = None, ""
        if flow_run_id := _as_uuid(job):
            try:
                status, asked = flow_run_status(flow_run_id)
            except UnknownFlowRun as exc:
                lookup_error = str(exc)  # perhaps a job id that looks like a UUID
            else:
                if str(asked.id) != status.flow_run_id:
                    print(
                        f"flow run {asked.name} ({asked.id}) is an earlier run of job {status.job_id}; "
                        "its newest run decides:",
                        file=sys.stderr,
                    )
        if status is None:
            try:
                status = job_status(job)
            except UnknownJob:
                print(
                    (f"{lookup_error}, and " if flow_run_id else "")
                    + f"no migration job {job!r}: no `migrate` flow run is tagged job:{job} at {api}",
                    file=sys.stderr,
                )
                return 2
    except httpx.HTTPError as exc:
        print(f"cannot read the Prefect API at {api}: {exc}", file=sys.stderr)
        return 1
    if status.job_id and ledger:
        with_ledger(status, migrations_file)
    print(status.model_dump_json(indent=2) if as_json else render(status))
    return 0


def with_ledger(status: JobStatus, migrations_file: str | None = None) -> JobStatus:
    """Add what the ledger says. When it knows better than the newest flow run (the job's data
    was removed or replaced since, or it was rolled back), its status and counts win: status
    never reports data that is no longer there."""
    status.ledger = ledger_view(status.job_id, status.migration, migrations_file)
    if status.migration:
        status.lags = migration_lags(status.migration, migrations_file)
    if apply_ledger(status, status.ledger) and status.ledger.error:
        status.errors.append(status.ledger.error)
    return status


def _as_uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
