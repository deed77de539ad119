"""Retries and cache keys, declared once here.

Cache keys are built from the job id, where it writes, the table, the chunk id and its
bounds, and the step, and results are persisted: a rerun of the same job finds a finished
chunk's result and skips it. Retries back off exponentially with jitter, and never retry a
`MigrationError` (bad config, bad data, a guard refusing), which would only fail again.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task, get_run_logger
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.tasks import exponential_backoff

from blocks.errors import MigrationError
from tasks.config import MigrationSpec, RetryPolicy
from tasks.storage_keys import path_segment

T = TypeVar("T")


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
            f"migrate/{parameters['job_id']}/{where}/{path_segment(chunk.table)}/{chunk.chunk_id}/"
            f"{chunk.lower}/{chunk.upper}/{step}"
        )

    return key


def destination_digest(spec: MigrationSpec) -> str:
    """A short digest of the target, ledger and staging settings (names of secrets, never values)."""
    settings = [spec.target, spec.ledger_settings, spec.staging]
    blob = "|".join(s.model_dump_json() for s in settings)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


class RetriesExhausted(RuntimeError):
    """A chunk step still failed after every attempt its retry policy allows.

    The message names the step, the number of attempts and the last error (kept as
    `__cause__`). Like that error it is transient, not a `MigrationError`: a rerun of the job
    tries the chunk again.
    """


def run_step(step: Callable[[], T], policy: RetryPolicy, label: str) -> T:
    """Run one chunk step, retrying transient failures with the migration's policy.

    A `MigrationError` (bad config, bad data, a guard refusing) is raised at once, unchanged.
    Any other error is retried up to `policy.attempts` times, after `delay_seconds`, then twice
    that, and so on, each spread by ±`jitter`. When the last attempt fails too, raises
    `RetriesExhausted`: "<label>: gave up after <n> attempts: <last error>".
    """
    for attempt in range(policy.attempts + 1):
        try:
            return step()
        except MigrationError:
            raise
        except Exception as exc:
            if attempt == policy.attempts:
                tries = policy.attempts + 1
                raise RetriesExhausted(
                    f"{label}: gave up after {tries} attempt{'s' if tries > 1 else ''}: {exc}"
                ) from exc
            wait = policy.delay_seconds * 2**attempt * (1 + random.uniform(-policy.jitter, policy.jitter))
            _logger().warning(
                "%s failed (%s: %s); retry %d/%d in %.1f s",
                label,
                type(exc).__name__,
                exc,
                attempt + 1,
                policy.attempts,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def _logger():
    try:
        return get_run_logger()
    except Exception:  # outside a Prefect run
        return logging.getLogger("migrate")
