"""InfluxDB as a migration target: Arrow batches in as line protocol, InfluxQL counts and deletes.

`InfluxDBTarget` keeps the connection settings (token or password as `SecretStr`) apart from
the I/O: check the target, write one chunk, count and delete the points of a time range.

Two APIs, one behaviour:

- ``api="v2"``: InfluxDB 2.x, Cloud, Timestream for InfluxDB and 1.8+'s compatibility layer.
  Writes go through influxdb-client's `WriteService.post_write` (the call `WriteApi.write`
  makes) with the chunk's line protocol as the body, gzip-compressed by this block.
  `WriteApi.write` itself would join the body again and compress it at gzip level 9, about
  seven times the CPU of level 1 for a body some 20% smaller; sending the body ourselves keeps
  the client's auth, connection pool and `ApiException`s and leaves the level to us. Deletes use
  influxdb-client's `DeleteApi`.
- ``api="v1"``: InfluxDB 1.x, ``POST /write?db=&rp=&precision=ns`` with Basic auth (never
  ``u``/``p`` in the URL, where error messages and access logs would show the password).

Counting and (for v1) deleting use InfluxQL on ``/query`` with the same URL and credentials.
On 2.x that endpoint answers through DBRP mappings: every bucket has a virtual mapping whose
database is the bucket name (``db/rp`` buckets map to database ``db``, retention policy
``rp``) since 2.2; on older servers create one with ``influx v1 dbrp create``. InfluxDB 3 and
Timestream for InfluxDB answer ``/query`` the same way. InfluxDB 3 has no point delete.

Errors: 401 raises `ConnectionCheckError` saying "unauthorized", with the user and where the
password or token came from (the environment variable `secret_from` names, else the block
setting); 403 and an unknown bucket, database or retention policy raise `ConnectionCheckError`
naming it; a field type conflict (v2: 422, v1: 400 "partial write: field type conflict")
raises `ValidationFailed` naming the field; other 4xx answers raise `ValidationFailed` with
the server's message. 5xx, 408 and 429 raise `InfluxServerError`, and so does a write or
InfluxQL request that gets no answer (connection refused, reset or timed out), saying "cannot
reach InfluxDB at <url> while <doing>: <reason>": both are transient, so the task layer
retries the chunk. No message ever holds the token or password.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from gzip import compress as gzip_compress
from typing import Any

import pyarrow as pa
import urllib3
from influxdb_client import InfluxDBClient, WriteService
from influxdb_client.rest import ApiException
from prefect.blocks.core import Block
from pydantic import BaseModel, Field, PrivateAttr, SecretStr

from blocks.errors import (
    ConfigError,
    ConnectionCheckError,
    DataConversionError,
    TransientError,
    ValidationFailed,
)
from blocks.influxdb import InfluxConnection, InfluxTraits
from blocks.influxdb.line_protocol import MAX_TIME_NS, MIN_TIME_NS, EncodeReport, PointMapping, encode_batch

# Level 1 compresses line protocol about 3.5x at a seventh of level 9's CPU time.
GZIP_LEVEL = 1
# Rows per response chunk when `count` lists points.
_SCAN_CHUNK_ROWS = 10_000
# Write requests in flight to one database, per process: chunks loading at the same time
# share the `writers` slots, so a busy server is not sent more requests than it can take.
_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()
_TYPE_CONFLICT = re.compile(
    r'field type conflict: input field "(?P<field>.*?)" on measurement "(?P<measurement>.*?)" '
    r"is type (?P<sent>\w+), already exists as type (?P<stored>\w+)"
)


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
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
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


def _check_columns(schema: pa.Schema, mapping: PointMapping, label: str) -> None:
    names = [mapping.time_column, *mapping.tags, *(spec.column for spec in mapping.fields)]
    if mapping.measurement_column:
        names.append(mapping.measurement_column)
    missing = sorted({name for name in names if name not in schema.names})
    if missing:
        raise ConfigError(f"{label}: the point mapping names column(s) the data lacks: {missing}")


class InfluxServerError(TransientError, RuntimeError):
    """InfluxDB answered 5xx, 408 or 429, or did not answer at all: transient (overloaded,
    restarting, unreachable), so it is retried."""


def _no_answer_reason(exc: BaseException) -> str:
    """Why a request got no answer, in a few words ("connection refused", "read timed out"),
    from urllib3's exception and what it wraps; never a repr of a connection object."""
    chain, todo = [], [exc]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is seen for seen in chain):
            continue
        chain.append(current)
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]
        todo += [current.__cause__, current.__context__]
    for error in chain:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror[:1].lower() + error.strerror[1:]
    for error in chain:
        if isinstance(error, urllib3.exceptions.ReadTimeoutError | TimeoutError):
            return "read timed out" if "read" in str(error).lower() else "timed out"
    text = str(chain[-1]) or type(chain[-1]).__name__
    text = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*", "", text)
    text = re.sub(r"^\w*HTTPS?Connection(Pool)?\([^)]*\):\s*", "", text)
    return text[:1].lower() + text[1:]


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


@dataclass
class _Wire:
    """The HTTP side of one call: a urllib3 pool, plus an influxdb-client for api="v2"."""

    http: urllib3.PoolManager
    client: InfluxDBClient | None


class InfluxDBTarget(InfluxTraits, Block, InfluxConnection):
    """An InfluxDB bucket (v2 API) or database (v1 API) that migrations write points into."""

    _block_type_name = "Migration InfluxDB Target"
    _block_type_slug = "migration-influxdb-target"

    token: SecretStr | None = Field(default=None, description="v2 API token")
    password: SecretStr | None = Field(default=None, description="v1 password")
    # Where the token or password came from, for login errors ("environment variable X").
    _secret_source: str | None = PrivateAttr(default=None)

    # --- names for messages ---------------------------------------------------------------

    @property
    def display_url(self) -> str:
        """The URL without any user:password@ part."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")

    def describe_target(self) -> str:
        return f"InfluxDB {self.container()} at {self.display_url}"

    def container(self) -> str:
        """The bucket or database (with retention policy) written to, for messages."""
        if self.api == "v2":
            return f'bucket "{self.bucket}"'
        if self.retention_policy:
            return f'database "{self.database}" (retention policy "{self.retention_policy}")'
        return f'database "{self.database}"'

    def influxql_database(self) -> tuple[str, str | None]:
        """The InfluxQL database and retention policy that hold the points (v2: the bucket's
        DBRP mapping, database = bucket name, or "db/rp")."""
        if self.api == "v2":
            db, _, rp = (self.bucket or "").partition("/")
            return db, rp or None
        return self.database or "", self.retention_policy

    def secret_from(self, source: str) -> InfluxDBTarget:
        """Name where the token (v2) or password (v1) came from, such as "environment variable
        INFLUX_PASSWORD", in the messages of refused logins. Returns the block itself."""
        self._secret_source = source
        return self

    def _credential(self) -> str:
        """What a refused login sent, for messages: the user and where the secret came from
        (the environment variable, or the block setting), never the secret."""
        if self.api == "v2":
            return f"the token from {self._secret_origin('token')}"
        if not self.username:
            return "a request without credentials (set `username` and `password`)"
        if self.password is None:
            return f"user {self.username!r} without a password"
        return f"user {self.username!r} with the password from {self._secret_origin('password')}"

    def _secret_origin(self, setting: str) -> str:
        if self._secret_source:
            return self._secret_source
        if self._block_document_name:
            return f"setting `{setting}` of saved block {self._block_document_name!r}"
        return f"setting `{setting}`"

    # --- HTTP -----------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if self.api == "v2":
            return {"Authorization": f"Token {self.token.get_secret_value()}"}
        if self.username:
            password = self.password.get_secret_value() if self.password else ""
            return urllib3.make_headers(basic_auth=f"{self.username}:{password}")
        return {}

    @contextmanager
    def _wire(self) -> Iterator[_Wire]:
        timeout = urllib3.Timeout(connect=min(10.0, self.timeout_seconds), read=self.timeout_seconds)
        # No retries here: the task layer retries the whole chunk, and rewriting it is idempotent.
        http = urllib3.PoolManager(num_pools=1, maxsize=self.writers + 1, retries=False, timeout=timeout)
        client = None
        if self.api == "v2":
            client = InfluxDBClient(
                url=self.url,
                token=self.token.get_secret_value(),
                org=self.org,
                timeout=int(self.timeout_seconds * 1000),
                enable_gzip=False,  # the body arrives compressed already
                connection_pool_maxsize=self.writers + 1,
            )
        try:
            yield _Wire(http, client)
        finally:
            if client is not None:
                client.close()
            http.clear()

    def _endpoint(self, path: str, **params: str | None) -> str:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.url.rstrip('/')}{path}" + (f"?{query}" if query else "")

    def _no_answer(self, exc: BaseException, doing: str) -> InfluxServerError:
        """The exception for a request that got no answer (refused, reset, timed out)."""
        reason = _no_answer_reason(exc)
        if reason == "read timed out":
            reason += f" after {self.timeout_seconds:g} s (setting timeout_seconds)"
        return InfluxServerError(f"cannot reach InfluxDB at {self.display_url} while {doing}: {reason}")

    def _refusal(self, status: int, message: str, doing: str) -> Exception:
        """The exception for an HTTP error answer (see the module docstring)."""
        message = message.strip()
        if status == 401:
            return ConnectionCheckError(
                f"unauthorized: InfluxDB at {self.display_url} refused {self._credential()} while {doing}"
            )
        if status == 403:
            return ConnectionCheckError(
                f"forbidden: InfluxDB at {self.display_url} does not allow {doing} "
                f"in {self.container()}: {message}"
            )
        if status == 404 or "database not found" in message:
            return ConnectionCheckError(
                f"{self.container()} not found at {self.display_url} ({doing}): {message}"
            )
        if "retention policy not found" in message:
            return ConnectionCheckError(
                f'retention policy "{self.influxql_database()[1]}" not found in {self.container()} '
                f"at {self.display_url}: {message}"
            )
        if status in (408, 429) or status >= 500:
            return InfluxServerError(
                f"InfluxDB at {self.display_url} answered {status} while {doing}: {message}"
            )
        if status == 413:
            return ConfigError(
                f"InfluxDB at {self.display_url} refused a request as too large while {doing}: "
                f"lower batch_lines (now {self.batch_lines}): {message}"
            )
        return ValidationFailed(f"InfluxDB at {self.display_url} answered {status} while {doing}: {message}")

    @staticmethod
    def _error_text(body: bytes | str | None) -> str:
        """The message of an InfluxDB error body: v2 {"message"}, v1 {"error"}, or the text."""
        text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
        try:
            payload = json.loads(text)
        except ValueError:
            return text
        if isinstance(payload, dict):
            return str(payload.get("message") or payload.get("error") or text)
        return text

    def _influxql(
        self, wire: _Wire, statement: str, doing: str, chunk_rows: int | None = None
    ) -> Iterator[dict]:
        """Each statement result of `statement` (one per response chunk when `chunk_rows`).

        Raises `ConnectionCheckError` when the database is missing, `ValidationFailed` for any
        other statement error.
        """
        db, rp = self.influxql_database()
        fields = {"q": statement, "db": db, "rp": rp, "epoch": "ns"}
        if chunk_rows:
            fields.update(chunked="true", chunk_size=str(chunk_rows))
        try:
            response = wire.http.request(
                "POST",
                self._endpoint("/query"),
                body=urllib.parse.urlencode({k: v for k, v in fields.items() if v is not None}),
                headers={**self._auth_headers(), "Content-Type": "application/x-www-form-urlencoded"},
                preload_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._no_answer(exc, doing) from None
        try:
            if response.status != 200:
                raise self._refusal(response.status, self._error_text(response.read()), doing)
            response.auto_close = False  # io.BufferedReader reads past the end, then stops
            for line in io.BufferedReader(response, 1 << 16):
                if not line.strip():
                    continue
                payload = json.loads(line)
                if "error" in payload:
                    raise self._refusal(400, payload["error"], doing)
                for result in payload.get("results", []):
                    if "error" in result:
                        raise self._refusal(400, result["error"], doing)
                    yield result
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # cut off while answering
            raise self._no_answer(exc, doing) from None
        finally:
            response.release_conn()

    # --- check ----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise `ConnectionCheckError` unless the target takes writes and answers InfluxQL.

        Two cheap calls: an empty write (v2 ``/api/v2/write``, v1 ``/write``; InfluxDB answers
        204 from 1.x and 2.0.9 on) proves the URL answers, the credentials are accepted, the
        bucket or database (and retention policy) exists and we may write to it; then
        ``SHOW DATABASES`` on ``/query`` proves the InfluxQL side that `count` (and v1
        `delete`) use sees the database (on 2.x: that the bucket has a DBRP mapping). The
        message says "unauthorized" for rejected credentials and names a missing bucket or
        database; it never holds the token or password.
        """
        try:
            with self._wire() as wire:
                self._post_lines(wire, b"", "checking write access")
                db, rp = self.influxql_database()
                names = self._show_values(wire, "SHOW DATABASES", "listing databases")
                if db not in names:
                    hint = (
                        " (on InfluxDB 2.x: the bucket has no DBRP mapping for InfluxQL)"
                        if self.api == "v2"
                        else ""
                    )
                    raise ConnectionCheckError(
                        f'{self.container()} at {self.display_url}: InfluxQL database "{db}" does not exist{hint}'
                    )
                if rp is not None:
                    policies = self._show_values(
                        wire, f"SHOW RETENTION POLICIES ON {influxql_ident(db)}", "listing retention policies"
                    )
                    if rp not in policies:
                        raise ConnectionCheckError(
                            f'retention policy "{rp}" does not exist in database "{db}" at {self.display_url}'
                        )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectionCheckError(
                f"cannot reach InfluxDB at {self.display_url}: {_no_answer_reason(exc)}"
            ) from None
        except InfluxServerError as exc:
            raise ConnectionCheckError(str(exc)) from None

    def _show_values(self, wire: _Wire, statement: str, doing: str) -> set[str]:
        return {
            row[0]
            for result in self._influxql(wire, statement, doing)
            for series in result.get("series", [])
            for row in series.get("values") or []
        }

    # --- write ----------------------------------------------------------------------------

    def write_chunk(
        self, batches: Iterable[pa.RecordBatch], mapping: PointMapping, *, chunk: str | None = None
    ) -> InfluxLoad:
        """Write the batches as points; returns what was sent and what the encoder left out.

        Each batch is cut into zero-copy row slices so that every request carries at most
        `batch_lines` lines (the line protocol is never split after encoding: a string field
        may hold a newline). At most `writers` requests are in flight to this database from the
        process (the chunks loading at once share them) while the next one is encoded, so
        memory holds a few requests, never the chunk. `chunk` names the chunk in
        error messages. Raises as the module docstring says, plus `ConfigError` when the
        mapping does not fit the data and `DataConversionError` when a value cannot take its
        field's kind; on any error the chunk may be partly written, and writing it again is
        idempotent (the same series and time overwrite).
        """
        label = f"chunk {chunk}" if chunk else "the chunk"
        started = time.perf_counter()
        totals = _Totals()
        with (
            self._wire() as wire,
            ThreadPoolExecutor(self.writers, thread_name_prefix="influx-writer") as pool,
        ):
            in_flight: set[Future[_Sent]] = set()
            try:
                for body, lines in self._requests(batches, mapping, totals, label):
                    if len(in_flight) >= self.writers:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in done:
                            totals.add(future.result())
                    in_flight.add(pool.submit(self._send, wire, body, lines, label))
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

    def _write_slots(self) -> threading.BoundedSemaphore:
        key = f"{self.display_url} {self.container()} {self.writers}"
        with _SLOTS_LOCK:
            return _SLOTS.setdefault(key, threading.BoundedSemaphore(self.writers))

    def _send(self, wire: _Wire, body: bytes, lines: int, label: str) -> _Sent:
        wire_body = gzip_compress(body, compresslevel=GZIP_LEVEL, mtime=0) if self.gzip else body
        try:
            with self._write_slots():
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

    def _post_lines(self, wire: _Wire, body: bytes, doing: str, compressed: bool = False) -> None:
        """One write request; raises the mapped exception for an error answer."""
        if self.api == "v2":
            extra = {"content_encoding": "gzip"} if compressed else {}
            try:
                WriteService(wire.client.api_client).post_write(
                    org=self.org, bucket=self.bucket, body=body, precision="ns", **extra
                )
            except ApiException as exc:
                if not exc.status:  # urllib3 SSL errors arrive as status 0
                    raise InfluxServerError(
                        f"cannot reach InfluxDB at {self.display_url} while {doing}: {exc.reason}"
                    ) from None
                raise self._refusal(exc.status, self._error_text(exc.body), doing) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._no_answer(exc, doing) from None
            return
        db, rp = self.influxql_database()
        headers = {**self._auth_headers(), "Content-Type": "text/plain; charset=utf-8"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        try:
            response = wire.http.request(
                "POST", self._endpoint("/write", db=db, rp=rp, precision="ns"), body=body, headers=headers
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._no_answer(exc, doing) from None
        if not 200 <= response.status < 300:
            raise self._refusal(response.status, self._error_text(response.data), doing)

    # --- count and delete -----------------------------------------------------------------

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
