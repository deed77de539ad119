"""Retries and cache keys for the chunk steps, declared once here.

Cache keys are built from the job id, the table, the chunk id and its bounds, and the step,
and results are persisted: a rerun of the same job finds a finished step's result and skips
the step. Retries back off exponentially with jitter, and never retry a `MigrationError`
(bad config, bad data, a guard refusing), which would only fail again.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.tasks import exponential_backoff

from blocks.errors import MigrationError
from tasks.config import MigrationSpec, RetryPolicy


def is_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry unless the failure is a permanent `MigrationError`."""
    try:
        state.result()
    except MigrationError:
        return False
    except Exception:
        return True
    return True


# Every step without a migration-specific policy: 3 retries after 1, 2 and 4 s, +/- 50 %.
STEP_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_transient,
}


def chunk_cache_key(step: str):
    """Persisted results are found again by job, chunk, bounds and step, and by where the job
    writes: the same job id against another target or staging area is another job."""

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        chunk = parameters["chunk"]
        where = destination_digest(parameters["spec"])
        return (
            f"migrate/{parameters['job_id']}/{where}/{chunk.table}/{chunk.chunk_id}/"
            f"{chunk.lower}/{chunk.upper}/{step}"
        )

    return key


def destination_digest(spec: MigrationSpec) -> str:
    """A short digest of the target, ledger and staging settings (names of secrets, never values)."""
    settings = [spec.target, spec.ledger_settings, spec.staging]
    blob = "|".join(s.model_dump_json() for s in settings)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


@functools.cache
def with_retries(step: Task, policy: RetryPolicy) -> Task:
    """`step` with the migration's retry policy. Cached: `Task.with_options` is slow (~0.5 s)."""
    return step.with_options(**retry_options(policy))


def retry_options(policy: RetryPolicy) -> dict[str, Any]:
    return {
        "retries": policy.attempts,
        "retry_delay_seconds": exponential_backoff(backoff_factor=policy.delay_seconds)(policy.attempts)
        if policy.attempts
        else 0,
        "retry_jitter_factor": policy.jitter,
        "retry_condition_fn": is_transient,
    }
