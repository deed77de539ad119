"""The `rollback` flow: undo one migration job, exactly and only what it wrote."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.errors import ConfigError
from flows.heartbeats import migration_flow
from tasks.config import load_migration, load_migrations, migrations_path
from tasks.progress import artifact_slug
from tasks.rollback import RollbackReport, check_rollback, remove_staged_files, rollback_target
from tasks.storage_keys import check_job_id


def migration_of(job_id: str, migrations_file: str | None) -> str:
    """The migration a job id names (`<migration>-<time>-<hex>` ids), the longest match first."""
    names = sorted(load_migrations(migrations_path(migrations_file)).migrations, key=len, reverse=True)
    for name in names:
        if job_id.startswith(f"{name}-"):
            return name
    raise ConfigError(f"cannot tell which migration job {job_id!r} belongs to; pass source_name")


@migration_flow(name="rollback", log_prints=True)
def rollback(
    job_id: str,
    source_name: str | None = None,
    migrations_file: str | None = None,
    force: bool = False,
) -> RollbackReport:
    """Remove what job `job_id` wrote: its rows or points, the tables it created, its staged files.

    Rows and points that were in the target before the job, or written by anyone else, stay.
    The job is recorded as rolled back and never resumes. Rolling back twice does nothing more.
    `force` rolls back a job whose ledger still says running (its run crashed), and a job that
    changed rows that were there before it (upsert updates, replace truncation), whose earlier
    values cannot be brought back.
    """
    logger = get_run_logger()
    check_job_id(job_id)
    spec = load_migration(
        source_name or migration_of(job_id, migrations_file), migrations_path(migrations_file)
    )
    run = check_rollback(spec, job_id, force)
    if run["status"] == "rolled_back":
        report = RollbackReport(job_id=job_id, migration=spec.name, already_rolled_back=True)
    else:
        report = rollback_target(spec, job_id)
        remove_staged_files(spec, job_id)
        report.staged_files_removed = True
    create_markdown_artifact(
        markdown=f"```\n{report.summary()}\n```", key=f"migration-rollback-{artifact_slug(spec.name)}"
    )
    logger.info(report.summary())
    return report


if __name__ == "__main__":
    import sys

    print(rollback(job_id=sys.argv[1], source_name=sys.argv[2] if len(sys.argv) > 2 else None).summary())
