"""What `verify` found, per table: the flow's result, its table artifact, and its error."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from pydantic import BaseModel, PrivateAttr

from blocks.errors import MigrationError, MigrationFailed, ValidationFailed
from tasks.progress import artifact_slug
from tasks.verify import ChangedValue, ChunkDiff, VerifyPlan


class VerifyFailure(MigrationError):
    """What the `verify` flow raises when the target differs or a range could not be read,
    holding the whole `report` (None only when unpickled without one), so a caller in the
    same process (`prefect-migrate verify --json`) can still print it."""

    def __init__(self, message: str, report: VerifyReport | None = None):
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # pickled with its report (Prefect may persist a failed run's error)
        return type(self), (str(self), self.report)


class VerifyDifferences(VerifyFailure, ValidationFailed):
    """The target differs from the source."""


class VerifyUnreadable(VerifyFailure, MigrationFailed):
    """Ranges could not be read (whatever the rest found)."""


class TableVerification(BaseModel):
    """One table's verification, summed over its ranges; at most `samples` samples of each kind."""

    table: str
    target: str
    key: list[str]
    chunks_checked: int = 0
    rows_beyond: int = 0
    """Source rows past the job's chunks (gained since it planned); counted in `source_rows` too."""
    chunks_not_loaded: int = 0
    source_rows: int = 0
    target_rows: int = 0
    missing: int = 0
    extra: int = 0
    changed: int = 0
    changed_columns: dict[str, int] = {}
    sample_missing: list[dict[str, Any]] = []
    sample_extra: list[dict[str, Any]] = []
    sample_changed: list[ChangedValue] = []
    first_difference: str | None = None
    """The chunk id of the first range found to differ."""

    @property
    def same(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def add(self, diff: ChunkDiff, samples: int) -> None:
        if diff.beyond:
            self.rows_beyond += diff.source_rows
        else:
            self.chunks_checked += 1
        self.source_rows += diff.source_rows
        self.target_rows += diff.target_rows
        self.missing += diff.missing
        self.extra += diff.extra
        self.changed += diff.changed
        for column, count in diff.changed_columns.items():
            self.changed_columns[column] = self.changed_columns.get(column, 0) + count
        self.sample_missing = (self.sample_missing + diff.sample_missing)[:samples]
        self.sample_extra = (self.sample_extra + diff.sample_extra)[:samples]
        self.sample_changed = (self.sample_changed + diff.sample_changed)[:samples]
        if not diff.same and self.first_difference is None:
            self.first_difference = diff.chunk_id

    def describe(self) -> str:
        """One line: the counts, and a sample key of each kind of difference."""
        if self.same:
            return f"{self.table}: same ({self.source_rows:,} rows in {self.chunks_checked} chunks)"
        parts = []
        if self.missing:
            parts.append(f"{self.missing:,} missing in the target (e.g. {keys(self.sample_missing[:1])})")
        if self.extra:
            parts.append(f"{self.extra:,} extra in the target (e.g. {keys(self.sample_extra[:1])})")
        if self.changed:
            c = self.sample_changed[0]
            parts.append(
                f"{self.changed:,} changed in {sorted(self.changed_columns)} (e.g. {keys([c.key])} "
                f"{c.column}: {c.source!r} in the source, {c.target!r} in the target)"
            )
        return f"{self.table}: " + "; ".join(parts)


class VerifyReport(BaseModel):
    """The `verify` flow's result: per table, how the target differs from the source now."""

    job_id: str
    migration: str
    job_status: str
    tables: list[TableVerification]
    seconds: float = 0.0
    errors: list[str] = []
    """Ranges that could not be read (their error); such a run fails whatever the rest found."""
    _diffs: list[tuple[int, ChunkDiff]] = PrivateAttr(default_factory=list)

    @classmethod
    def start(cls, job_id: str, migration: str, run: dict[str, Any], work: VerifyPlan) -> VerifyReport:
        """An empty report for each table of `work`, keyed as planned until a range says otherwise."""
        tables = [
            TableVerification(
                table=p.spec.name,
                target=p.target.qualified,
                key=list(p.target.primary_key),
                chunks_not_loaded=work.not_loaded[p.spec.name],
            )
            for p in work.tables
        ]
        return cls(job_id=job_id, migration=migration, job_status=run["status"], tables=tables)

    def record(self, index: int, future: PrefectFuture[ChunkDiff]) -> None:
        """Keep one finished range's diff (`index`: its place in the plan), or its error in `errors`."""
        try:
            self._diffs.append((index, future.result()))
        except Exception as exc:  # the other ranges are still checked; the run fails at the end
            self.errors.append(str(exc))

    def tally(self, samples: int) -> None:
        """Sum the recorded diffs into their tables, in the plan's order (so samples come in
        key order, whichever range finished first)."""
        by_name = {t.table: t for t in self.tables}
        for _, diff in sorted(self._diffs, key=lambda d: d[0]):
            by_name[diff.table].key = diff.key
            by_name[diff.table].add(diff, samples)
        self._diffs = []

    @property
    def same(self) -> bool:
        return not self.errors and all(t.same for t in self.tables)

    def summary(self) -> str:
        head = (
            f"Verified job {self.job_id} ({self.migration}, {self.job_status}) in {self.seconds:.1f} s: "
            + ("the target matches the source" if self.same else "DIFFERENCES FOUND")
        )
        lines = [head, *(f"  {t.describe()}" for t in self.tables)]
        lines += [
            f"  {t.table}: {t.chunks_not_loaded} planned chunk(s) the ledger does not show loaded, not checked"
            for t in self.tables
            if t.chunks_not_loaded
        ]
        lines += [
            f"  {t.table}: {t.rows_beyond:,} source row(s) past the job's chunks, which the source "
            "gained after the job planned them"
            for t in self.tables
            if t.rows_beyond
        ]
        lines += [f"  error: {e}" for e in self.errors[:5]]
        return "\n".join(lines)

    def error(self) -> VerifyDifferences:
        """The error the flow raises when the target differs: each differing table, with a
        sample key of each kind of difference; it holds this report."""
        differ = [t.describe() for t in self.tables if not t.same]
        return VerifyDifferences(
            f"verify job {self.job_id} ({self.migration}): the target differs from the source in "
            f"{len(differ)} table(s): " + " | ".join(differ),
            self,
        )

    def failure(self) -> VerifyFailure | None:
        """The error the flow raises for this report (holding it), or None when the target
        matches: `VerifyUnreadable` when a range could not be read, else `VerifyDifferences`."""
        if self.errors:
            return VerifyUnreadable(
                f"verify job {self.job_id} ({self.migration}): {len(self.errors)} range(s) could not "
                f"be read; first error: {self.errors[0]}",
                self,
            )
        return None if self.same else self.error()


def keys(rows: list[dict[str, Any]]) -> str:
    """Sample keys (or rows) as `a=1, b=x`, several separated by `; `."""
    return "; ".join(", ".join(f"{k}={v}" for k, v in row.items()) for row in rows)


def changes(values: list[ChangedValue]) -> str:
    return "; ".join(f"{keys([c.key])}: {c.column} {c.source!r} → {c.target!r}" for c in values)


def publish_verification(report: VerifyReport) -> None:
    """The table artifact `verify-<job>`: one row per table with its counts and sample keys."""
    rows = [
        {
            "table": t.table,
            "target": t.target,
            "key": ", ".join(t.key) or "(none: compared as multisets)",
            "chunks_checked": t.chunks_checked,
            "rows_beyond_job": t.rows_beyond,
            "chunks_not_loaded": t.chunks_not_loaded,
            "source_rows": t.source_rows,
            "target_rows": t.target_rows,
            "missing_in_target": t.missing,
            "extra_in_target": t.extra,
            "changed": t.changed,
            "changed_columns": ", ".join(f"{c}: {n}" for c, n in sorted(t.changed_columns.items())),
            "sample_missing": keys(t.sample_missing),
            "sample_extra": keys(t.sample_extra),
            "sample_changed": changes(t.sample_changed),
            "first_difference_in": t.first_difference or "",
        }
        for t in report.tables
    ]
    create_table_artifact(
        table=rows or [{"table": "(no tables)"}],
        key=f"verify-{artifact_slug(report.job_id)}",
        description=f"```\n{report.summary()}\n```",
    )


def announce_differences(report: VerifyReport) -> None:
    """Emit `migration.validation.failed` (payload `check: verify`) for each table that differs,
    naming the first range that did, so the `migration-validation-failed` automation notifies."""
    for table in report.tables:
        if table.same:
            continue
        emit_event(
            event="migration.validation.failed",
            resource={
                "prefect.resource.id": f"migration.job.{report.job_id}",
                "migration.table": table.table,
                "migration.chunk": table.first_difference or "",
            },
            payload={"error": f"verify: {table.describe()}", "check": "verify"},
        )
