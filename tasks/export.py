"""Export one chunk from the source into one Parquet file in staging."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, PrivateAttr

from blocks.arrow_types import conform
from blocks.chunk_rows import ArrowRows, ChunkReference, ChunkRows, mapped
from blocks.errors import SourceSchemaError
from tasks.config import MigrationSpec
from tasks.connections import build_source, build_staging
from tasks.plan import Chunk, TablePlan, check_schema_drift
from tasks.storage_keys import path_segment


class StagedChunk(BaseModel):
    """A chunk in staging: `key` and `uri` of its Parquet file, or, staged by reference, an
    empty key and the `uri` of the source's own files. `data()` gives its rows for the load."""

    key: str
    uri: str
    rows: int
    bytes: int
    seconds: float
    reported_rows: int | None = None  # by reference: the rows the source's manifest reports
    _data: ChunkRows | None = PrivateAttr(default=None)

    def data(self) -> ChunkRows | None:
        """The rows as the export left them: in memory, or the referenced files; None when
        this model was rebuilt elsewhere (the load then reads the staged file)."""
        return self._data

    def holding(self, data: ChunkRows) -> StagedChunk:
        self._data = data
        return self


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
    if source.stages_by_reference:
        return reference_chunk(source, plan, chunk, schema, started)
    kept: list[pa.RecordBatch] = []
    batches = (
        conform(batch, schema, plan.source_names, plan.spec.name)
        for batch in source.read_chunk(
            plan.spec.name, plan.source_names, plan.spec.chunk_column, chunk.lower, chunk.upper
        )
    )
    key = staging_key(job_id, chunk)
    try:
        # The batches stay in memory (one chunk) for the load, which then reads no file back.
        staged = staging.write(key, schema, keeping(batches, kept))
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
    ).holding(ArrowRows(pa.Table.from_batches(kept, schema)))


def keeping(batches: Iterable[pa.RecordBatch], kept: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        kept.append(batch)
        yield batch


def reference_chunk(
    source: Any, plan: TablePlan, chunk: Chunk, schema: pa.Schema, started: float
) -> StagedChunk:
    """Stage by reference: the source's Parquet files (a folder, an UNLOAD's) are read in place,
    each batch cast to the staged schema as the export would, and nothing is copied."""
    reference: ChunkReference = source.reference_chunk(
        plan.spec.name, plan.source_names, plan.spec.chunk_column, chunk.lower, chunk.upper
    )
    names, table = plan.source_names, plan.spec.name
    rows = mapped(reference.rows, lambda batch: conform(batch, schema, names, table), schema)
    return StagedChunk(
        key="",
        uri=reference.uri,
        rows=rows.num_rows,
        bytes=reference.bytes,
        seconds=time.perf_counter() - started,
        reported_rows=reference.reported_rows,
    ).holding(rows)


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
