"""`prefect-migrate run` and `prefect-migrate plan`: start a migration (through its deployment
when one exists, else in this process), or show what a run would do."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any
from uuid import UUID

from cyclopts import Parameter

from blocks.errors import ConfigError, MigrationError, SourceSchemaError
from flows.cli_common import FAILED, OK, USAGE, Json, MigrationsFile, error, prefect_api

WAIT_POLL_SECONDS = 2.0
"""How often `run --wait` reads the flow run's status."""
INTERRUPTED = 130
"""Ctrl-C while `run` waits for a deployment run: the shell's code for SIGINT; the run goes on."""

Start = Annotated[str | None, Parameter(name="--start", help="start of the time window (ISO 8601)")]
End = Annotated[str | None, Parameter(name="--end", help="end of the time window (ISO 8601)")]
BatchSize = Annotated[
    int | None, Parameter(name="--batch-size", help="rows per chunk, overriding the config")
]
CatchUp = Annotated[bool, Parameter(name="--catch-up", help="catch up from where the last job stopped")]


def run(
    name: str,
    /,
    *,
    job_id: Annotated[str | None, Parameter(name="--job-id", help="resume or start this job id")] = None,
    start: Start = None,
    end: End = None,
    batch_size: BatchSize = None,
    no_resume: Annotated[bool, Parameter(name="--no-resume", help="start a new job, never resume")] = False,
    catch_up: CatchUp = False,
    in_process: Annotated[
        bool, Parameter(name="--in-process", help="run here even when a deployment exists")
    ] = False,
    wait: Annotated[
        bool,
        Parameter(name="--wait", negative="--no-wait", help="follow a deployment run until it ends"),
    ] = True,
    migrations_file: MigrationsFile = None,
    as_json: Json = False,
) -> int:
    """Run migration NAME: through the Prefect deployment of `migrate` whose source_name is NAME
    when there is one (a worker runs it), else here in this process (which always waits).

    A deployment run gets the options given (and `--migrations-file` as its migrations_file,
    a path on the worker's machine); with `--job-id` it is tagged with its job at once, so
    `status` and `cancel` find it before it starts.

    Exit 0 when the run completed (with --no-wait: was started); 1 when it failed, crashed,
    was cancelled or refused, or a server or the Prefect API could not be reached; 2 for bad
    times or sizes, an unknown migration or a bad migrations file; 130 on Ctrl-C while
    waiting (the run goes on).
    """
    from tasks.config import run_window

    try:  # bad times or sizes fail here, before any run is created
        run_window(start, end, batch_size)
    except ConfigError as exc:
        error(f"run refused: {exc}")
        return USAGE
    params: dict[str, Any] = {
        "job_id": job_id,
        "start_time": start,
        "end_time": end,
        "batch_size": batch_size,
        "migrations_file": migrations_file,
    }
    params = {key: value for key, value in params.items() if value is not None}
    if no_resume:
        params["no_resume"] = True
    if catch_up:  # passed only when asked, so flows without the parameter still run
        params["catch_up"] = True
    deployment = None if in_process else _deployment_of(name, catch_up)
    if deployment is False:
        return FAILED
    if deployment is None:
        return _run_here(name, params, as_json)
    return _run_deployment(deployment, name, params, wait, as_json)


def _deployment_of(name: str, catch_up: bool = False):
    """The deployment of flow `migrate` whose `source_name` parameter is `name` (the first by
    name when several are), None when there is none, False when the API cannot be read.

    A deployment whose parameters ask for a catch-up (`catch_up: true`, the scheduled loop)
    serves only `--catch-up`, and is preferred for it: a plain run, the backfill or a job given
    by id, must not go through it."""
    import httpx
    from prefect.client.orchestration import get_client

    from flows.job_runs import MIGRATE_FLOW

    try:
        with get_client(sync_client=True) as client:
            found = client.read_deployments(flow_filter=MIGRATE_FLOW, limit=200)
    except httpx.HTTPError as exc:
        error(f"cannot read the Prefect API at {prefect_api()}: {exc}")
        return False
    mine = [d for d in found if (d.parameters or {}).get("source_name") == name]
    catching_up = [d for d in mine if (d.parameters or {}).get("catch_up") is True]
    others = [d for d in mine if d not in catching_up]
    matches = sorted((catching_up or others) if catch_up else others, key=lambda d: d.name)
    if len(matches) > 1:
        error(
            f"{len(matches)} deployments of migrate run {name!r} "
            f"({', '.join(d.name for d in matches)}); starting migrate/{matches[0].name}"
        )
    return matches[0] if matches else None


def _run_here(name: str, params: dict[str, Any], as_json: bool) -> int:
    from flows.migrate import migrate

    try:
        report = migrate(source_name=name, **params)
    except (ConfigError, SourceSchemaError) as exc:
        error(f"run refused: {exc}")
        return USAGE
    except MigrationError as exc:  # failed chunks, a guard refusing, a server not reachable
        error(str(exc))
        return FAILED
    print(report.model_dump_json(indent=2) if as_json else report.summary())
    return OK


def _run_deployment(deployment, name: str, params: dict[str, Any], wait: bool, as_json: bool) -> int:
    import httpx
    from prefect.deployments import run_deployment

    # Tagged with its job from the start, so `status` and `cancel` find it before it runs.
    tags = [f"job:{params['job_id']}", f"migration:{name}"] if "job_id" in params else None
    try:
        flow_run = run_deployment(deployment.id, parameters=params, timeout=0, tags=tags)
    except httpx.HTTPError as exc:
        error(f"cannot start a run of migrate/{deployment.name} at {prefect_api()}: {exc}")
        return FAILED
    started = {
        "deployment": f"migrate/{deployment.name}",
        "flow_run_id": str(flow_run.id),
        "flow_run_name": flow_run.name,
        "parameters": flow_run.parameters,
    }
    if not as_json:
        print(f"started flow run {flow_run.name} ({flow_run.id}) of deployment migrate/{deployment.name}")
    if not wait:
        if as_json:
            print(json.dumps(started, indent=2))
        return OK
    return follow(flow_run.id, started, as_json)


def follow(flow_run_id: UUID, started: dict[str, Any], as_json: bool) -> int:
    """Poll the flow run every WAIT_POLL_SECONDS, printing a line whenever its state or progress
    changes, and the job's id once the run has picked it (on stderr with `as_json`), until it ends. 0 Completed; 1 Failed, Crashed or
    Cancelled (errors on stderr); 130 on Ctrl-C, which stops the waiting, not the run."""
    import httpx

    from flows.job_runs import flow_run_status

    seen, job_id = None, None
    out = sys.stderr if as_json else sys.stdout
    try:
        while True:
            try:
                status, run = flow_run_status(flow_run_id)
            except httpx.HTTPError as exc:
                error(f"cannot read the Prefect API at {prefect_api()}: {exc}")
                return FAILED
            if status.job_id and status.job_id != job_id:  # known once the run has picked its job
                job_id = status.job_id
                print(f"job {job_id}", file=out)
            line = _progress_line(run.state.name if run.state else "unknown", status)
            if line != seen:
                seen = line
                print(line, file=out)
            if run.state is not None and run.state.is_final():
                break
            time.sleep(WAIT_POLL_SECONDS)
    except KeyboardInterrupt:
        error(
            f"stopped waiting; flow run {flow_run_id} goes on "
            f"(prefect-migrate status {flow_run_id} shows it, prefect-migrate cancel {flow_run_id} stops it)"
        )
        return INTERRUPTED
    completed = run.state.is_completed()
    if as_json:
        print(
            json.dumps(
                {**started, "state": run.state.name, "status": status.model_dump(mode="json")}, indent=2
            )
        )
    elif status.report:
        print(status.report)
    if not completed:
        for message in status.errors or [run.state.message or f"the run ended {run.state.name}"]:
            error(message)
    return OK if completed else FAILED


def _progress_line(state: str, status) -> str:
    """A line like `Running: 33.3 % (1/3 chunks), 1,000 rows`; the state alone until progress is known."""
    if status.percent is None:
        return state
    chunks = "" if status.chunks_total is None else f" ({status.chunks_done}/{status.chunks_total} chunks)"
    rows = "" if status.rows is None else f", {status.rows:,} rows"
    return f"{state}: {status.percent:.1f} %{chunks}{rows}"


def plan(
    name: str,
    /,
    *,
    start: Start = None,
    end: End = None,
    batch_size: BatchSize = None,
    catch_up: CatchUp = False,
    migrations_file: MigrationsFile = None,
    as_json: Json = False,
) -> int:
    """The dry run: what `run NAME` would read, chunk and write, touching nothing.

    Exit 0 when a run would go ahead; 1 when a guard would refuse it (the plan is printed
    anyway, the refusals last) or a server cannot be reached; 2 for an unknown migration, a
    bad migrations file, or a table or column the source does not have.
    """
    from blocks.errors import ConnectionCheckError

    try:
        from tasks.dry_run import plan_migration
    except ImportError as exc:
        error(f"plan is not available in this version ({exc})")
        return USAGE
    try:
        found = plan_migration(
            name,
            migrations_file=migrations_file,
            start_time=start,
            end_time=end,
            batch_size=batch_size,
            catch_up=catch_up,
        )
    except (ConfigError, SourceSchemaError) as exc:
        error(f"plan refused: {exc}")
        return USAGE
    except ConnectionCheckError as exc:
        error(str(exc))
        return FAILED
    print(found.model_dump_json(indent=2) if as_json else found.render())  # refusals come last
    return FAILED if found.refusals else OK
