"""What the `prefect-migrate` commands share: their exit codes, the options most of them take,
and how an error reaches the operator."""

from __future__ import annotations

import sys
from typing import Annotated

from cyclopts import Parameter

OK = 0
"""The command did what was asked (a run completed, a job found, the target matches)."""
FAILED = 1
"""A run failed or was refused, verify found differences, a server or the Prefect API was unreachable."""
USAGE = 2
"""Bad arguments, an unknown job, flow run or migration, or a bad migrations file."""

EXIT_CODES = (
    "Exit codes: 0 ok; 1 failed, refused, differences found, or a server or the Prefect API "
    "unreachable; 2 bad usage, unknown job, flow run or migration, or a bad migrations file."
)

Json = Annotated[bool, Parameter(name="--json", help="machine-readable output (JSON) on stdout")]
MigrationsFile = Annotated[
    str | None,
    Parameter(
        name="--migrations-file",
        help="the migrations file (default: $MIGRATIONS_FILE, else the project's migrations.yaml)",
    ),
]


def error(message: str) -> None:
    """Print `message` on stderr (stdout stays for results, so `--json` output parses)."""
    print(message, file=sys.stderr)


def prefect_api() -> str:
    """Where the Prefect API is, to name it in an error (never a key: only the URL)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "the local (ephemeral) Prefect API"


def refusal(exc: Exception) -> str:
    """A refusal's message as a command-line user acts on it: the flows' `force=true` is
    `--force` here, and their `source_name` the migration NAME after the job id."""
    text = str(exc).replace("pass force=true", "pass --force").replace("force=true", "--force")
    return text.replace("pass source_name", "give the migration's NAME after the job id")
