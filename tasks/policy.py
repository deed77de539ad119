"""Retries and cache keys, declared once here.

Cache keys are built from the job id, where it writes, the table, the chunk id and its
bounds, and the step, and results are persisted: a rerun of the same job finds a finished
chunk's result and skips it.

There is one retry mechanism, `run_step`: it backs off exponentially with jitter, by the
migration's `retries` policy, and retries only what `blocks.errors.is_transient` says may
succeed later. Every task that touches a server is declared with `step_task`, which runs its
body through `run_step`; the chunk task calls `run_step` for each of its steps, so a load
that fails does not export the chunk again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from blocks.errors import is_transient
from blocks.spec import MigrationSpec, RetryPolicy
from tasks.storage_keys import path_segment

T = TypeVar("T")

# A step that runs before the migration's own policy is known: 3 retries after 1, 2 and 4 s.
DEFAULT_RETRIES = RetryPolicy(attempts=3, delay_seconds=1.0, jitter=0.5)


def step_task(name: str, **options: Any) -> Callable[[Callable[..., T]], Any]:
    """`@task(name=...)` whose body runs through `run_step`, with the retry policy of the
    `MigrationSpec` among its arguments (`DEFAULT_RETRIES` when there is none)."""

    def decorate(fn: Callable[..., T]):
        @functools.wraps(fn)
        def retried(*args: Any, **kwargs: Any) -> T:
            specs = [a for a in (*args, *kwargs.values()) if isinstance(a, MigrationSpec)]
            policy = specs[0].retries if specs else DEFAULT_RETRIES
            return run_step(lambda: fn(*args, **kwargs), policy, name)

        return task(name=name, **options)(retried)

    return decorate


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
    """A step still failed after every attempt its retry policy allows.

    The message names the step, the number of attempts and the last error (kept as
    `__cause__`). Like that error it is transient, not a `MigrationError`: a rerun of the job
    tries the chunk again.
    """


def run_step(step: Callable[[], T], policy: RetryPolicy, label: str) -> T:
    """Run one step, retrying transient failures with the migration's policy.

    An error that is not transient (`blocks.errors.is_transient`: a `MigrationError` such as
    bad config, bad data or a guard refusing, or an error nobody expected) is raised at once,
    unchanged. A transient one is retried up to `policy.attempts` times, after
    `delay_seconds`, then twice that, and so on, each spread by ±`jitter`. When the last
    attempt fails too, raises `RetriesExhausted`: "<label>: gave up after <n> attempts: <last error>".
    """
    for attempt in range(policy.attempts + 1):
        try:
            return step()
        except Exception as exc:
            if not is_transient(exc):
                raise
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
