"""The migration flows' heartbeats, without the second Prefect's own cost at the end of a run.

Why: Prefect 3.8.8's sync flow engine sends `prefect.flow-run.heartbeat` from a thread that
sleeps in 1-second steps (`prefect/flow_engine.py`, `_send_heartbeats`: `for _ in
range(heartbeat_seconds): ... time.sleep(1)`) and joins that thread when the run ends
(`thread.join(timeout=2)` under `if join_on_exit`; the sync engine's `run_context` passes the
default True). So every flow call returns up to 1 s after its final state (0.5 s on average),
however short the run. Prefect's async engine passes `join_on_exit=False`; there is no setting
for it, and `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` cannot be set to "off" from the environment (an
integer >= 30, or None only in code).

What: a flow made with `migration_flow` (migrate, rollback, verify) turns Prefect's heartbeats off
for the call (`temporary_settings`, Prefect's public API) and sends the same event, with the same
resource and related resources, from a thread that waits on an `Event`, so it stops at once. The
`migration-zombie-runs` automation sees no difference: a killed process stops sending either.

A deployment's run is started by Prefect's runner (`run_flow`, not a call of the flow), so
Prefect's own heartbeats run there, at `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` (prefect.yaml sets
30), and these are not sent; the 1-s join there only delays the exit of the run's process, after
its final state is recorded.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import Flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

# Seconds between heartbeats: Prefect's minimum, as prefect.yaml sets for deployment runs
# (deployments/automations.py HEARTBEAT_SECONDS, which sizes the zombie window).
HEARTBEAT_SECONDS = 30


def _heartbeat_event() -> tuple[dict[str, str], list[dict[str, str]]] | None:
    """The resource and related resources of the current flow run's heartbeat, as Prefect's
    engine builds them (`_build_heartbeat_event_template`), or None outside a flow run."""
    from prefect import __version__
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None:
        return None
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run.id}",
        "prefect.resource.name": run.name or "",
        "prefect.version": __version__,
    }
    related = [
        {
            "prefect.resource.id": f"prefect.flow.{run.flow_id}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": context.flow.name if context.flow else "",
        }
    ]
    if run.deployment_id:
        related.append(
            {
                "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                "prefect.resource.role": "deployment",
            }
        )
    related += [
        {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"} for tag in run.tags
    ]
    return resource, related


@contextmanager
def heartbeats(every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Send the flow run's heartbeat now and every `every` seconds until the block ends; the
    thread stops as soon as it does. Nothing is sent when Prefect sends its own (its setting is
    on, as in a deployment's run) or outside a flow run."""
    event = None if get_current_settings().flows.heartbeat_frequency is not None else _heartbeat_event()
    if event is None:
        yield
        return
    from prefect.events import emit_event

    resource, related = event
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            except Exception:  # as Prefect's loop: a missed heartbeat must not fail the run
                pass
            stop.wait(every)

    thread = threading.Thread(target=beat, name="migration-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class MigrationFlow(Flow):
    """A `Flow` whose calls send `heartbeats()` instead of Prefect's (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        @functools.wraps(fn)
        def with_heartbeats(*args: Any, **kwargs: Any) -> Any:
            with heartbeats():
                return fn(*args, **kwargs)

        super().__init__(with_heartbeats, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return super().__call__(*args, **kwargs)


def migration_flow(**options: Any) -> Callable[[Callable[..., Any]], MigrationFlow]:
    """`@flow(**options)` for the migration flows: a `MigrationFlow`."""
    return lambda fn: MigrationFlow(fn, **options)
