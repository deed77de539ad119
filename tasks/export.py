"""Export one chunk from the source into one Parquet file in staging."""

from __future__ import annotations

import time

from pydantic import BaseModel

from tasks.arrow_types import conform
from tasks.config import MigrationSpec
from tasks.connections import build_source, build_staging
from tasks.plan import Chunk, TablePlan


class StagedChunk(BaseModel):
    key: str
    uri: str
    rows: int
    bytes: int
    seconds: float


def staging_key(job_id: str, chunk: Chunk) -> str:
    return f"{job_id}/{chunk.table}/{chunk.chunk_id}.parquet"


def export_chunk_to_staging(spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk) -> StagedChunk:
    """Stream the chunk's rows as Arrow batches, cast exactly to the staged schema, into Parquet.

    Memory holds one source batch at a time, whatever the chunk's size.
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
    staged = staging.write(key, schema, batches)
    return StagedChunk(
        key=key, uri=staged.uri, rows=staged.rows, bytes=staged.bytes, seconds=time.perf_counter() - started
    )
