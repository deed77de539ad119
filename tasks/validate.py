"""Check a staged file against the source before anything is loaded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, PrivateAttr

from blocks.chunk_rows import ChunkRows, staged_file
from blocks.errors import MigrationError, ValidationFailed
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
    _data: ChunkRows | None = PrivateAttr(default=None)

    def data(self) -> ChunkRows | None:
        """The validated rows, as `StagedChunk.data` gave them (None: read the staged file)."""
        return self._data

    def holding(self, data: ChunkRows | None) -> ChunkManifest:
        self._data = data
        return self


def validate_staged_chunk(
    spec: MigrationSpec, job_id: str, plan: TablePlan, chunk: Chunk, staged: StagedChunk
) -> ChunkManifest:
    """The chunk's rows equal the source's count for the range, their schema is the planned one,
    and NOT NULL columns hold no NULLs. Otherwise `ValidationFailed` names what differs.

    The rows checked are the ones the load will send: those the export holds in memory (the
    staged file was written from them, and holds as many), or the staged file's when the export
    ran elsewhere. A chunk staged by reference is checked from its files' metadata: their row
    count against the count the source's manifest reports, without asking the source again."""
    started = time.perf_counter()
    where = f"{plan.spec.name} chunk {chunk.chunk_id} [{chunk.lower}, {chunk.upper})"
    expected = plan.staged_schema()
    with staged_rows(spec, staged) as data:
        if staged.key:
            source = build_source(spec)
            source_rows = source.count(plan.spec.name, plan.spec.chunk_column, chunk.lower, chunk.upper)
            told = f"the source counts {source_rows} (export wrote {staged.rows})"
        else:
            source_rows = data.num_rows if staged.reported_rows is None else staged.reported_rows
            told = f"the source's manifest reports {source_rows} ({staged.uri})"
        rows, schema = data.num_rows, data.schema
        if rows != source_rows or rows != staged.rows:
            raise ValidationFailed(f"{where}: staged rows {rows}, {told}")
        if not schema.equals(expected, check_metadata=False):
            raise ValidationFailed(f"{where}: staged schema {schema} differs from the planned {expected}")
        bad = {c.name: n for c in plan.target.columns if not c.nullable and (n := data.null_count(c.name))}
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
    ).holding(data)


@contextmanager
def staged_rows(spec: MigrationSpec, staged: StagedChunk | ChunkManifest) -> Iterator[ChunkRows]:
    """The chunk's rows: in memory or by reference as the export left them, else the staged file
    (downloaded for the block, from S3 staging)."""
    data = staged.data()
    if data is not None:
        yield data
        return
    if not staged.key:  # staged by reference: the rows go with the model, or the chunk is exported again
        raise MigrationError(
            f"the chunk read in place from {staged.uri} lost its rows on the way to the load; export it again"
        )
    with build_staging(spec).local_copy(staged.key) as path:
        yield staged_file(str(path))
