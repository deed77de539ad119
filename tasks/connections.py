"""Build the source, staging, target and ledger a migration names, and check each one.

Each comes from its settings model's `build()` (see `blocks.registry`), which imports the
system's blocks only then: a PostgreSQL to PostgreSQL job never loads the Snowflake, AWS or
InfluxDB clients (about 100 MB of memory and seconds of start-up between them).
"""

from __future__ import annotations

from datetime import datetime

from prefect import task

from blocks.errors import ConfigError, ConnectionCheckError, MigrationError, PermanentError
from blocks.seam import Ledger, Source, Staging, Target
from tasks.config import MigrationSpec, RunWindow, load_migration, migrations_path, run_window


def build_source(spec: MigrationSpec) -> Source:
    return spec.source.build_source(spec.tables)


def build_target(spec: MigrationSpec) -> Target:
    return spec.target.build("target")


def build_ledger(spec: MigrationSpec) -> Ledger:
    """The job ledger: in the target's own database, or in the `ledger:` the migration names."""
    if spec.ledger is None:
        return spec.target.build_ledger("target")
    return spec.ledger.build_ledger("ledger")


def build_staging(spec: MigrationSpec) -> Staging:
    return spec.staging.build("staging")


@task(name="check-connections")
def check_connections(spec: MigrationSpec) -> None:
    """Log in to source, staging, target and ledger; on failure name the one that failed and why.

    The target and the ledger are also checked, reading only, for the privileges a run needs
    (creating and loading the migration's tables in `spec.target.container`, keeping the
    ledger): a missing one is named, with what grants it, before anything is written.
    Every failure here is permanent (`ConnectionCheckError`): an error nobody expected while
    building or checking a block is reported with its type, not retried."""
    checks = [
        ("source", lambda: build_source(spec).check()),
        ("staging", lambda: build_staging(spec).check()),
        ("target", lambda: build_target(spec).check(spec.target.container)),
        # Also a ledger kept in the target's own database: its schema needs privileges of its own.
        ("ledger", lambda: build_ledger(spec).check()),
    ]
    failures: dict[str, str] = {}  # problem -> the first role that has it
    for role, check in checks:
        try:
            check()
        except (ConnectionCheckError, ConfigError) as exc:
            # A ledger in the target's database fails a login as the target does: named once.
            failures.setdefault(str(exc), role)
        except MigrationError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure of a check is permanent too
            failures.setdefault(f"{type(exc).__name__}: {exc}", role)
    if failures:
        raise ConnectionCheckError(
            "connection check failed, nothing was touched:\n  "
            + "\n  ".join(f"{role}: {problem}" for problem, role in failures.items())
        )


@task(name="validate-config")
def validate_config(
    source_name: str,
    migrations_file: str | None,
    start_time,
    end_time,
    batch_size,
    window: str | None = None,
    scheduled: datetime | None = None,
) -> tuple[MigrationSpec, RunWindow]:
    """The named migration and the run's window, checked; any problem raises ConfigError."""
    try:
        window = run_window(start_time, end_time, batch_size, window, scheduled)
        return load_migration(source_name, migrations_path(migrations_file)), window
    except PermanentError:
        raise
    except Exception as exc:  # noqa: BLE001 - reading a config never gets better by retrying
        raise ConfigError(f"cannot read migration {source_name!r}: {type(exc).__name__}: {exc}") from exc
