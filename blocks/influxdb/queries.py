"""Counting, reading back and deleting points by measurement and time range.

Counting, reading back (and, on v1, deleting) use InfluxQL on ``/query`` with the block's URL and
credentials. On 2.x that endpoint answers through DBRP mappings: every bucket has a virtual
mapping whose database is the bucket name (``db/rp`` buckets map to database ``db``,
retention policy ``rp``) since 2.2; on older servers create one with ``influx v1 dbrp
create``. InfluxDB 3 and Timestream for InfluxDB answer ``/query`` the same way. v2 deletes use
influxdb-client's `DeleteApi`; InfluxDB 3 has no point delete.
"""

from __future__ import annotations

import pyarrow as pa
from influxdb_client.rest import ApiException

from blocks.influxdb.access import InfluxServerError
from blocks.influxdb.influxql import (
    delete_predicate_string,
    influxql_ident,
    rfc3339_ns,
    time_condition,
    v2_delete_stop_is_inclusive,
)
from blocks.influxdb.line_protocol import MAX_TIME_NS, MIN_TIME_NS
from blocks.influxdb.readback import field_kinds, points_from_results
from blocks.influxdb.verify import concat_points

# Rows per response chunk when `count` or `read_points` lists points.
_SCAN_CHUNK_ROWS = 10_000


class PointQueries:
    """The read and delete side of `InfluxDBTarget` (mixed into the block)."""

    def count(
        self,
        measurement: str,
        start_ns: int | None = None,
        stop_ns: int | None = None,
        *,
        field: str | None = None,
    ) -> int:
        """Points of `measurement` with ``start_ns <= time < stop_ns`` (None: unbounded), exactly.

        InfluxQL counts field values, not points (``COUNT(*)`` gives one count per field), so:

        - with `field`: ``SELECT COUNT("field")``, the points that carry that field. Cheap
          (InfluxDB counts from its blocks), and the point count when every point has the
          field: pass a field the source never leaves NULL (the encoder leaves out NULL,
          NaN and ±Inf values, so a sparse field counts fewer).
        - without: every point has at least one field, so listing the points counts them for
          any shape of data: ``SELECT *::field ... GROUP BY *`` (GROUP BY * keeps points of
          different series at the same time apart), read in chunks of 10,000 rows and counted.
          Its cost grows with the points in the range; prefer `field` for big ranges.

        A measurement or field that does not exist counts 0.
        """
        where = time_condition(start_ns, stop_ns)
        source = influxql_ident(measurement)
        with self._wire() as wire:
            if field is not None:
                statement = f"SELECT COUNT({influxql_ident(field)}) FROM {source} WHERE {where}"
                counts = [
                    row[1]
                    for result in self._influxql(wire, statement, f"counting {measurement}")
                    for series in result.get("series", [])
                    for row in series.get("values") or []
                ]
                return int(sum(counts))
            statement = f"SELECT *::field FROM {source} WHERE {where} GROUP BY *"
            return sum(
                len(series.get("values") or [])
                for result in self._influxql(wire, statement, f"counting {measurement}", _SCAN_CHUNK_ROWS)
                for series in result.get("series", [])
            )

    def read_points(
        self, measurements: list[str], start_ns: int | None = None, stop_ns: int | None = None
    ) -> pa.Table:
        """The points of `measurements` with ``start_ns <= time < stop_ns`` (None: unbounded) as
        a canonical point table (`verify`: measurement, a column per tag key, time in ns, a
        column per field key holding the value as typed text). Field types come from
        ``SHOW FIELD KEYS``; the points from ``SELECT *::field ... GROUP BY *`` over the range
        only, read in response chunks of 10,000 rows, each turned into Arrow before the next is
        parsed. A measurement that does not exist has no points."""
        tables = []
        where = time_condition(start_ns, stop_ns)
        with self._wire() as wire:
            for measurement in measurements:
                source = influxql_ident(measurement)
                doing = f"reading back {measurement}"
                kinds = field_kinds(self._influxql(wire, f"SHOW FIELD KEYS FROM {source}", doing))
                if not kinds:
                    continue
                statement = f"SELECT *::field FROM {source} WHERE {where} GROUP BY *"
                results = self._influxql(wire, statement, doing, _SCAN_CHUNK_ROWS)
                tables.append(points_from_results(measurement, results, kinds, self.describe_target()))
        return concat_points(tables)

    def delete(self, measurement: str, start_ns: int | None = None, stop_ns: int | None = None) -> None:
        """Delete the points of `measurement` with ``start_ns <= time < stop_ns`` (None: unbounded).

        v1: InfluxQL ``DELETE FROM "m" WHERE time >= start AND time < stop`` (1.x deletes from
        every retention policy of the database). v2: ``/api/v2/delete`` with predicate
        ``_measurement="m"``. Its stop is inclusive on 2.x, Cloud and Timestream for InfluxDB
        but exclusive on 1.8's compatibility layer, so the block reads ``/ping``'s
        ``X-Influxdb-Version`` and sends stop - 1 ns unless the server is 1.x (see
        `v2_delete_stop_is_inclusive`). InfluxDB 3 cannot delete points.
        """
        if start_ns is not None and stop_ns is not None and start_ns >= stop_ns:
            return
        doing = f"deleting from {measurement}"
        with self._wire() as wire:
            if self.api == "v1":
                conditions = []
                if start_ns is not None:
                    conditions.append(f"time >= {int(start_ns)}")
                if stop_ns is not None:
                    conditions.append(f"time < {int(stop_ns)}")
                where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
                for _ in self._influxql(wire, f"DELETE FROM {influxql_ident(measurement)}{where}", doing):
                    pass
                return
            ping = wire.http.request("GET", self._endpoint("/ping"))
            inclusive = v2_delete_stop_is_inclusive(ping.headers.get("X-Influxdb-Version"))
            start = MIN_TIME_NS if start_ns is None else int(start_ns)
            if stop_ns is None:
                stop = MAX_TIME_NS if inclusive else MAX_TIME_NS + 1
            else:
                stop = int(stop_ns) - 1 if inclusive else int(stop_ns)
            try:
                wire.client.delete_api().delete(
                    start=rfc3339_ns(start),
                    stop=rfc3339_ns(stop),
                    predicate=f"_measurement={delete_predicate_string(measurement)}",
                    bucket=self.bucket,
                    org=self.org,
                )
            except ApiException as exc:
                if not exc.status:
                    raise InfluxServerError(f"InfluxDB at {self.display_url}: {exc.reason}") from None
                raise self._refusal(exc.status, self._error_text(exc.body), doing) from None
