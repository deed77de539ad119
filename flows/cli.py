"""`prefect-migrate`: the operator's loop in one command (run, plan, status, jobs, cancel,
rollback, verify, test-connections). Each subcommand wraps what the flows and tasks already
do; `python -m flows.cli` is the same command."""

from __future__ import annotations

import json
import sys
from typing import Annotated

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from blocks.errors import ConfigError, MigrationError
from flows.cli_common import EXIT_CODES, FAILED, OK, USAGE, Json, MigrationsFile, error, prefect_api, refusal
from flows.cli_run import plan, run

app = App(
    name="prefect-migrate",
    help="Run, watch, cancel, roll back and verify data migrations orchestrated by Prefect.\n\n" + EXIT_CODES,
    help_flags=["--help", "-h"],
    version_flags=[],
    # Flags are switches: `--json`, never `--no-json` (only `run --no-wait` has a negative form);
    # help texts state the defaults that matter.
    default_parameter=Parameter(negative=(), show_default=False),
)
app.command(run, name="run")
app.command(plan, name="plan")

NoLedger = Annotated[
    bool, Parameter(name="--no-ledger", help="read only the Prefect API, not the job's ledger")
]


@app.command(name="status")
def status(
    job_id: Annotated[str | None, Parameter(help="a job id, or the UUID of one of its flow runs")] = None,
    /,
    *,
    migrations_file: MigrationsFile = None,
    no_ledger: NoLedger = False,
    as_json: Json = False,
) -> int:
    """Where job JOB_ID (or the job of flow run FLOW_RUN_ID) stands: state, stage, percent, rows,
    errors, and what its ledger says. Without an argument: the recent jobs, as `jobs` lists them.

    Exit 0 found; 2 unknown job or flow run; 1 the Prefect API cannot be read.
    """
    from flows.status import show_status

    return show_status(job_id, as_json=as_json, migrations_file=migrations_file, ledger=not no_ledger)


@app.command(name="jobs")
def jobs(
    name: Annotated[str | None, Parameter(help="only the jobs of this migration")] = None,
    /,
    *,
    limit: Annotated[int, Parameter(name="--limit", help="jobs to list, at most (default 20)")] = 20,
    migrations_file: MigrationsFile = None,
    no_ledger: NoLedger = False,
    as_json: Json = False,
) -> int:
    """The recent jobs, newest first: state, progress, rows, start and end.

    Exit 0 (an empty list too); 2 for a limit below 1; 1 the Prefect API cannot be read.
    """
    from flows.status import show_status

    if limit < 1:
        error(f"--limit must be at least 1, not {limit}")
        return USAGE
    return show_status(
        None,
        migration=name,
        limit=limit,
        as_json=as_json,
        migrations_file=migrations_file,
        ledger=not no_ledger,
    )


@app.command(name="cancel")
def cancel(
    job_id: Annotated[str, Parameter(help="a job id, or the UUID of one of its flow runs")],
    /,
    *,
    as_json: Json = False,
) -> int:
    """Cancel the job's `migrate` flow runs that have not ended, as `prefect flow-run cancel`
    does for one: each goes to Cancelling (a run that has not started is Cancelled at once),
    and the worker running it stops its process. The ledger keeps `running`: afterwards run
    the job again to resume it, or roll it back.

    Exit 0 when at least one run was asked to cancel; 1 when the job has no active run or the
    Prefect API cannot be read; 2 unknown job or flow run.
    """
    import httpx

    from flows.cancel import cancel_job
    from flows.job_runs import UnknownFlowRun, UnknownJob

    try:
        result = cancel_job(job_id)
    except UnknownJob:
        error(f"no migration job {job_id!r}: no `migrate` flow run is tagged job:{job_id} at {prefect_api()}")
        return USAGE
    except UnknownFlowRun as exc:
        error(str(exc))
        return USAGE
    except httpx.HTTPError as exc:
        error(f"cannot read the Prefect API at {prefect_api()}: {exc}")
        return FAILED
    if as_json:
        print(result.model_dump_json(indent=2))
    for one in result.cancelled:
        if not as_json:
            print(
                f"{one.flow_run_name} ({one.flow_run_id}): {one.state_before} -> {one.state_after}: {one.outcome}"
            )
    if not result.cancelled:
        who = f"job {result.job_id}" if result.job_id else f"flow run {job_id}"
        if result.newest_state == "Completed":
            after = (
                f"Its newest run ended Completed: the job is done "
                f"(prefect-migrate rollback {result.job_id or 'JOB_ID'} removes what it wrote)"
            )
        else:
            after = "Next: run the job again to resume it, or roll it back (prefect-migrate rollback JOB_ID)"
        error(f"{who} has no active flow run ({result.ended_runs} ended): nothing to cancel. {after}")
        return FAILED
    if not as_json and result.job_id:
        print(
            f"job {result.job_id}: its ledger keeps `running`; once its runs have ended, run it again "
            f"to resume it, or roll it back (prefect-migrate rollback {result.job_id})"
        )
    return OK


@app.command(name="rollback")
def rollback(
    job_id: Annotated[str, Parameter(help="the job to roll back")],
    name: Annotated[
        str | None, Parameter(help="its migration, when the job id does not start with it")
    ] = None,
    /,
    *,
    force: Annotated[
        bool,
        Parameter(
            name="--force",
            help="roll back even a job whose ledger says running, or one that changed rows it "
            "did not create (their earlier values are lost)",
        ),
    ] = False,
    migrations_file: MigrationsFile = None,
    as_json: Json = False,
) -> int:
    """Remove exactly what job JOB_ID wrote (rows or points, tables it created, staged files),
    in this process.

    Exit 0 rolled back (or already was); 1 refused (the message says why, and whether --force
    applies) or a server unreachable; 2 unknown job or migration, or a bad migrations file.
    """
    from flows.rollback import rollback as rollback_flow

    try:
        report = rollback_flow(job_id=job_id, source_name=name, migrations_file=migrations_file, force=force)
    except ConfigError as exc:
        error(f"rollback refused: {refusal(exc)}")
        return USAGE
    except MigrationError as exc:
        error(f"rollback refused: {refusal(exc)}")
        return FAILED
    print(report.model_dump_json(indent=2) if as_json else report.summary())
    return OK


@app.command(name="verify")
def verify(
    job_id: Annotated[str, Parameter(help="the job to verify")],
    name: Annotated[
        str | None, Parameter(help="its migration, when the job id does not start with it")
    ] = None,
    /,
    *,
    sample: Annotated[
        int, Parameter(name="--sample", help="sample keys to list of each kind of difference (default 5)")
    ] = 5,
    migrations_file: MigrationsFile = None,
    as_json: Json = False,
) -> int:
    """Re-read job JOB_ID's chunks from the source and the target and diff them, writing nothing.

    Exit 0 the target matches the source; 1 differences (or ranges that could not be read);
    2 refused: unknown or rolled-back job, unknown migration.
    """
    from flows.verify import verify_and_print

    return verify_and_print(job_id, name, sample, migrations_file, as_json=as_json)


@app.command(name="test-connections")
def test_connections(
    name: Annotated[str, Parameter(help="the migration whose systems to check")],
    /,
    *,
    migrations_file: MigrationsFile = None,
    as_json: Json = False,
) -> int:
    """Log in to the migration's source, staging, target and ledger, without a Prefect API.

    Exit 0 all reachable; 1 one or more unreachable or refusing (each named); 2 unknown
    migration or a bad migrations file.
    """
    from blocks.errors import ConnectionCheckError
    from tasks.config import load_migration, migrations_path
    from tasks.connections import check_connections

    try:
        spec = load_migration(name, migrations_path(migrations_file))
    except ConfigError as exc:
        error(f"test-connections refused: {exc}")
        return USAGE
    try:
        check_connections.fn(spec)  # the plain function: no task run, no Prefect API
    except (ConnectionCheckError, MigrationError) as exc:
        error(str(exc))
        return FAILED
    checked = {
        "source": spec.source.type,
        "staging": spec.staging.type,
        "target": spec.target.type,
        "ledger": spec.ledger.type if spec.ledger is not None else f"{spec.target.type} (in the target)",
    }
    if as_json:
        print(json.dumps({"migration": name, "ok": True, "checked": checked}, indent=2))
    else:
        for role, system in checked.items():
            print(f"{role:<8} {system:<28} OK")
    return OK


def main(argv: list[str] | None = None) -> int:
    """Run `prefect-migrate` with `argv` (default: the process's arguments) and return its exit
    code: the command's, 0 after --help, 2 for arguments cyclopts cannot parse."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    try:
        result = app(tokens, result_action="return_value", exit_on_error=False)
    except CycloptsError:
        return USAGE  # cyclopts printed what was wrong
    return result if isinstance(result, int) else OK


if __name__ == "__main__":
    sys.exit(main())
