"""The write path: Arrow batches encoded as line protocol into requests of at most
`batch_lines` lines, sent by a pool of `writers` threads that every chunk loading into the same
database from this process shares.

v2 writes go through influxdb-client's `WriteService.post_write` (the call `WriteApi.write`
makes) with the chunk's line protocol as the body, gzip-compressed by this block.
`WriteApi.write` itself would join the body again and compress it at gzip level 9, about seven
times the CPU of level 1 for a body some 20% smaller; sending the body ourselves keeps the
client's auth, connection pool and `ApiException`s and leaves the level to us. v1 writes are
``POST /write?db=&rp=&precision=ns`` with Basic auth (see `InfluxAccess._post_lines`).

A field type conflict (v2: 422, v1: 400 "partial write: field type conflict") raises
`ValidationFailed` naming the field and the kind it is stored as.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from gzip import compress as gzip_compress
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from blocks.errors import ConfigError, DataConversionError, ValidationFailed
from blocks.influxdb.access import Wire
from blocks.influxdb.line_protocol import EncodeReport, PointMapping, encode_batch

# Level 1 compresses line protocol about 3.5x at a seventh of level 9's CPU time.
GZIP_LEVEL = 1
# Write requests in flight to one database, per process: chunks loading at the same time
# share the `writers` slots, so a busy server is not sent more requests than it can take.
_SLOTS: dict[str, WriteSlots] = {}
_SLOTS_LOCK = threading.Lock()
_TYPE_CONFLICT = re.compile(
    r'field type conflict: input field "(?P<field>.*?)" on measurement "(?P<measurement>.*?)" '
    r"is type (?P<sent>\w+), already exists as type (?P<stored>\w+)"
)


def _check_columns(schema: pa.Schema, mapping: PointMapping, label: str) -> None:
    names = [mapping.time_column, *mapping.tags, *(spec.column for spec in mapping.fields)]
    if mapping.measurement_column:
        names.append(mapping.measurement_column)
    missing = sorted({name for name in names if name not in schema.names})
    if missing:
        raise ConfigError(f"{label}: the point mapping names column(s) the data lacks: {missing}")


class InfluxLoad(BaseModel):
    """What one `write_chunk` call sent.

    InfluxDB acknowledges a whole request or reports its first bad line, so on return every
    line sent was stored: `points_written` equals `lines_sent`. Lines of the same series and
    time overwrite each other, so the measurement may hold fewer points than that.
    `report` is the merged `EncodeReport` of the chunk (what had to be left out, by reason)
    and `problems` its human-readable lines, empty when every value was written exactly.
    """

    rows_in: int
    points_written: int
    lines_sent: int
    requests: int
    bytes_sent: int  # line protocol, uncompressed
    bytes_on_wire: int  # the request bodies as sent (gzip-compressed when `gzip` is on)
    report: dict[str, Any]
    problems: list[str]
    seconds: float
    # A field every written point carries, so `COUNT(field)` counts the points (set by
    # `write_chunk_points`, which can read the staged file's statistics).
    count_field: str | None = None


class WriteSlots:
    """`size` write requests in flight at once, granted in the order the chunks began writing:
    a free slot goes to the waiting request of the chunk that began first.

    Chunks that share the slots evenly all finish together, then are all counted (reconciled,
    read back) together while the slots stand idle. Served in order, the first chunk finishes
    while the next one still has requests to send, and is counted while that one writes. Every
    chunk still gets every slot the chunks before it leave free, so none waits for nothing."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._changed = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # a heap of (chunk ticket, request number)
        self._tickets = itertools.count()
        self._requests = itertools.count()

    def ticket(self) -> int:
        """A chunk's place in line, taken when it begins writing."""
        return next(self._tickets)

    @contextmanager
    def slot(self, ticket: int) -> Iterator[None]:
        """Hold one slot for the body, once every request of an earlier ticket has one."""
        place = (ticket, next(self._requests))
        with self._changed:
            heapq.heappush(self._waiting, place)
            try:
                while not (self._free and self._waiting[0] == place):
                    self._changed.wait()
            except BaseException:
                self._waiting.remove(place)
                heapq.heapify(self._waiting)
                self._changed.notify_all()
                raise
            heapq.heappop(self._waiting)
            self._free -= 1
            self._changed.notify_all()  # the next in line may take another free slot
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()


@dataclass
class _Sent:
    lines: int
    raw_bytes: int
    wire_bytes: int


@dataclass
class _Totals:
    report: EncodeReport = dataclasses.field(default_factory=EncodeReport)
    lines: int = 0
    requests: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0

    def add(self, sent: _Sent) -> None:
        self.lines += sent.lines
        self.requests += 1
        self.raw_bytes += sent.raw_bytes
        self.wire_bytes += sent.wire_bytes


class PointWriter:
    """The write side of `InfluxDBTarget` (mixed into the block)."""

    # --- write ----------------------------------------------------------------------------

    def write_chunk(
        self, batches: Iterable[pa.RecordBatch], mapping: PointMapping, *, chunk: str | None = None
    ) -> InfluxLoad:
        """Write the batches as points; returns what was sent and what the encoder left out.

        Each batch is cut into zero-copy row slices so that every request carries at most
        `batch_lines` lines (the line protocol is never split after encoding: a string field
        may hold a newline). At most `writers` requests are in flight to this database from the
        process (the chunks loading at once share them, the chunk that began first served
        first: see `WriteSlots`) while the next ones are encoded, so memory holds a few
        requests, never the chunk. `chunk` names the chunk in error messages. Raises as the module docstring says, plus `ConfigError` when the
        mapping does not fit the data and `DataConversionError` when a value cannot take its
        field's kind; on any error the chunk may be partly written, and writing it again is
        idempotent (the same series and time overwrite).
        """
        label = f"chunk {chunk}" if chunk else "the chunk"
        started = time.perf_counter()
        totals = _Totals()
        slots = self._write_slots()
        turn = partial(slots.slot, slots.ticket())
        # One request more than the slots: it waits at the slots, encoded, so a slot this chunk
        # frees is taken again at once rather than by a later chunk while this one encodes.
        ahead = self.writers + 1
        with (
            self._wire() as wire,
            ThreadPoolExecutor(ahead, thread_name_prefix="influx-writer") as pool,
        ):
            in_flight: set[Future[_Sent]] = set()
            try:
                for body, lines in self._requests(batches, mapping, totals, label):
                    if len(in_flight) >= ahead:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in done:
                            totals.add(future.result())
                    in_flight.add(pool.submit(self._send, wire, body, lines, label, turn))
                for future in in_flight:
                    totals.add(future.result())
            except BaseException:
                for future in in_flight:
                    future.cancel()
                raise
        return InfluxLoad(
            rows_in=totals.report.rows_in,
            points_written=totals.lines,
            lines_sent=totals.lines,
            requests=totals.requests,
            bytes_sent=totals.raw_bytes,
            bytes_on_wire=totals.wire_bytes,
            report=dataclasses.asdict(totals.report),
            problems=totals.report.problems(),
            seconds=time.perf_counter() - started,
        )

    def _requests(
        self, batches: Iterable[pa.RecordBatch], mapping: PointMapping, totals: _Totals, label: str
    ) -> Iterator[tuple[bytes, int]]:
        """Request bodies of at most `batch_lines` lines, encoded lazily, with their line counts.

        A slice never has more rows than the request has room for lines, so a request cannot
        overflow; it is sent once less than a quarter of it is left, so every encoder call
        covers at least a quarter request (or the rest of a batch). Raises `ConfigError` for a
        mapped column that is missing or has a type line protocol cannot carry, and
        `DataConversionError` for a value its `FieldSpec.kind` cannot hold: both are permanent.
        """
        pieces: list[bytes] = []
        lines = 0
        least_room = max(1, self.batch_lines // 4)
        for batch in batches:
            _check_columns(batch.schema, mapping, label)
            offset = 0
            while offset < batch.num_rows:
                take = min(self.batch_lines - lines, batch.num_rows - offset)
                try:
                    data, report = encode_batch(batch.slice(offset, take), mapping)
                except TypeError as exc:  # a column type with no line-protocol form
                    raise ConfigError(f"{label}: {exc}") from None
                except ValueError as exc:  # a value the FieldSpec's kind cannot hold
                    raise DataConversionError(f"{label}: {exc}") from None
                offset += take
                totals.report = totals.report + report
                if data:
                    pieces.append(data)
                    lines += report.lines_out
                if self.batch_lines - lines < least_room:
                    yield b"".join(pieces), lines
                    pieces, lines = [], 0
        if lines:
            yield b"".join(pieces), lines

    def _write_slots(self) -> WriteSlots:
        key = f"{self.display_url} {self.container()} {self.writers}"
        with _SLOTS_LOCK:
            if key not in _SLOTS:
                _SLOTS[key] = WriteSlots(self.writers)
            return _SLOTS[key]

    def _send(
        self, wire: Wire, body: bytes, lines: int, label: str, turn: Callable[[], ContextManager[None]]
    ) -> _Sent:
        """Send one request once `turn()` (a slot of `WriteSlots`) lets it."""
        wire_body = gzip_compress(body, compresslevel=GZIP_LEVEL, mtime=0) if self.gzip else body
        try:
            with turn():
                self._post_lines(wire, wire_body, f"writing {label}", compressed=self.gzip)
        except ValidationFailed as exc:
            raise self._with_type_conflict(exc, label) from None
        return _Sent(lines=lines, raw_bytes=len(body), wire_bytes=len(wire_body))

    def _with_type_conflict(self, exc: ValidationFailed, label: str) -> ValidationFailed:
        conflict = _TYPE_CONFLICT.search(str(exc))
        if conflict is None:
            return exc
        return ValidationFailed(
            f'{label}: field "{conflict["field"]}" of measurement "{conflict["measurement"]}" is stored '
            f"as {conflict['stored']} in {self.describe_target()}, but {label} writes it as "
            f"{conflict['sent']}. InfluxDB kept the chunk's other lines (a partial write). Give the "
            f'field FieldSpec(kind="{conflict["stored"]}") or write to a new measurement or bucket, '
            "then rerun the chunk; rewriting its points is idempotent."
        )
