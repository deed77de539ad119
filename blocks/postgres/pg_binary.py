"""Arrow record batches to the bytes PostgreSQL's `COPY ... FROM STDIN (FORMAT binary)` reads.

Vectorised: every column becomes one or two Arrow binary arrays of ready-made cells (a
big-endian int32 length, then the value in the type's binary send format; NULL is length -1
with no payload), built with numpy over whole arrays, and pyarrow's
`binary_join_element_wise` glues each row's int16 field count and cells together in C++.
There is no loop over rows or values in Python.

Only (Arrow type, PostgreSQL type) pairs whose binary form is exact are supported;
`BinaryCopyEncoder.for_columns` answers None for anything else, so the caller can fall back
to CSV (`blocks.postgres.csv_copy`). Values the target type cannot hold (an int64 beyond int4, a
nanosecond timestamp with a sub-microsecond part) raise `DataConversionError` naming the
column; range checks that PostgreSQL makes itself (dates, numeric precision, varchar
length) are left to it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from blocks.errors import DataConversionError, TargetGuardError

COPY_HEADER: bytes = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER: bytes = struct.pack(">h", -1)

# Days and microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400 * 1_000_000
_INT32 = np.iinfo(np.int32)
_INT64 = np.iinfo(np.int64)
_INT_RANGE = {"int2": np.iinfo(np.int16), "int4": _INT32, "int8": _INT64}
_INT_DTYPE = {"int2": ">i2", "int4": ">i4", "int8": ">i8"}
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "json", "jsonb"})
# A batch whose encoded rows exceed this is built with large_binary (64-bit offsets) throughout.
_MAX_BINARY = 2**31 - 1
_NUMERIC_POS, _NUMERIC_NEG = 0x0000, 0x4000
_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class _Pieces:
    """One column's contribution to every row: arrays joined in this order, each built on demand
    as binary or large_binary (decided once their total size is known), and that total size."""

    builders: list[Callable[[pa.DataType], pa.Array]]
    nbytes: int


def _validity(arr: pa.Array) -> np.ndarray | None:
    """True where a value is present; None when there are no NULLs."""
    if arr.null_count == 0:
        return None
    return arr.is_valid().to_numpy(zero_copy_only=False)


def _values(arr: pa.Array, dtype: np.dtype | str) -> np.ndarray:
    """The value buffer of a primitive array as numpy, without copying (NULL slots hold junk)."""
    data = arr.buffers()[1]
    if data is None:
        return np.zeros(len(arr), dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(data, dtype=dtype, count=len(arr), offset=arr.offset * itemsize)


def _fixed_cells(cells: np.ndarray, lengths: np.ndarray | int, valid: np.ndarray | None) -> _Pieces:
    """Cells from a structured array whose first field `len` is the big-endian int32 length.

    `lengths` is written to `len` for present values; absent ones get -1 and lose the rest of
    their record, so the flat bytes are compacted with a boolean mask (no row loop).
    """
    n = len(cells)
    width = cells.dtype.itemsize
    cells["len"] = lengths
    flat = cells.view(np.uint8).reshape(n, width)
    if valid is None:
        data = flat.reshape(-1)
        sizes = np.full(n, width, dtype=np.int64)
    else:
        cells["len"][~valid] = -1
        keep = np.ones((n, width), dtype=bool)
        keep[~valid, 4:] = False
        data = flat[keep]
        sizes = np.where(valid, width, 4)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])

    def build(binary_type: pa.DataType) -> pa.Array:
        offset_dtype = np.int64 if binary_type == pa.large_binary() else np.int32
        return pa.Array.from_buffers(
            binary_type, n, [None, pa.py_buffer(offsets.astype(offset_dtype)), pa.py_buffer(data)]
        )

    return _Pieces([build], total)


def _primitive_cells(values: np.ndarray, valid: np.ndarray | None) -> _Pieces:
    """Fixed-width cells: a 4-byte length, then `values` (already big-endian) verbatim."""
    cells = np.empty(len(values), dtype=[("len", ">i4"), ("v", values.dtype)])
    cells["v"] = values
    return _fixed_cells(cells, values.dtype.itemsize, valid)


def _integer(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    low, high = _INT_RANGE[pg_type].min, _INT_RANGE[pg_type].max
    bounds = pc.min_max(arr)
    for bound in (bounds["min"].as_py(), bounds["max"].as_py()):
        if bound is not None and not low <= bound <= high:
            raise DataConversionError(f"column {name!r}: {bound} is out of range for PostgreSQL {pg_type}")
    values = _values(arr, np.dtype(arr.type.to_pandas_dtype()))
    return _primitive_cells(values.astype(_INT_DTYPE[pg_type]), _validity(arr))


def _float(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    width = 8 if pg_type == "float8" else 4
    return _primitive_cells(_values(arr, f"<f{width}").astype(f">f{width}"), _validity(arr))


def _bool(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    values = pc.fill_null(arr, False).to_numpy(zero_copy_only=False).view(np.uint8)
    return _primitive_cells(values, _validity(arr))


def _date(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    valid = _validity(arr)
    days = _values(arr, "<i4").astype(np.int64) - _PG_EPOCH_DAYS
    if valid is not None:
        days[~valid] = 0
    # INT32_MIN and INT32_MAX are PostgreSQL's -infinity and infinity: never send them.
    if len(days) and days.min() <= _INT32.min:
        raise DataConversionError(f"column {name!r}: a date is out of range for PostgreSQL date")
    return _primitive_cells(days.astype(">i4"), valid)


def _to_microseconds(arr: pa.Array, name: str, target: pa.DataType) -> pa.Array:
    if arr.type == target:
        return arr
    try:
        return arr.cast(target, safe=True)
    except pa.ArrowInvalid as exc:
        raise DataConversionError(f"column {name!r}: cannot convert to microseconds exactly: {exc}") from None


def _time(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    arr = _to_microseconds(arr, name, pa.time64("us"))
    return _primitive_cells(_values(arr, "<i8").astype(">i8"), _validity(arr))


def _timestamp(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    arr = _to_microseconds(arr, name, pa.timestamp("us", arr.type.tz))
    valid = _validity(arr)
    micros = _values(arr, "<i8")
    if valid is not None:
        micros = np.where(valid, micros, _PG_EPOCH_US)
    # Shifting to PostgreSQL's epoch must neither overflow nor produce INT64_MIN (-infinity).
    if len(micros) and micros.min() <= _INT64.min + _PG_EPOCH_US:
        raise DataConversionError(f"column {name!r}: a timestamp is out of range for PostgreSQL {pg_type}")
    return _primitive_cells((micros - _PG_EPOCH_US).astype(">i8"), valid)


def _variable(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    """Length-prefix cells (with jsonb's version byte) followed by the raw bytes of each value."""
    large_input = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    if pa.types.is_fixed_size_binary(arr.type):
        arr = arr.cast(pa.large_binary())
        large_input = True
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if large_input else np.int32)
    offsets = offsets[arr.offset : arr.offset + n + 1]
    lengths = np.diff(offsets)
    valid = _validity(arr)
    payload_type = pa.large_binary() if large_input else pa.binary()
    payload = arr.view(payload_type)
    if valid is not None:
        if lengths[~valid].any():
            payload = pc.fill_null(payload, pa.scalar(b"", payload_type))
        else:
            # NULL slots are already empty: drop the validity bitmap instead of copying data.
            payload = pa.Array.from_buffers(
                payload_type, n, [None, *payload.buffers()[1:]], offset=arr.offset
            )
    if len(lengths) and lengths.max() > _INT32.max - 1:
        raise DataConversionError(f"column {name!r}: a value is too large for one PostgreSQL field")
    if pg_type == "jsonb":
        prefix = np.empty(n, dtype=[("len", ">i4"), ("version", "u1")])
        prefix["version"] = 1
        lengths = lengths + 1
    else:
        prefix = np.empty(n, dtype=[("len", ">i4")])
    cells = _fixed_cells(prefix, lengths, valid)
    payload_bytes = int(offsets[-1] - offsets[0]) if n else 0

    def cast_payload(binary_type: pa.DataType) -> pa.Array:
        return payload if payload.type == binary_type else payload.cast(binary_type)

    return _Pieces([*cells.builders, cast_payload], cells.nbytes + payload_bytes)


def _divide_limbs(limbs: list[np.ndarray], divisor: int) -> np.ndarray:
    """Divide the unsigned integers held as 32-bit limbs (most significant first) in place.

    Returns the remainders. `divisor` must be below 2**31 so `remainder << 32 | limb` fits
    in uint64.
    """
    d = np.uint64(divisor)
    rem = np.zeros(len(limbs[0]), dtype=np.uint64) if limbs else None
    for i, limb in enumerate(limbs):
        cur = limb if i == 0 else (rem << np.uint64(32)) | limb
        quotient = cur // d
        rem = cur - quotient * d
        limbs[i] = quotient
    while limbs and not limbs[0].any():
        limbs.pop(0)
    return rem


def _numeric(arr: pa.Array, name: str, pg_type: str) -> _Pieces:
    """decimal128(p, s) as numeric with a fixed layout per column.

    Every value gets ceil((p-s)/4) integer and ceil(s/4) fraction base-10000 digits, weight
    ceil((p-s)/4) - 1 and dscale s; numeric_recv strips zero digits and applies the column's
    typmod. Digits come from the 128-bit unscaled integers by long division over 32-bit limbs.
    """
    if not pa.types.is_decimal128(arr.type):
        arr = arr.cast(pa.decimal128(arr.type.precision, arr.type.scale))
    precision, scale = arr.type.precision, arr.type.scale
    n = len(arr)
    int_groups = -(-(precision - scale) // 4)
    groups = int_groups + -(-scale // 4)
    words = np.frombuffer(arr.buffers()[1], dtype="<u8", count=2 * n, offset=16 * arr.offset)
    lo, hi = words[0::2], words[1::2]
    valid = _validity(arr)
    negative = (hi >> np.uint64(63)).astype(bool)
    if valid is not None:
        negative &= valid
    # Two's complement absolute value: invert and add one, carrying into the high word.
    neg_lo = ~lo + np.uint64(1)
    abs_lo = np.where(negative, neg_lo, lo)
    abs_hi = np.where(negative, ~hi + (neg_lo == 0).astype(np.uint64), hi)
    if valid is not None:
        abs_lo[~valid] = 0
        abs_hi[~valid] = 0
    limbs = [abs_hi >> np.uint64(32), abs_hi & _MASK32, abs_lo >> np.uint64(32), abs_lo & _MASK32]
    while limbs and not limbs[0].any():
        limbs.pop(0)

    cells = np.empty(
        n,
        dtype=[
            ("len", ">i4"),
            ("ndigits", ">i2"),
            ("weight", ">i2"),
            ("sign", ">u2"),
            ("dscale", ">u2"),
            ("digits", ">i2", (groups,)),
        ],
    )
    cells["ndigits"] = groups
    cells["weight"] = int_groups - 1
    cells["sign"] = np.where(negative, _NUMERIC_NEG, _NUMERIC_POS)
    cells["dscale"] = scale
    digits = cells["digits"]
    digits[...] = 0
    # Fill digit groups from the least significant one.
    index = groups - 1
    partial = scale % 4
    if partial:
        if limbs:
            digits[:, index] = _divide_limbs(limbs, 10**partial) * 10 ** (4 - partial)
        index -= 1
    while index >= 0 and limbs:
        if index >= 1:
            rem = _divide_limbs(limbs, 10**8)
            digits[:, index] = rem % 10_000
            digits[:, index - 1] = rem // 10_000
            index -= 2
        else:
            digits[:, index] = _divide_limbs(limbs, 10_000)
            index -= 1
    if limbs:
        raise DataConversionError(
            f"column {name!r}: a value does not fit its Arrow type decimal128({precision}, {scale})"
        )
    return _fixed_cells(cells, 8 + 2 * groups, valid)


_Encoder = Callable[[pa.Array, str, str], _Pieces]


def _encoder_for(arrow_type: pa.DataType, pg_type: str) -> _Encoder | None:
    """The cell encoder for one (Arrow type, PostgreSQL typname) pair; None if unsupported."""
    t = arrow_type
    if pg_type in _INT_RANGE and pa.types.is_signed_integer(t):
        return _integer
    if pg_type == "float8" and pa.types.is_float64(t):
        return _float
    # float64 -> float4 would round (and not always as the CSV path's text would), so it is
    # left to CSV; float32 -> float8 likewise differs from the CSV path's shortest decimal.
    if pg_type == "float4" and pa.types.is_float32(t):
        return _float
    if pg_type in _TEXT_TYPES and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return _variable
    if pg_type == "bytea" and (
        pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
    ):
        return _variable
    if pg_type == "bool" and pa.types.is_boolean(t):
        return _bool
    if pg_type == "date" and pa.types.is_date32(t):
        return _date
    if pg_type == "time" and pa.types.is_time(t):
        return _time
    if pa.types.is_timestamp(t) and pg_type == ("timestamp" if t.tz is None else "timestamptz"):
        return _timestamp
    if (
        pg_type == "numeric"
        and (pa.types.is_decimal32(t) or pa.types.is_decimal64(t) or pa.types.is_decimal128(t))
        and 0 <= t.scale <= t.precision <= 38
    ):
        return _numeric
    return None


class BinaryCopyEncoder:
    """Encodes record batches of one fixed schema as binary COPY tuples."""

    def __init__(self, arrow_types: Sequence[pa.DataType], pg_types: Sequence[str], names: Sequence[str]):
        self._arrow_types = list(arrow_types)
        self._pg_types = list(pg_types)
        self._names = list(names)
        encoders = [_encoder_for(a, p) for a, p in zip(self._arrow_types, self._pg_types, strict=True)]
        if any(e is None for e in encoders):
            raise ValueError("unsupported (arrow type, PostgreSQL type) pair; use for_columns")
        self._encoders: list[_Encoder] = encoders  # type: ignore[assignment]
        self._field_count = struct.pack(">h", len(self._names))

    @classmethod
    def for_columns(
        cls, arrow_types: Sequence[pa.DataType], pg_types: Sequence[str], names: Sequence[str]
    ) -> BinaryCopyEncoder | None:
        """An encoder for these columns, or None when any (arrow type, pg type) pair is not
        supported, so the caller falls back to CSV.

        `pg_types` are `pg_type.typname`s (int4, varchar, timestamptz...; see `target_typnames`),
        in the column order the COPY statement names.
        """
        if not len(arrow_types) == len(pg_types) == len(names):
            return None
        if any(_encoder_for(a, p) is None for a, p in zip(arrow_types, pg_types, strict=True)):
            return None
        return cls(arrow_types, pg_types, names)

    def encode(self, batch: pa.RecordBatch) -> memoryview | bytes:
        """The batch's rows in binary COPY tuple format (no header/trailer).

        Raises DataConversionError naming the column when a value cannot be represented
        (e.g. int64 out of int4 range), and ValueError if the batch's column types are not the
        ones the encoder was made for. A memoryview result holds the Arrow buffer it points
        into, so it stays valid on its own; an empty batch gives b"".
        """
        types = list(batch.schema.types)
        if types != self._arrow_types:
            raise ValueError(f"batch column types {types} differ from the encoder's {self._arrow_types}")
        n = batch.num_rows
        if n == 0:
            return b""
        if not self._names:
            return self._field_count * n
        pieces = [
            encoder(column, name, pg_type)
            for encoder, column, name, pg_type in zip(
                self._encoders, batch.columns, self._names, self._pg_types, strict=True
            )
        ]
        total = 2 * n + sum(p.nbytes for p in pieces)
        binary_type = pa.large_binary() if total > _MAX_BINARY else pa.binary()
        arrays = [build(binary_type) for p in pieces for build in p.builders]
        rows = pc.binary_join_element_wise(
            pa.scalar(self._field_count, binary_type), *arrays, pa.scalar(b"", binary_type)
        )
        offset_dtype = np.int64 if binary_type == pa.large_binary() else np.int32
        offsets = np.frombuffer(rows.buffers()[1], dtype=offset_dtype)[rows.offset : rows.offset + n + 1]
        return memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def target_typnames(conn: psycopg.Connection, qualified_ident_sql: str, columns: list[str]) -> list[str]:
    """The `pg_type.typname` of each named column of a table, in the given order.

    `qualified_ident_sql` is the table as SQL text (e.g. `"public"."events"`, what
    `sql.Identifier(schema, name).as_string(conn)` gives). Raises TargetGuardError when the
    table or a column does not exist.
    """
    rows = conn.execute(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (qualified_ident_sql,),
    ).fetchall()
    typnames = {name: typname for name, typname in rows}
    missing = [c for c in columns if c not in typnames]
    if missing:
        raise TargetGuardError(f"target table {qualified_ident_sql} lacks column(s) {missing}")
    return [typnames[c] for c in columns]
