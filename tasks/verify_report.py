"""What `verify` found, per table: the flow's result, its table artifact, and its error."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks.errors import ValidationFailed
from tasks.progress import artifact_slug
from tasks.verify import ChangedValue, ChunkDiff


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

    def error(self) -> ValidationFailed:
        """The error the flow raises when the target differs: each differing table, with a
        sample key of each kind of difference."""
        differ = [t.describe() for t in self.tables if not t.same]
        return ValidationFailed(
            f"verify job {self.job_id} ({self.migration}): the target differs from the source in "
            f"{len(differ)} table(s): " + " | ".join(differ)
        )


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
        }
        for t in report.tables
    ]
    create_table_artifact(
        table=rows or [{"table": "(no tables)"}],
        key=f"verify-{artifact_slug(report.job_id)}",
        description=f"```\n{report.summary()}\n```",
    )
