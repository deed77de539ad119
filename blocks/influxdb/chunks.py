"""One chunk's points, as the tasks ask for them through `blocks.seam.PointTarget`: the
measurements a staged file writes, its write, the count that reconciles it, and the read-back
that verifies its content (`verify`).

The tasks pass plain values (the staged Parquet file, the table's `PointsPlan`, a chunk label
such as "table/chunk-id", time bounds in nanoseconds), so nothing here knows the task models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from blocks.chunk_rows import ChunkRows
from blocks.errors import ValidationFailed
from blocks.influxdb.influxql import rfc3339_ns
from blocks.influxdb.verify import aligned, compare_points, concat_points, expected_points, point_key
from blocks.influxdb.writes import InfluxLoad

if TYPE_CHECKING:  # the mapping module reads the config's models, which name this package
    from blocks.influxdb.mapping import PointsPlan

READ_BATCH_ROWS = 65_536
# What the encoder leaves out of a point, field by field (the keys of `EncodeReport`).
_VALUES_LEFT_OUT = ("non_finite_values", "oversized_strings", "out_of_range_values")


def field_on_every_point(rows: ChunkRows, points: PointsPlan, load: InfluxLoad) -> str | None:
    """A field key every written point carries, or None: no row was dropped, the column has
    no NULL in the chunk, and the encoder left out none of its values. InfluxDB then counts
    the points with a cheap `COUNT(field)`."""
    if load.points_written != load.rows_in:
        return None
    names = rows.schema.names
    left_out = {key for kind in _VALUES_LEFT_OUT for key in load.report[kind]}
    for field in points.fields:
        if field.key in left_out or field.column not in names:
            continue
        if rows.null_count(field.column) == 0:
            return field.key
    return None


def _time_text(ns: int | None) -> str:
    return "open" if ns is None else rfc3339_ns(ns)


class ChunkPoints:
    """The chunk side of `InfluxDBTarget` (mixed into the block): the `PointTarget` methods."""

    def chunk_measurements(self, rows: ChunkRows, points: PointsPlan) -> list[str]:
        """The measurements the chunk's rows go to, sorted: the mapping's one, or the
        distinct non-empty values of its measurement column."""
        if points.measurement is not None:
            return [points.measurement]
        column = rows.read([points.measurement_column]).column(0)
        names = pc.unique(column).drop_null().to_pylist()
        return sorted(n for n in names if n)

    def write_chunk_points(self, rows: ChunkRows, points: PointsPlan, chunk: str) -> InfluxLoad:
        """Write the chunk's rows as points, batch by batch (see `write_chunk`), and name
        a field every written point carries in `count_field` (the plan's, else one with no
        NULL, else None). `chunk` names the chunk in messages."""
        load = self.write_chunk(rows.batches(batch_size=READ_BATCH_ROWS), points.point_mapping(), chunk=chunk)
        count_field = points.count_field or field_on_every_point(rows, points, load)
        return load.model_copy(update={"count_field": count_field})

    def count_points(
        self, measurements: list[str], start_ns: int | None, stop_ns: int | None, field: str | None
    ) -> int:
        """Points of the measurements with ``start_ns <= time < stop_ns``: `COUNT(field)` when
        every point carries `field`, else by listing the points."""
        return sum(self.count(m, start_ns, stop_ns, field=field) for m in measurements)

    def loaded_mismatch(self, chunks: list[dict]) -> str | None:
        """None when InfluxDB holds, in the measurements and time ranges the ledger recorded for
        `chunks` (its rows of one table's loaded chunks, with `details`), the points the ledger
        counted after their writes; else both counts. One count per measurement set and run of
        touching ranges, `COUNT(field)` where the chunks named a field every point carries."""
        runs: list[list] = []  # [measurements, count_field, start_ns, stop_ns]
        details = sorted(
            ((c.get("details") or {}) for c in chunks),
            key=lambda d: (d.get("start_ns") is not None, d.get("start_ns") or 0),
        )
        for d in details:
            what = [sorted(d.get("measurements") or []), d.get("count_field")]
            last = runs[-1] if runs else None
            if last and last[:2] == what and last[3] is not None and last[3] == d.get("start_ns"):
                last[3] = d.get("stop_ns")
            else:
                runs.append([*what, d.get("start_ns"), d.get("stop_ns")])
        held = sum(self.count_points(m, start, stop, field) for m, field, start, stop in runs)
        expected = sum(c["rows_after"] or 0 for c in chunks)
        if held == expected:
            return None
        return (
            f"{self.container()} holds {held:,} points in the job's measurements and time ranges, "
            f"where its ledger counted {expected:,}"
        )

    def reconcile_points(
        self,
        chunk: str,
        start_ns: int | None,
        stop_ns: int | None,
        measurements: list[str],
        points_written: int,
        count_field: str | None,
    ) -> int:
        """InfluxDB's count of the measurements' points in the chunk's time range, which must
        equal `points_written`; else raises `ValidationFailed` saying which way it differs and
        why that happens."""
        counted = self.count_points(measurements, start_ns, stop_ns, count_field)
        if counted == points_written:
            return counted
        why = (
            "the range also holds points this chunk did not write (another job's, or data that was "
            "there before): pick another bucket or measurement, or delete them first"
            if counted > points_written
            else "rows that share measurement, tags and time collapse into one point in InfluxDB, "
            "or points were lost: check the source for duplicate series and time"
        )
        raise ValidationFailed(
            f"chunk {chunk} [{_time_text(start_ns)}, {_time_text(stop_ns)}): InfluxDB counts {counted} "
            f"points in {self.container()} ({', '.join(measurements) or 'no measurement'}), "
            f"{points_written} were written; {why}"
        )

    def expected_points(self, table: pa.Table, points: PointsPlan) -> pa.Table:
        """The canonical points (`verify`) that `table`'s rows map to under `points`, the rows
        the encoder leaves out left out."""
        return expected_points(table, points)

    def align_points(self, expected: pa.Table, actual: pa.Table) -> tuple[pa.Table, pa.Table, list[str]]:
        """Two canonical point tables with the same columns (a tag or field only one side has
        is NULL on the other), and the columns that key a point (measurement, tags, time)."""
        expected, actual = aligned(expected, actual)
        return expected, actual, point_key(expected)

    def compare_points(self, expected: pa.Table, actual: pa.Table, where: str) -> str | None:
        """None when two canonical point tables hold the same points value for value, else a
        sentence starting with `where` naming the field or tag, a point and both values."""
        return compare_points(expected, actual, where)

    def verify_chunk_points(
        self,
        rows: ChunkRows,
        points: PointsPlan,
        chunk: str,
        start_ns: int | None,
        stop_ns: int | None,
        measurements: list[str],
    ) -> None:
        """InfluxDB holds, in ``[start_ns, stop_ns)`` of `measurements`, exactly the points the
        chunk's rows map to: the same tag sets, times, field keys, field types and values
        (floats by their bits). Raises `ValidationFailed` naming the chunk, the field or tag,
        one point and both values. Memory: the chunk's points twice, in canonical form."""
        batches = rows.batches(batch_size=READ_BATCH_ROWS)
        expected = concat_points([expected_points(batch, points) for batch in batches])
        actual = self.read_points(measurements, start_ns, stop_ns)
        where = (
            f"chunk {chunk} [{_time_text(start_ns)}, {_time_text(stop_ns)}) in {self.container()} "
            "(content verification)"
        )
        problem = compare_points(expected, actual, where)
        if problem is not None:
            raise ValidationFailed(problem)
