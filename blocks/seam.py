"""The seam every system plugs into: the `Source`, `Staging`, `Target` and `Ledger` protocols.

The tasks and flows call only what is written here. Each system (one package under `blocks/`)
implements the protocols it serves, and declares what it can do as class-level capabilities,
so a caller reads a flag instead of probing a class:

- `Source.schema_can_drift`: its tables can be altered under a running job, and describing
  one is cheap, so each chunk's read is followed by a check for drift.
- `Source.stages_by_reference`: its chunks are already Parquet files (a folder, an UNLOAD's),
  so they are read in place through `reference_chunk` instead of being copied into staging.
- `Source.time_unit` / `Target.time_unit`: the finest time unit the system keeps ("ns", "us").
  Staged files carry times in the target's unit; a source time finer than that fails its
  chunk, naming the column, rather than being rounded.
- `Target.transactional_load`: a chunk's rows and its ledger row commit in one transaction.
- `Target.load_modes`: the `LoadMode`s a table may ask for.
- `Target.keeps_row_provenance`: the target can tell which job wrote each row, so a rollback
  removes exactly a job's rows and sees whose rows an upsert overwrote.
- `Target.writes_points`: the target stores points (measurement, tags, fields, time) rather
  than rows; its tables need a point mapping, and chunks are loaded by `PointTarget` methods.
- `Target.time_range`: the first and last time the target can store (None: any time a source
  has); a table with times outside it is refused when planned. `Target.display_name` names
  the system in messages.
- `Target.holds_ledger`: the target's own database keeps the job ledger; a target that cannot
  names a separate `ledger:` in the config.

A system is found through `blocks.registry`, from the `type` its config section gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from blocks.columns import TableSchema


class LoadMode(StrEnum):
    APPEND = "append"
    UPSERT = "upsert"
    REPLACE = "replace"


@runtime_checkable
class Source(Protocol):
    """Where rows come from: described, bounded and read one chunk at a time as Arrow batches."""

    schema_can_drift: ClassVar[bool]
    stages_by_reference: bool
    time_unit: ClassVar[str]

    def check(self) -> None:
        """Log in and read the catalog; raise `ConnectionCheckError` naming the problem."""

    def describe(self, table: str) -> TableSchema:
        """The table's columns; an unknown table raises `SourceSchemaError` naming it."""

    def count_nulls(self, table: str, column: str) -> int: ...

    def bounds(self, table: str, column: str) -> tuple[Any, Any]:
        """(min, max) of `column`, or (None, None) for an empty table."""

    def occupied_buckets(self, table: str, column: str, origin: int, step: int) -> list[int]:
        """Indexes of the `step`-wide integer key buckets from `origin` that hold rows."""

    def count(self, table: str, column: str, lower: Any, upper: Any) -> int:
        """Rows with `lower <= column < upper` (an open end where a bound is None)."""

    def read_chunk(
        self, table: str, columns: list[str], chunk_column: str, lower: Any, upper: Any
    ) -> Iterator[pa.RecordBatch]:
        """The chunk's rows as Arrow batches; memory holds one batch at a time."""

    # With `stages_by_reference` only:
    # def reference_chunk(self, table, columns, chunk_column, lower, upper) -> ChunkReference:
    #     the chunk's rows in the source's own Parquet files (`blocks.chunk_rows`), unconverted.


@runtime_checkable
class Staging(Protocol):
    """Where each chunk's Parquet file waits between export and load."""

    def check(self) -> None: ...

    def write(self, key: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Any:
        """Write the batches as one Parquet file under `key`, replacing it whole; returns a
        `StagedFile` (uri, rows, bytes)."""

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        """The staged file as a local path for the body of the `with` block."""

    def delete_prefix(self, prefix: str) -> None: ...


@runtime_checkable
class Target(Protocol):
    """Where chunks land. Row targets load staged files; point targets also implement
    `PointTarget`."""

    transactional_load: ClassVar[bool]
    load_modes: ClassVar[frozenset[LoadMode]]
    time_unit: ClassVar[str]
    keeps_row_provenance: ClassVar[bool]
    writes_points: ClassVar[bool]
    holds_ledger: ClassVar[bool]
    time_range: ClassVar[tuple[Any, Any] | None]
    display_name: ClassVar[str]

    def check(self, container: str | None = None) -> None:
        """Log in and check the destination exists; raise `ConnectionCheckError` naming it.
        With `container` (the settings' `container`: the schema, bucket or database the
        migration's tables land in), also that the login may create and load them there,
        reading only; a missing privilege is named with what grants it."""

    def describe_target(self) -> str:
        """Where the data goes, without secrets (for messages and the ledger)."""

    def type_mapping(
        self, table: Any, source_columns: tuple[Any, ...], staged: pa.Schema, points: Any = None
    ) -> list[Any]:
        """A dry run's `blocks.preview.ColumnMapping` per staged column: source name and type,
        staged Arrow type, target column (or tag, field, time) and type, flagged `lossy` or
        `refused` with the reason. `points` is a point target's mapping. Writes nothing."""


@runtime_checkable
class RowTarget(Target, Protocol):
    """A target of tables: chunks are loaded whole, each with its ledger row."""

    def prepare_table(
        self,
        job_id: str,
        source_table: str,
        migration: str,
        table: Any,
        mode: LoadMode,
        allow_truncate_foreign_rows: bool,
        resumable_within: timedelta,
    ) -> None:
        """Create the table if missing; truncate it once per job for `replace`, behind the guard."""

    def loaded_ranges(self, table: str, exclude_job: str) -> list[dict]:
        """Other live jobs' loaded chunks of `table` (for the overlap guard)."""

    def load_chunk(self, **chunk: Any) -> Any:
        """Load one chunk's batches and record it in the ledger, exactly once per job."""

    def count_range(self, conn: Any, table: Any, lower: Any, upper: Any) -> int: ...

    def read_range(self, table: Any, schema: pa.Schema, lower: Any, upper: Any) -> pa.Table:
        """The table's rows with `lower <= chunk column < upper` (an open end where a bound is
        None), typed as `schema` (the staged one) in canonical form; writes nothing."""

    def canonical(self, table: Any, rows: pa.Table) -> pa.Table:
        """Staged-form `rows` in the canonical form `read_range` gives, so the two compare."""

    def rollback_job(self, job_id: str) -> list[Any]:
        """Remove the job's rows (by provenance) and mark the job rolled back, in one transaction."""

    def loaded_mismatch(self, chunks: list[dict]) -> str | None:
        """None when one cheap query finds the target table still holding what `chunks` (the
        ledger's rows of its loaded chunks) wrote; else what it found instead, as a clause."""

    def preview_table(
        self,
        job_id: str,
        source_table: str,
        migration: str,
        table: Any,
        mode: LoadMode,
        allow_truncate_foreign_rows: bool,
        resumable_within: timedelta,
    ) -> Any:
        """What `prepare_table` would do, as a `blocks.preview.TablePreview`: the DDL it would
        run and each guard's decision (columns, unique key, truncation). Writes nothing, not
        even the ledger's schema."""


@runtime_checkable
class PointTarget(Target, Protocol):
    """A target of points, loaded one staged chunk at a time: the tasks pass the chunk's rows
    (`blocks.chunk_rows.ChunkRows`: in memory, or Parquet files), the table's point mapping (its `PointsPlan`), a chunk label and time bounds in
    nanoseconds since the epoch (None: open), never a task model."""

    def chunk_measurements(self, rows: Any, points: Any) -> list[str]:
        """The measurements the chunk's rows go to, sorted (for the overlap guard)."""

    def write_chunk_points(self, rows: Any, points: Any, chunk: str) -> Any:
        """Write the chunk's rows as points. Returns what was written: `rows_in`,
        `points_written`, `problems` (what was left out, by reason) and `count_field` (a field
        every written point carries, or None). Rewriting a chunk is idempotent."""

    def reconcile_points(
        self,
        chunk: str,
        start_ns: int | None,
        stop_ns: int | None,
        measurements: list[str],
        points_written: int,
        count_field: str | None,
    ) -> int:
        """The target's count of the measurements' points in ``[start_ns, stop_ns)``; raises
        `ValidationFailed` unless it equals `points_written`."""

    def delete(self, measurement: str, start_ns: int | None, stop_ns: int | None) -> None:
        """Delete the measurement's points in ``[start_ns, stop_ns)`` (for a rollback)."""

    def verify_chunk_points(
        self,
        rows: Any,
        points: Any,
        chunk: str,
        start_ns: int | None,
        stop_ns: int | None,
        measurements: list[str],
    ) -> None:
        """Read back the measurements' points in ``[start_ns, stop_ns)`` and compare them with
        the points the chunk's rows map to (tags, field keys, field types, values, time);
        raises `ValidationFailed` naming the chunk, the field or tag, one point and both values."""

    def expected_points(self, table: pa.Table, points: Any) -> pa.Table:
        """The points `table`'s rows map to, in the target's canonical form (one row a point),
        leaving out the rows the write leaves out."""

    def read_points(self, measurements: list[str], start_ns: int | None, stop_ns: int | None) -> pa.Table:
        """The measurements' points in ``[start_ns, stop_ns)``, in the same canonical form."""

    def align_points(self, expected: pa.Table, actual: pa.Table) -> tuple[pa.Table, pa.Table, list[str]]:
        """Two canonical point tables with the same columns, and the columns keying a point
        (measurement, tag set, time), ready for `blocks.diff.diff_tables`."""

    def compare_points(self, expected: pa.Table, actual: pa.Table, where: str) -> str | None:
        """None when two canonical point tables hold the same points, else one sentence
        starting with `where` that names the field or tag, a point and both values."""

    def loaded_mismatch(self, chunks: list[dict]) -> str | None:
        """None when the target holds as many points in the measurements and time ranges of
        `chunks` (the ledger's rows of one table's loaded chunks) as the ledger counted; else
        both counts, as a clause."""

    def preview_points(self, points: Any) -> Any:
        """What preparing the table's points would do (`blocks.preview.TablePreview`: DDL and
        decisions). Writes nothing."""


class JobStart(StrEnum):
    """How a run took up its job (`Ledger.start_job`): a new one, an unfinished one resumed, or
    a completed one."""

    NEW = "new"
    RESUMED = "resumed"
    COMPLETED = "completed"


@runtime_checkable
class Ledger(Protocol):
    """The job ledger: jobs, their planned chunks, and each chunk's load, kept where the data
    lives (a PostgreSQL target's own database, or the `ledger:` a point target names).

    Every method runs in a transaction of its own. A target with `transactional_load` writes
    its chunk's ledger row itself, in the load's transaction."""

    def check(self) -> None:
        """Log in, and check, reading only, that the login may create (or use) the ledger and
        write its rows; raise `ConnectionCheckError` naming the problem."""

    def describe_target(self) -> str:
        """Where the ledger is, without secrets."""

    def start_job(self, **job: Any) -> tuple[str, JobStart]:
        """Create the job's row, or pick the job to resume: (job_id, how)."""

    def completed_job(self, **job: Any) -> dict | None:
        """The job's row, with its recorded `report` (None when it has none), when `start_job`
        with the same arguments would take up a completed job; else None. Writes nothing."""

    def record_report(self, job_id: str, report: dict, keep_recorded: bool = False) -> None:
        """Record a completed job's report (with `keep_recorded`, only when it has none)."""

    def discard_job(self, job_id: str) -> bool:
        """Forget a job that prepared and loaded nothing; False, changing nothing, otherwise."""

    def set_job_status(self, job_id: str, status: str, error: str | None = None) -> None: ...

    def job_run(self, job_id: str) -> dict | None:
        """The job's row, or None when the ledger does not hold it."""

    def job_runs(self, job_ids: list[str]) -> dict[str, dict]:
        """job id -> its row, for those of `job_ids` the ledger holds."""

    def run_lock(self, job_id: str, flow_run_id: str | None) -> Any:
        """The job's run lock: `acquire()` (None when taken, else who holds it), `release()`,
        and `how_to_free()` (what to do about a holder whose process is gone)."""

    def run_lock_holder(self, job_id: str) -> str | None:
        """Who holds the job's run lock, or None."""

    def ensure_run_lock(self, job_id: str) -> None:
        """Raise `TargetGuardError` when this process's run lost the job to another run."""

    def record_plan(
        self, job_id: str, rows: list[tuple], columns: dict, marks: list[dict] | None = None
    ) -> None:
        """Record the planned chunks, their tables' source columns and, for catch-up runs,
        each table's high-water mark (`table`, `cursor_column`, `high_water`, `window_start`,
        `window_rows`), all at once."""

    def migration_jobs(self, migration: str) -> list[dict]:
        """The jobs of the migration's chain, newest first, each with its `status`,
        `parameters` and high-water `marks`: its newest full job not rolled back or
        superseded, and every job started after it ([] without one). Reads only."""

    def planned_chunks(self, job_id: str) -> list[dict]: ...

    def planned_columns(self, job_id: str) -> dict[str, list[dict]]: ...

    def chunk_states(self, job_id: str) -> dict[tuple[str, str], str]: ...

    def chunk_status(self, job_id: str, table: str, chunk_id: str) -> dict | None: ...

    def chunk_to_load(self, job_id: str, table: str, chunk_id: str) -> dict:
        """The chunk's row before a load; raises when it is not planned or must never load again."""

    def mark_chunk_written(
        self, job_id: str, table: str, chunk_id: str, rows: int, staged_uri: str, details: dict
    ) -> None:
        """Mark a chunk loaded once a target without transactions verified its write."""

    def loaded_chunks(self, job_id: str, with_removed: bool = False) -> list[dict]: ...

    def verification_counts(self, job_ids: list[str]) -> dict[str, dict[str, int]]:
        """job id -> {"content": n, "counts": m}: how its loaded chunks were verified."""
        ...

    def point_claims(
        self, job_id: str, target: str, measurements: list[str] | None, ranges: list[tuple]
    ) -> list[dict]:
        """Other live jobs' loaded chunks overlapping these measurement time ranges."""

    def job_point_claims(self, job_id: str) -> list[dict]:
        """Other live jobs' chunks sharing a measurement time range with the job's."""

    def overwritten_claims(self, job_id: str) -> list[dict]:
        """Other live jobs' chunks whose rows the job's upserts overwrote."""

    def truncated_claims(self, job_id: str) -> list[dict]:
        """Other jobs' chunks the job's `replace` truncation removed."""

    def rollback_losses(self, job_id: str) -> list[dict]:
        """The job's tables where a rollback would lose rows that were there before it."""

    def mark_rolled_back(self, job_id: str, removed: Iterable[dict] = (), reason: str = "") -> list[str]:
        """Record the job rolled back, and other jobs' chunks in `removed` as removed; returns those jobs."""

    def job_to_take_up(
        self,
        *,
        job_id: str | None,
        migration: str,
        fingerprint: str,
        no_resume: bool,
        resumable_within: timedelta,
    ) -> dict | None:
        """The job's row that `start_job` with these arguments would take up (to resume, or
        completed), or None when it would start a new job; raises `TargetGuardError` where
        `start_job` would refuse. Writes nothing, and creates no ledger."""
