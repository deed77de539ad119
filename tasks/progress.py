"""Progress of a running job: a Prefect progress artifact plus an event per chunk stage.

The tracker lives in the flow's process; chunk tasks report stage changes to it through
`report_stage`, and the flow reports each finished chunk, including chunks whose result
came from the cache on a resumed run. A timer thread pushes the artifact at most once a
second, off the chunks' path; `close` pushes the final state.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.events import emit_event

STAGES = ("export", "validation", "migration")
_TRACKERS: dict[str, ProgressTracker] = {}


class ProgressTracker:
    """Counts a job's chunks and pushes the progress artifact from a timer thread, at most once
    a second, so no chunk ever waits for the Prefect API; `close` pushes the final state."""

    def __init__(self, job_id: str, migration: str, total_chunks: int):
        self.job_id = job_id
        self.migration = migration
        self.total = max(total_chunks, 1)
        self.done = 0
        self.rows = 0
        self.in_stage: dict[str, str] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._last_push = 0.0
        self._taken = 0  # snapshots taken; a push never overwrites a newer one
        self._sent = 0
        self._timer: threading.Timer | None = None
        self.artifact_id = create_progress_artifact(
            progress=self.percent,
            key=f"migration-progress-{artifact_slug(migration)}",
            description=self.description(),
        )
        _TRACKERS[job_id] = self

    @property
    def percent(self) -> float:
        return round(100.0 * self.done / self.total, 1)

    def description(self) -> str:
        stages = Counter(self.in_stage.values())
        current = ", ".join(f"{stage}: {stages[stage]}" for stage in STAGES if stages[stage]) or "idle"
        return (
            f"Job `{self.job_id}`: {self.done}/{self.total} chunks done, {self.rows:,} rows moved. "
            f"Current stage: {current}."
        )

    def stage(self, chunk_key: str, stage: str) -> None:
        with self._lock:
            self.in_stage[chunk_key] = stage
            self._changed()

    def chunk_done(self, chunk_key: str, rows: int) -> None:
        with self._lock:
            self.in_stage.pop(chunk_key, None)
            self.done += 1
            self.rows += rows
            self._changed()

    def _changed(self) -> None:
        if self._timer is None:
            delay = max(0.0, 1.0 - (time.monotonic() - self._last_push))
            self._timer = threading.Timer(delay, self._flush)
            self._timer.daemon = True
            self._timer.start()

    def _snapshot(self) -> tuple[int, float, str]:
        self._last_push = time.monotonic()
        self._taken += 1
        return self._taken, self.percent, self.description()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            snapshot = self._snapshot()
        self._send(*snapshot)

    def _send(self, number: int, percent: float, description: str) -> None:
        with self._send_lock:
            if number <= self._sent:
                return
            self._sent = number
            update_progress_artifact(self.artifact_id, progress=percent, description=description)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            snapshot = self._snapshot()
        self._send(*snapshot)
        _TRACKERS.pop(self.job_id, None)


def publish_done(job_id: str, migration: str, chunks: int, rows: int) -> None:
    """The progress artifact of a job whose chunks are all done, in one API call (a rerun of a
    completed job: `ProgressTracker` would create it, then update it)."""
    create_progress_artifact(
        progress=100.0,
        key=f"migration-progress-{artifact_slug(migration)}",
        description=f"Job `{job_id}`: {chunks}/{max(chunks, 1)} chunks done, {rows:,} rows moved. Current stage: idle.",
    )


def artifact_slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "job"


def label_flow_run(job_id: str, migration: str) -> None:
    """Tag the current flow run `job:<job_id>` and `migration:<name>`, so status and automations
    find a job's runs through the Prefect API, and name it "<migration> job <job_id>"."""
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context

    flow_run = get_run_context().flow_run
    tags = sorted({*(flow_run.tags or []), f"job:{job_id}", f"migration:{migration}"})
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=tags, name=f"{migration} job {job_id}")


def unlabel_flow_run(job_id: str, migration: str) -> None:
    """A refused new job is not kept in the ledger: its run drops the `job:` tag (keeping
    `refused-job:<job_id>`), so status and automations do not take it for a job."""
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context

    flow_run = get_run_context().flow_run
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id).tags or []
        tags = sorted({t for t in current if t != f"job:{job_id}"} | {f"refused-job:{job_id}"})
        client.update_flow_run(flow_run.id, tags=tags, name=f"{migration} (refused)")


def report_validation_failed(job_id: str, table: str, chunk_id: str, error: str) -> None:
    """Emit `migration.validation.failed` (automations notify on it) for one chunk."""
    emit_event(
        event="migration.validation.failed",
        resource={
            "prefect.resource.id": f"migration.job.{job_id}",
            "migration.table": table,
            "migration.chunk": chunk_id,
        },
        payload={"error": error},
    )


def report_stage(job_id: str, table: str, chunk_id: str, stage: str, phase: str, **payload) -> None:
    """Emit `migration.chunk.<stage>.<phase>` and update the job's progress artifact, if any."""
    emit_event(
        event=f"migration.chunk.{stage}.{phase}",
        resource={
            "prefect.resource.id": f"migration.job.{job_id}",
            "migration.table": table,
            "migration.chunk": chunk_id,
        },
        payload=payload,
    )
    tracker = _TRACKERS.get(job_id)
    if tracker and phase == "started":
        tracker.stage(f"{table}/{chunk_id}", stage)
