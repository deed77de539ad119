"""Export one chunk from the source into one Parquet file in staging."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from blocks.arrow_types import conform
from blocks.errors import SourceSchemaError
from tasks.config import MigrationSpec
from tasks.connections import build_source, build_staging
from tasks.plan import Chunk, TablePlan, check_schema_drift
from tasks.storage_keys import path_segment


class StagedChunk(BaseModel):
    key: str
    uri: str
    rows: int
    bytes: int
    seconds: float


def staging_key(job_id: str, chunk: Chunk) -> str:
    """`<job_id>/<table>/<chunk_id>.parquet`; in the table name "/", "\\", "%", control
    characters and a name of "." or ".." are percent-encoded, so every chunk stays in its
    job's folder."""
    return f"{job_id}/{path_segment(chunk.table)}/{chunk.chunk_id}.parquet"


def export_chunk_to_staging(spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk) -> StagedChunk:
    """Stream the chunk's rows as Arrow batches, cast exactly to the staged schema, into Parquet.

    Memory holds one source batch at a time, whatever the chunk's size. For SQL sources the
    table is described again after the read: a column added, removed or retyped since the job
    was planned raises `SourceSchemaError` ("schema drift in ..."), which is not retried, as
    does a read that failed because of such a change.
    """
    started = time.perf_counter()
    source, staging = build_source(spec), build_staging(spec)
    schema = plan.staged_schema()
    batches = (
        conform(batch, schema, plan.source_names, plan.spec.name)
        for batch in source.read_chunk(
            plan.spec.name, plan.source_names, plan.spec.chunk_column, chunk.lower, chunk.upper
        )
    )
    key = staging_key(job_id, chunk)
    try:
        staged = staging.write(key, schema, batches)
    except Exception:
        # A column dropped or retyped under the job fails the read (an unknown column, a value
        # that no longer casts); name that cause rather than the symptom, if it is the cause.
        drift = source_drift(source, plan)
        if drift is not None:
            raise drift from None
        raise
    check_source_columns(source, plan)
    return StagedChunk(
        key=key, uri=staged.uri, rows=staged.rows, bytes=staged.bytes, seconds=time.perf_counter() - started
    )


def source_drift(source: Any, plan: TablePlan) -> SourceSchemaError | None:
    """The `SourceSchemaError` `check_source_columns` raises, or None: no drift, or the source
    cannot be described (then the error at hand says more)."""
    try:
        check_source_columns(source, plan)
    except SourceSchemaError as exc:
        return exc
    except Exception:
        return None
    return None


def check_source_columns(source: Any, plan: TablePlan) -> None:
    """Raise `SourceSchemaError` if the columns of the source table drifted from the plan.

    Only sources whose `schema_can_drift` (a table can be altered under a running job, and
    describing one is a catalog query) are described again; Parquet files are checked against
    each other before a run, and a Timestream DESCRIBE is a billed query."""
    if source.schema_can_drift:
        check_schema_drift(plan, source.describe(plan.spec.name).columns)
