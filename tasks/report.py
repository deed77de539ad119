"""The job report: returned by the flow and published as a table artifact."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.pipeline import ChunkReport
from tasks.progress import artifact_slug


class TableTotals(BaseModel):
    table: str
    target: str
    chunks: int
    rows: int
    bytes: int
    unit: str = "rows"
    rows_dropped: int = 0
    verified: str = "counts"


def verification(chunks: list[ChunkReport]) -> str:
    """How a set of chunks was verified: "content", "counts", e.g. "mixed (3 content, 1 counts)",
    or "no chunks"."""
    kinds = sorted({c.verified for c in chunks})
    if not kinds:
        return "no chunks"
    if len(kinds) == 1:
        return kinds[0]
    return "mixed (" + ", ".join(f"{sum(c.verified == k for c in chunks)} {k}" for k in kinds) + ")"


# The summary lists every chunk up to this many; the artifact always does.
SUMMARY_CHUNK_LINES = 40


class MigrationReport(BaseModel):
    job_id: str
    migration: str
    status: str
    resumed: bool
    rows: int
    bytes: int
    seconds: float
    tables: list[TableTotals]
    chunks: list[ChunkReport]
    error: str | None = None
    rows_loaded_now: int = 0
    """Rows (points) this run loaded; the rest of `rows` were loaded by earlier runs of the job."""
    chunks_loaded_now: int = 0
    already_complete: bool = False
    """The job had completed before this run, which found every chunk loaded and loaded nothing."""
    verified: str = "no chunks"
    """How the job's chunks were verified: "content" (every value read back and compared with
    the staged chunk), "counts" (row counts only), or "mixed (…)" when its runs differed."""

    def summary(self) -> str:
        unit = self.tables[0].unit if self.tables else "rows"
        if self.already_complete:
            head = (
                f"Migration {self.migration!r}, job {self.job_id}: already completed, nothing to load; "
                f"{self.rows:,} {unit} in {len(self.chunks)} chunks, all loaded by earlier runs"
            )
        else:
            earlier = self.rows - self.rows_loaded_now
            split = (
                f" ({self.rows_loaded_now:,} loaded by this run, {earlier:,} earlier)" if self.resumed else ""
            )
            head = (
                f"Migration {self.migration!r}, job {self.job_id}: {self.status}"
                f"{' (resumed)' if self.resumed else ''}, {self.rows:,} {unit}{split}, "
                f"{self.bytes:,} staged bytes, {self.seconds:.1f} s"
            )
        lines = [head, f"  verified: {self.verified}"]
        for t in self.tables:
            dropped = f", {t.rows_dropped:,} rows left out (see problems)" if t.rows_dropped else ""
            lines.append(
                f"  {t.table} -> {t.target}: {t.rows:,} {t.unit} in {t.chunks} chunks{dropped}, "
                f"verified: {t.verified}"
            )
        if len(self.chunks) <= SUMMARY_CHUNK_LINES:
            for c in self.chunks:
                lines.append(
                    f"    {c.table} {c.chunk_id} [{c.lower}, {c.upper}): {c.rows:,} {c.unit}, verified: {c.verified}"
                )
                lines.extend(f"      problem: {p}" for p in c.problems)
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


def build_report(
    job_id: str,
    migration: str,
    status: str,
    resumed: bool,
    chunks: list[ChunkReport],
    seconds: float,
    error: str | None = None,
    loaded_before: set[tuple[str, str]] | frozenset = frozenset(),
    already_complete: bool = False,
) -> MigrationReport:
    """The job's report from its chunk reports. A chunk counts as loaded by this run unless the
    ledger showed it loaded before the run (`loaded_before`) or its load found it so."""
    now = [c for c in chunks if not c.already_loaded and (c.table, c.chunk_id) not in loaded_before]
    totals: dict[str, TableTotals] = {}
    for c in chunks:
        t = totals.setdefault(
            c.table, TableTotals(table=c.table, target=c.target, chunks=0, rows=0, bytes=0, unit=c.unit)
        )
        t.chunks += 1
        t.rows_dropped += c.rows_dropped
        t.rows += c.rows
        t.bytes += c.bytes
    for t in totals.values():
        t.verified = verification([c for c in chunks if c.table == t.table])
    return MigrationReport(
        job_id=job_id,
        migration=migration,
        status=status,
        resumed=resumed,
        rows=sum(c.rows for c in chunks),
        bytes=sum(c.bytes for c in chunks),
        seconds=seconds,
        tables=list(totals.values()),
        chunks=sorted(chunks, key=lambda c: (c.table, c.chunk_id)),
        error=error,
        rows_loaded_now=sum(c.rows for c in now),
        chunks_loaded_now=len(now),
        already_complete=already_complete,
        verified=verification(chunks),
    )


def publish_report(
    report: MigrationReport, loaded_before: set[tuple[str, str]] | frozenset = frozenset()
) -> None:
    rows = [
        {
            "table": c.table,
            "chunk": c.chunk_id,
            "lower": c.lower,
            "upper": c.upper,
            c.unit: c.rows,
            "bytes": c.bytes,
            "export_s": round(c.export_seconds, 3),
            "validate_s": round(c.validate_seconds, 3),
            "load_s": round(c.load_seconds, 3),
            "skipped_reload": c.already_loaded,
            "verified": c.verified,
            "loaded_by": "earlier run"
            if c.already_loaded or (c.table, c.chunk_id) in loaded_before
            else "this run",
            **({"left_out": c.rows_dropped, "problems": "; ".join(c.problems)} if c.unit == "points" else {}),
        }
        for c in report.chunks
    ]
    create_table_artifact(
        table=rows or [{"table": "(no chunks)"}],
        key=f"migration-report-{artifact_slug(report.migration)}",
        description=f"```\n{report.summary()}\n```",
    )
