"""Arrow record batches to the bytes PostgreSQL's `COPY ... FROM STDIN (FORMAT csv)` reads.

Vectorised with pyarrow's CSV writer: every valid value is quoted and NULLs are left
unquoted and empty, so PostgreSQL tells NULL from the empty string. Binary columns are
hex-encoded (`\\x…`, bytea's input form) from the raw Arrow buffers, without a Python loop.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

_WRITE_OPTIONS = pcsv.WriteOptions(include_header=False, quoting_style="all_valid")


def binary_to_bytea_hex(arr: pa.Array) -> pa.Array:
    """`\\x`-prefixed lowercase hex strings for a binary array; NULLs stay NULL."""
    if pa.types.is_large_binary(arr.type) or pa.types.is_fixed_size_binary(arr.type):
        arr = arr.cast(pa.large_binary())
        offset_type = np.int64
    else:
        offset_type = np.int32
    validity, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + len(arr) + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    hex_bytes = bytes(memoryview(data_buf)[start:end]).hex().encode("ascii") if data_buf else b""
    hex_offsets = ((offsets - start) * 2).astype(np.int64)
    hex_arr = pa.LargeStringArray.from_buffers(len(arr), pa.py_buffer(hex_offsets), pa.py_buffer(hex_bytes))
    hex_arr = pc.if_else(arr.is_null(), pa.scalar(None, pa.large_string()), hex_arr)
    return pc.binary_join_element_wise(
        pa.scalar("\\x", pa.large_string()), hex_arr, pa.scalar("", pa.large_string())
    )


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    arrays = []
    for arr in batch.columns:
        if (
            pa.types.is_binary(arr.type)
            or pa.types.is_large_binary(arr.type)
            or pa.types.is_fixed_size_binary(arr.type)
        ):
            arr = binary_to_bytea_hex(arr)
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def batch_to_copy_csv(batch: pa.RecordBatch) -> bytes:
    """One batch as CSV rows for COPY, in column order, no header."""
    sink = io.BytesIO()
    pcsv.write_csv(_csv_ready(batch), sink, _WRITE_OPTIONS)
    return sink.getvalue()
