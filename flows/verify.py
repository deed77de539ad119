"""The `verify` flow: does the target still hold what the source holds, for one job's chunks?

Run it before cutover, after the source kept changing during a long migration. It writes
nothing; it fails when it finds a difference, so automations fire.
"""

from __future__ import annotations

import sys
import time

from prefect import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.errors import ConfigError, MigrationError
from flows.heartbeats import migration_flow
from flows.rollback import migration_of
from tasks.catch_up import spec_for_job
from tasks.config import load_migration, migrations_path
from tasks.jobs import load_recorded_plan
from tasks.plan import inspect_source
from tasks.storage_keys import check_job_id
from tasks.verify import check_job, plan_verify, verify_ranges
from tasks.verify_report import VerifyFailure, VerifyReport, announce_differences, publish_verification


def run_name() -> str:
    from prefect.runtime import flow_run

    return f"verify job {flow_run.parameters.get('job_id')}"


@migration_flow(
    name="verify", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=64), flow_run_name=run_name
)
def verify(
    job_id: str, source_name: str | None = None, sample: int = 5, migrations_file: str | None = None
) -> VerifyReport:
    """Re-read every chunk job `job_id` loaded from the source and from the target, and diff them:
    per table, rows missing in the target, extra in the target, and changed (by primary key;
    without one, rows are compared as multisets), with up to `sample` keys of each.

    Also checks the rows the source gained beyond the job's first and last chunk, where the job
    did not bound its range. Writes nothing. Publishes the table artifact `verify-<job>`, then
    raises `ValidationFailed` (`VerifyDifferences`, holding the report) naming each differing
    table and sample keys if anything differs (and emits `migration.validation.failed` per such
    table). A job the ledger does not hold,
    or one rolled back, raises `ConfigError`; a range that cannot be read fails the run after
    the rest are checked (`VerifyUnreadable`, a `MigrationFailed` holding the report).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    check_job_id(job_id)
    if sample < 0:
        raise ConfigError(f"sample must be 0 or more, not {sample}")
    spec = load_migration(
        source_name or migration_of(job_id, migrations_file), migrations_path(migrations_file)
    )
    run = check_job(spec, job_id)
    if run["status"] != "completed":
        logger.warning(
            "job %s is %s, not completed: only the chunks it loaded are checked", job_id, run["status"]
        )
    spec = spec_for_job(spec, run)  # a catch-up job's ranges are on its cursor
    plans = load_recorded_plan(spec, job_id, inspect_source(spec))
    if plans is None:
        raise ConfigError(f"job {job_id} recorded no chunks: there is nothing to verify")
    work = plan_verify(spec, job_id, run, plans)
    logger.info("verifying job %s: %d range(s) of %d table(s)", job_id, len(work.ranges), len(plans))

    report = VerifyReport.start(job_id, spec.name, run, work)
    for index, finished in verify_ranges(spec, work.ranges, sample):
        report.record(index, finished)
    report.tally(sample)
    report.seconds = time.perf_counter() - started
    publish_verification(report)
    logger.info(report.summary())
    announce_differences(report)
    failure = report.failure()  # holds the report, for a caller in this process (verify_and_print)
    if failure is not None:
        raise failure
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.verify JOB_ID [MIGRATION] [--sample N] [--migrations-file PATH]`.

    Exit 0 and the summary when the target matches the source; 1 and the difference (or the
    ranges that could not be read) when it does not; 2 when the job is refused (not in the
    ledger, rolled back, no migration to be found) or the arguments are wrong."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.verify", description=main.__doc__.split("\n\n")[0])
    parser.add_argument("job_id", help="the job to verify (its migration is found from a generated job id)")
    parser.add_argument(
        "migration", nargs="?", help="the job's migration in migrations.yaml, if not its prefix"
    )
    parser.add_argument("--sample", type=int, default=5, help="sample keys to list of each kind (default 5)")
    parser.add_argument(
        "--migrations-file", help="the migrations file (default: MIGRATIONS_FILE or migrations.yaml)"
    )
    args = parser.parse_args(argv)
    return verify_and_print(args.job_id, args.migration, args.sample, args.migrations_file)


def verify_and_print(
    job_id: str,
    migration: str | None = None,
    sample: int = 5,
    migrations_file: str | None = None,
    as_json: bool = False,
) -> int:
    """Run `verify` in this process and print its summary (its report as JSON when `as_json`).
    `python -m flows.verify` and `prefect-migrate verify` share it.

    Returns 0 when the target matches the source; 1, with the differences (or the ranges that
    could not be read, or the server that could not be reached) on stderr, when it does not;
    2, with "verify refused: <why>" on stderr, for a job the ledger does not hold, one rolled
    back, or no migration to be found. With `as_json`, the report goes to stdout on 0 and on
    1 alike (its `tables` name what differs); only a run that ended before it had a report
    (2, a server that could not be reached) prints nothing there. The flow run fails on a
    difference either way."""
    try:
        report = verify(job_id=job_id, source_name=migration, sample=sample, migrations_file=migrations_file)
    except ConfigError as exc:
        print(f"verify refused: {exc}", file=sys.stderr)
        return 2
    except VerifyFailure as exc:  # differences, unreadable ranges: the flow's report is in hand
        print(str(exc), file=sys.stderr)
        if as_json and exc.report is not None:
            print(exc.report.model_dump_json(indent=2))
        return 1
    except MigrationError as exc:  # a server that cannot be reached
        print(str(exc), file=sys.stderr)
        return 1
    print(report.model_dump_json(indent=2) if as_json else report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
