"""Reading Parquet datasets with Arrow, batch by batch: file footers, time-window filters
pushed down to the scan, dictionary decoding, and column bounds.

No function here holds more than one batch of data in memory.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from blocks.errors import SourceSchemaError
from blocks.timeunits import EPOCH, NS_PER_UNIT

READ_BATCH_ROWS = 65_536
FOOTER_READERS = 16  # footers are one small ranged read each; on S3 latency, not bandwidth, dominates


class FileFooter(NamedTuple):
    """What one Parquet file's footer says: its Arrow schema and row count."""

    path: str
    schema: pa.Schema
    rows: int


def read_footers(dataset: ds.FileSystemDataset) -> list[FileFooter]:
    """Every file's footer (schema and row count), read concurrently; no data pages are read."""

    def footer(fragment: ds.ParquetFileFragment) -> FileFooter:
        rows = fragment.metadata.num_rows
        return FileFooter(fragment.path, fragment.physical_schema, rows)

    with ThreadPoolExecutor(max_workers=FOOTER_READERS) as pool:
        return list(pool.map(footer, dataset.get_fragments()))


def value_type(kind: pa.DataType) -> pa.DataType:
    """The type of the values: a dictionary-encoded column's value type, else the type itself."""
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def epoch_nanoseconds(value: Any) -> int:
    """Nanoseconds since 1970-01-01 UTC (a Python int, so any year fits).

    An aware value is converted to UTC; a naive value is read as UTC wall-clock time. A date
    means its midnight. pandas Timestamps keep their nanoseconds. Other types raise TypeError.
    """
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise TypeError(f"a timestamp bound must be a datetime, date or numpy datetime64, not {value!r}")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    micros = (value - EPOCH) // timedelta(microseconds=1)
    return micros * NS_PER_UNIT["us"] + getattr(value, "nanosecond", 0)


def bound_scalar(value: Any, kind: pa.DataType) -> pa.Scalar:
    """`value` as a scalar of the column's own type, so a filter compares exactly and can prune files.

    Timestamps: an aware bound is compared as an instant, a naive one as UTC wall-clock time,
    whether the column is naive or aware. A bound finer than the column's unit is rounded up,
    which keeps both `column >= lower` and `column < upper` exact for whole ticks.
    """
    kind = value_type(kind)
    if pa.types.is_timestamp(kind):
        per_tick = NS_PER_UNIT[kind.unit]
        return pa.scalar(-(-epoch_nanoseconds(value) // per_tick), type=kind)
    try:
        return pa.scalar(value, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.scalar(value)  # e.g. an int64 bound on an int32 column: Arrow widens the column


def window_filter(
    schema: pa.Schema, column: str, lower: Any, upper: Any, where: str = "the files"
) -> ds.Expression | None:
    """`lower <= column < upper` (None = unbounded on that side); None when both are None."""
    if column not in schema.names:
        raise SourceSchemaError(f"column {column!r} not in {where}: {schema.names}")
    kind = schema.field(column).type
    condition = None
    if lower is not None:
        condition = pc.field(column) >= bound_scalar(lower, kind)
    if upper is not None:
        below = pc.field(column) < bound_scalar(upper, kind)
        condition = below if condition is None else condition & below
    return condition


def decoded(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with dictionary-encoded columns decoded to their value type, order kept."""
    if not any(pa.types.is_dictionary(t) for t in batch.schema.types):
        return batch
    arrays = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def column_bounds(dataset: ds.Dataset, column: str) -> tuple[Any, Any]:
    """(min, max) of one column, scanning only that column batch by batch; (None, None) if empty."""
    lows: list[pa.Scalar] = []
    highs: list[pa.Scalar] = []
    for batch in dataset.to_batches(columns=[column], batch_size=READ_BATCH_ROWS):
        result = pc.min_max(decoded(batch).column(0))
        if result["min"].is_valid:
            lows.append(result["min"])
            highs.append(result["max"])
    if not lows:
        return None, None
    return pc.min(pa.array(lows)).as_py(), pc.max(pa.array(highs)).as_py()


def floor_divide(values: pa.Array, step: int) -> pa.Array:
    """values // step rounded toward minus infinity, as Python's // (Arrow's divide truncates)."""
    quotient = pc.divide(values, step)
    inexact = pc.not_equal(pc.multiply(quotient, step), values)
    negative = pc.not_equal(pc.less(values, 0), step < 0)
    return pc.if_else(pc.and_(inexact, negative), pc.subtract(quotient, 1), quotient)
