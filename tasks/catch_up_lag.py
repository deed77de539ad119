"""How far a catch-up table's target lags its source, for `status` and `jobs`."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.catch_up import as_utc, incremental, parse_mark, read_chain
from tasks.config import MigrationSpec
from tasks.connections import build_source
from tasks.plan import bound_text, plain_bound


class TableLag(BaseModel):
    """How far a table's target lags its source: the source's newest cursor value against the
    high-water mark of the newest completed job of the chain."""

    table: str
    cursor_column: str
    source_max: str | None
    high_water: str | None
    job_id: str | None
    lag_seconds: float | None
    error: str | None = None

    def render(self) -> str:
        if self.error:
            return f"{self.table}: lag unknown ({self.error})"
        if self.job_id is None:
            return f"{self.table}: no completed backfill yet (source {self.cursor_column} up to {self.source_max})"
        lag = "unknown" if self.lag_seconds is None else f"{self.lag_seconds:,.0f} s"
        return (
            f"{self.table}: lag {lag} (source {self.cursor_column} up to {self.source_max}, "
            f"target's high-water mark {self.high_water}, job {self.job_id})"
        )


def table_lags(spec: MigrationSpec) -> list[TableLag]:
    """The lag of each `incremental` table (reads the ledger and the source's maximum cursor);
    a source that cannot be read gives the table's `error` instead of raising."""
    tables = incremental(spec)
    if not tables:
        return []
    chain = read_chain(spec)
    source = build_source(spec)
    lags = []
    for table in tables:
        mark = (
            chain.marks.get(table.name)
            if chain.backfill and chain.backfill["status"] == "completed"
            else None
        )
        lag = TableLag(
            table=table.name,
            cursor_column=table.cursor_column,
            source_max=None,
            high_water=mark["high_water"] if mark else None,
            job_id=mark["job_id"] if mark else None,
            lag_seconds=None,
        )
        try:
            _, newest = (plain_bound(b) for b in source.bounds(table.name, table.cursor_column))
        except Exception as exc:  # noqa: BLE001 - status still shows what the ledger knows
            lag.error = f"the source cannot be read: {type(exc).__name__}: {exc}"
            lags.append(lag)
            continue
        lag.source_max = bound_text(newest)
        high = parse_mark(lag.high_water)
        if newest is not None and high is not None:
            lag.lag_seconds = max((as_utc(newest) - as_utc(high)).total_seconds(), 0.0)
        elif mark is not None:
            lag.lag_seconds = 0.0
        lags.append(lag)
    return lags
