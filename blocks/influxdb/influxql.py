"""The text of InfluxDB queries and deletes: quoted identifiers, time conditions and RFC3339
times, each exact for any name and any time InfluxDB can store."""

from __future__ import annotations

from datetime import timedelta

from blocks.influxdb.line_protocol import MAX_TIME_NS, MIN_TIME_NS
from blocks.timeunits import EPOCH_UTC, NS_PER_SECOND


def influxql_ident(name: str) -> str:
    """`name` as a double-quoted InfluxQL identifier: backslash, double quote and newline are
    escaped, so no name can end the identifier early and add InfluxQL of its own."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def delete_predicate_string(value: str) -> str:
    """`value` as a double-quoted string of a v2 delete predicate."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rfc3339_ns(ns: int) -> str:
    """RFC3339 UTC text with all nine fraction digits, for any InfluxDB time (1677..2262)."""
    seconds, fraction = divmod(ns, NS_PER_SECOND)
    stamp = EPOCH_UTC + timedelta(seconds=seconds)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def v2_delete_stop_is_inclusive(server_version: str | None) -> bool:
    """Whether a server's ``/api/v2/delete`` also deletes points sitting exactly on ``stop``.

    InfluxDB 2.x, Cloud and Timestream for InfluxDB treat stop as inclusive; 1.8's
    compatibility layer builds ``time < stop``. `server_version` is ``/ping``'s
    ``X-Influxdb-Version`` ("1.8.10", "v2.7.11"). An unknown version counts as inclusive, so at
    worst points at stop - 1 ns survive a delete; nothing outside the range is ever deleted.
    """
    major = (server_version or "").strip().lstrip("vV").split(".")[0]
    return major != "1"


def time_condition(start_ns: int | None, stop_ns: int | None) -> str:
    """InfluxQL for ``start_ns <= time < stop_ns``; a missing bound is InfluxDB's own limit, so
    points before 1970 and in the future are included."""
    lower = f"time >= {MIN_TIME_NS if start_ns is None else int(start_ns)}"
    upper = f"time <= {MAX_TIME_NS}" if stop_ns is None else f"time < {int(stop_ns)}"
    return f"{lower} AND {upper}"
