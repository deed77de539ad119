"""Line-protocol encoding speed: 200k rows (3 tags, a float and an integer field).

    .venv/bin/python -m bench.line_protocol_speed

Prints lines/s for several batch sizes. Not a test: timings belong here, never in tests/.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from blocks.influxdb.line_protocol import FieldSpec, PointMapping, encode_batch


def main(n: int = 200_000) -> None:
    rng = np.random.default_rng(7)
    batch = pa.record_batch(
        {
            "time": pa.array(
                1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 1000, pa.timestamp("ns", "UTC")
            ),
            "region": pa.array(rng.choice(["us-east-1", "eu west,1", "ap=south"], n)),
            "host": pa.array(np.char.add("host-", rng.integers(0, 500, n).astype(str))),
            "sensor": pa.array(np.char.add("s", rng.integers(0, 20000, n).astype(str))),
            "value": rng.normal(size=n),
            "count": rng.integers(-(10**12), 10**12, n),
        }
    )
    mapping = PointMapping(
        measurement="cpu",
        tags=("region", "host", "sensor"),
        fields=(FieldSpec("value"), FieldSpec("count")),
        time_column="time",
    )
    encode_batch(batch, mapping)  # warm up
    for size in (200_000, 50_000, 10_000):
        parts = [batch.slice(i, size) for i in range(0, n, size)]
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            total = sum(len(encode_batch(p, mapping)[0]) for p in parts)
            best = min(best, time.perf_counter() - started)
        print(
            f"batches of {size:>7,}: {n / best:>12,.0f} lines/s ({best * 1000:.0f} ms, {total / n:.0f} bytes/line)"
        )


if __name__ == "__main__":
    main()
