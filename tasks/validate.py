"""Check a staged file against the source before anything is loaded."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
from pydantic import BaseModel

from blocks.errors import ValidationFailed
from tasks.config import MigrationSpec
from tasks.connections import build_source, build_staging
from tasks.export import StagedChunk
from tasks.plan import Chunk, TablePlan


class ChunkManifest(BaseModel):
    """A staged chunk that passed validation: what the load must reproduce."""

    key: str
    uri: str
    rows: int
    bytes: int
    source_rows: int
    export_seconds: float
    validate_seconds: float


def validate_staged_chunk(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, staged: StagedChunk
) -> ChunkManifest:
    """The file's rows equal the source's count for the range, its schema is the planned one,
    and NOT NULL columns hold no NULLs. Otherwise `ValidationFailed` names what differs."""
    started = time.perf_counter()
    where = f"{plan.spec.name} chunk {chunk.chunk_id} [{chunk.lower}, {chunk.upper})"
    source_rows = build_source(spec).count(plan.spec.name, plan.spec.chunk_column, chunk.lower, chunk.upper)
    expected = plan.staged_schema()
    with build_staging(spec).local_copy(staged.key) as path:
        meta = pq.ParquetFile(path)
        schema = meta.schema_arrow
        rows = meta.metadata.num_rows
        nulls: dict[str, int] = {}
        for rg in range(meta.metadata.num_row_groups):
            group = meta.metadata.row_group(rg)
            for i in range(group.num_columns):
                stats = group.column(i).statistics
                name = schema.names[i]
                nulls[name] = nulls.get(name, 0) + (stats.null_count if stats and stats.has_null_count else 0)
    if rows != source_rows or rows != staged.rows:
        raise ValidationFailed(
            f"{where}: staged file holds {rows} rows, the source counts {source_rows} (export wrote {staged.rows})"
        )
    if not schema.equals(expected, check_metadata=False):
        raise ValidationFailed(f"{where}: staged schema {schema} differs from the planned {expected}")
    bad = {
        c.name: nulls.get(c.name, 0) for c in plan.target.columns if not c.nullable and nulls.get(c.name, 0)
    }
    if bad:
        raise ValidationFailed(f"{where}: NULLs in NOT NULL column(s) {bad}")
    return ChunkManifest(
        key=staged.key,
        uri=staged.uri,
        rows=rows,
        bytes=staged.bytes,
        source_rows=source_rows,
        export_seconds=staged.seconds,
        validate_seconds=time.perf_counter() - started,
    )
