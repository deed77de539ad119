"""fakesnow's Snowflake stand-in server, with one fix so it behaves like Snowflake.

fakesnow 0.12.1 builds its timestamp struct arrays without a validity mask, so a NULL
TIMESTAMP reaches the client as 1970-01-01. Real Snowflake keeps it NULL; this wrapper
passes the mask through before starting the server. Test and demo support only.
"""

from __future__ import annotations

import argparse

import fakesnow.arrow as fake_arrow
import pyarrow as pa
import uvicorn

_original = fake_arrow.timestamp_to_sf_struct


def _timestamp_to_sf_struct_keeping_nulls(ts):
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    struct = _original(ts)
    if ts.null_count == 0:
        return struct
    return pa.StructArray.from_arrays(struct.flatten(), fields=list(struct.type), mask=ts.is_null())


fake_arrow.timestamp_to_sf_struct = _timestamp_to_sf_struct_keeping_nulls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import fakesnow.server

    uvicorn.run(fakesnow.server.app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
