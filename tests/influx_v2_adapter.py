"""TEST SUPPORT ONLY: never deploy this, and never import it from flows/, tasks/ or blocks/.

The only InfluxDB server installable on our machines is Debian's 1.6.7, which speaks only the 1.x
HTTP API. Production targets (InfluxDB 1.8+, 2.x, 3.x, Timestream for InfluxDB) accept the v2 API
that `influxdb-client` uses. This small threaded HTTP server sits in front of a 1.6.7 server and
answers the part of the v2 API our code uses the way InfluxDB 1.8's compatibility layer does, so
tests can run the real `influxdb-client` against a real storage engine:

- `POST /api/v2/write?bucket=DB[/RP]&precision=ns|us|ms|s` (`org` is ignored, as in 1.8), body
  optionally gzip-compressed -> `/write?db=DB&rp=RP&precision=n|u|ms|s`.
  Answers: 204 on success. A field type conflict (1.x: 400 "partial write: field type conflict")
  becomes 422 `{"code": "unprocessable entity", "message": ...}` as in v2; an unknown database or
  retention policy (1.x: 404 / 500) becomes 404 `{"code": "not found", "message": "bucket \"B\"
  not found"}`. Other errors keep 1.x's status and body (bad line protocol: 400
  `{"error": "unable to parse ..."}`). As in every 1.x server, and in 2.x for type conflicts, the
  good lines of a batch that also holds bad lines are still written.
- `POST /api/v2/delete?bucket=DB[/RP]` with `{"start", "stop", "predicate"}` -> InfluxQL
  `DELETE FROM "m" WHERE "tag" = 'v' AND time >= START AND time < STOP`, i.e. the half-open range
  [start, stop), exactly what 1.8's compatibility layer builds. (InfluxDB 2.x and Cloud treat
  `stop` as inclusive, [start, stop]; callers that must behave the same on both should pass a stop
  that no point sits on.) Timestamps keep nanoseconds. The predicate may use `_measurement="m"`
  and `tag="value"` joined by AND, nothing else (as in v2). The retention policy in the bucket is
  only checked for existence: 1.x's DELETE removes matching points from every retention policy of
  the database. Answers 204, 400 `{"code": "invalid", ...}` for a bad body or predicate, 404 for
  an unknown bucket.
- `GET|HEAD /ping`, `GET|POST /query` -> passed through unchanged, so InfluxQL checks can use the
  same base URL and token.
- `GET /health` -> 200 `{"name": "influxdb", "status": "pass", ...}` while the 1.x server answers
  `/ping`, 503 with `"status": "fail"` when it does not.

Authentication: `Authorization: Token <token>` (or `Bearer`) is looked up in the token map given
at start and forwarded as Basic credentials. On the v2 paths an unknown or missing token answers
401 `{"code": "unauthorized", "message": "unauthorized access"}` like a v2 server; on `/query` an
unknown token answers 401 `{"error": "authorization failed"}` like 1.x, and other credentials
(Basic, `u`/`p` parameters) pass through untouched. Use tokens of the form `user:password`, which
is what a real InfluxDB 1.8 accepts as a v2 token, so the same settings work against one.
"""

from __future__ import annotations

import base64
import calendar
import gzip
import http.client
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# InfluxDB 1.x's valid time range (models.MinNanoTime / MaxNanoTime).
MIN_NS = -(2**63) + 2
MAX_NS = 2**63 - 2

_V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_PASS_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "X-Influxdb-Version",
    "X-Influxdb-Build",
    "X-Influxdb-Error",
    "Request-Id",
    "X-Request-Id",
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
_PREDICATE_TOKEN = re.compile(
    r"""\s*(?:
        (?P<and>(?i:and)\b)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.\-]*)
      | "(?P<dq>(?:[^"\\]|\\.)*)"
      | '(?P<sq>(?:[^'\\]|\\.)*)'
      | (?P<eq>=)
      | (?P<other>\S+)
    )""",
    re.VERBOSE,
)


class BadRequest(ValueError):
    """A request the v2 API would answer with 400 invalid."""


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch for an RFC3339 timestamp (up to 9 fraction digits, Z or offset).

    Raises BadRequest for anything else, date-only strings included.
    """
    match = _RFC3339.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise BadRequest(f"invalid RFC3339 timestamp {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise BadRequest(f"invalid RFC3339 timestamp {text!r}: {exc}") from None
    fraction = int((match.group(7) or "").ljust(9, "0"))
    zone = match.group(8)
    offset = (
        0
        if zone in ("Z", "z")
        else (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * (-1 if zone[0] == "-" else 1)
    )
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + fraction


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_delete_predicate(predicate: str) -> tuple[str | None, dict[str, str]]:
    """Split a v2 delete predicate into (measurement or None, {tag: value}).

    Accepts `key="value"` terms (key bare or double-quoted, value double- or single-quoted) joined
    by AND; `_measurement` names the measurement. Raises BadRequest for OR, !=, regexes,
    parentheses, `_field`, or anything else v2 does not accept.
    """
    tokens: list[tuple[str, str]] = []
    for match in _PREDICATE_TOKEN.finditer(predicate or ""):
        kind = match.lastgroup
        if kind is None:
            continue
        tokens.append((kind, match.group(kind)))
    measurement: str | None = None
    tags: dict[str, str] = {}
    position = 0
    while position < len(tokens):
        term = tokens[position : position + 3]
        kinds = [kind for kind, _ in term]
        if (
            len(term) < 3
            or kinds[0] not in ("ident", "dq")
            or kinds[1] != "eq"
            or kinds[2] not in ("dq", "sq")
        ):
            raise BadRequest(
                f'invalid delete predicate {predicate!r}: only key="value" terms joined by AND are supported'
            )
        key = term[0][1] if kinds[0] == "ident" else _unescape(term[0][1])
        value = _unescape(term[2][1])
        if key == "_measurement":
            if measurement is not None and measurement != value:
                raise BadRequest(f"invalid delete predicate {predicate!r}: more than one _measurement")
            measurement = value
        elif key == "_field":
            raise BadRequest(f"invalid delete predicate {predicate!r}: deleting by _field is not supported")
        elif key in tags and tags[key] != value:
            raise BadRequest(f"invalid delete predicate {predicate!r}: {key} given twice")
        else:
            tags[key] = value
        position += 3
        if position < len(tokens):
            if tokens[position][0] != "and":
                raise BadRequest(
                    f'invalid delete predicate {predicate!r}: only key="value" terms joined by AND are supported'
                )
            position += 1
            if position == len(tokens):
                raise BadRequest(f"invalid delete predicate {predicate!r}: dangling AND")
    return measurement, tags


def _escape(text: str, quote: str) -> str:
    escaped = text.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n")
    return quote + escaped + quote


def influxql_ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return _escape(name, '"')


def influxql_string(value: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return _escape(value, "'")


def delete_statement(
    measurement: str | None, tags: Mapping[str, str], start_ns: int, stop_ns: int
) -> str | None:
    """The InfluxQL DELETE for the v2 range [start_ns, stop_ns), or None when nothing can match."""
    if start_ns >= stop_ns or start_ns > MAX_NS or stop_ns <= MIN_NS:
        return None
    conditions = [f"{influxql_ident(key)} = {influxql_string(value)}" for key, value in tags.items()]
    conditions.append(f"time >= {max(start_ns, MIN_NS)}")
    conditions.append(f"time <= {MAX_NS}" if stop_ns > MAX_NS else f"time < {stop_ns}")
    source = f" FROM {influxql_ident(measurement)}" if measurement is not None else ""
    return f"DELETE{source} WHERE {' AND '.join(conditions)}"


class InfluxV2Adapter:
    """The adapter server. `start()` binds and serves in a daemon thread; `url` is its base URL."""

    def __init__(
        self,
        upstream: str,
        tokens: Mapping[str, tuple[str, str]],
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 60.0,
    ):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 8086
        self.tokens = dict(tokens)
        self.timeout = timeout
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> InfluxV2Adapter:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="influx-v2-adapter", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def upstream(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] = ()):
        """One request to the 1.x server: (status, headers, body)."""
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.headers, data
        finally:
            conn.close()

    def basic_auth(self, token: str) -> str | None:
        credentials = self.tokens.get(token)
        if credentials is None:
            return None
        return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def start_influx_v2_adapter(
    upstream: str, tokens: Mapping[str, tuple[str, str]], port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Start an adapter in front of `upstream`; return its base URL and a function that stops it."""
    adapter = InfluxV2Adapter(upstream, tokens, port=port).start()
    return adapter.url, adapter.stop


def _token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except Exception:
        return body.decode(errors="replace")


def _handler_for(adapter: InfluxV2Adapter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "influx-v2-adapter"

        def log_message(self, format, *args):
            pass  # tests read InfluxDB's own access log instead

        # --- plumbing -------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status not in (204, 304):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and status not in (204, 304) and self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._send(
                status, json.dumps(payload).encode(), {"Content-Type": "application/json; charset=utf-8"}
            )

        def _v2_error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"code": code, "message": message})

        def _unauthorized(self) -> None:
            self._v2_error(401, "unauthorized", "unauthorized access")

        def _route(self) -> None:
            split = urllib.parse.urlsplit(self.path)
            route = (self.command, split.path.rstrip("/") or "/")
            try:
                if route == ("POST", "/api/v2/write"):
                    self._write(urllib.parse.parse_qs(split.query))
                elif route == ("POST", "/api/v2/delete"):
                    self._delete(urllib.parse.parse_qs(split.query))
                elif route == ("GET", "/health"):
                    self._health()
                elif route[1] == "/ping" and self.command in ("GET", "HEAD"):
                    self._pass_through(authenticate=False)
                elif route[1] == "/query" and self.command in ("GET", "POST"):
                    self._pass_through(authenticate=True)
                else:
                    self._body()
                    self._v2_error(404, "not found", "path not found")
            except BadRequest as exc:
                self._v2_error(400, "invalid", str(exc))
            except OSError as exc:
                self._v2_error(503, "unavailable", f"InfluxDB 1.x is not reachable: {exc}")

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _route

        # --- endpoints ------------------------------------------------------------------------
        def _pass_through(self, authenticate: bool) -> None:
            body = self._body() if self.command == "POST" else None
            forwarded = ("Content-Type", "Accept", "Accept-Encoding") + (
                ("Authorization",) if authenticate else ()
            )
            headers = {name: self.headers[name] for name in forwarded if self.headers.get(name)}
            token = _token(self.headers.get("Authorization"))
            if authenticate and token is not None:
                basic = adapter.basic_auth(token)
                if basic is None:
                    self._json(401, {"error": "authorization failed"})
                    return
                headers["Authorization"] = basic
            status, resp_headers, data = adapter.upstream(self.command, self.path, body, headers)
            passed = {name: resp_headers[name] for name in _PASS_HEADERS if resp_headers.get(name)}
            self._send(status, data, passed)

        def _v2_credentials(self) -> str | None:
            token = _token(self.headers.get("Authorization"))
            return adapter.basic_auth(token) if token is not None else None

        def _write(self, query: dict[str, list[str]]) -> None:
            body = self._body()
            basic = self._v2_credentials()
            if basic is None:
                self._unauthorized()
                return
            bucket = (query.get("bucket") or [""])[0]
            if not bucket:
                raise BadRequest("bucket is required")
            precision = (query.get("precision") or ["ns"])[0]
            if precision not in _V1_PRECISION:
                raise BadRequest(f'invalid precision "{precision}" (use ns, us, ms or s)')
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                try:
                    body = gzip.decompress(body)
                except (OSError, EOFError) as exc:
                    raise BadRequest(f"cannot decompress gzip body: {exc}") from None
            db, _, rp = bucket.partition("/")
            params = {"db": db, "precision": _V1_PRECISION[precision]}
            if rp:
                params["rp"] = rp
            status, headers, data = adapter.upstream(
                "POST",
                "/write?" + urllib.parse.urlencode(params),
                body,
                {"Authorization": basic, "Content-Type": "text/plain; charset=utf-8"},
            )
            if 200 <= status < 300:
                self._send(204)
                return
            message = _error_message(data)
            if status == 401:
                self._unauthorized()
            elif (
                status == 404 and "database not found" in message
            ) or "retention policy not found" in message:
                self._v2_error(404, "not found", f'bucket "{bucket}" not found')
            elif status == 400 and "field type conflict" in message:
                self._v2_error(422, "unprocessable entity", message)
            else:
                self._send(status, data, {"Content-Type": headers.get("Content-Type", "application/json")})

        def _delete(self, query: dict[str, list[str]]) -> None:
            body = self._body()
            basic = self._v2_credentials()
            if basic is None:
                self._unauthorized()
                return
            bucket = (query.get("bucket") or [""])[0]
            if not bucket:
                raise BadRequest("bucket is required")
            try:
                request = json.loads(body or b"null")
            except ValueError as exc:
                raise BadRequest(f"invalid request; error parsing request json: {exc}") from None
            if not isinstance(request, dict) or not request.get("start") or not request.get("stop"):
                raise BadRequest("invalid request; start and stop (RFC3339) are required")
            start_ns = parse_rfc3339_ns(request["start"])
            stop_ns = parse_rfc3339_ns(request["stop"])
            if start_ns > stop_ns:
                raise BadRequest("invalid request; start must not be after stop")
            measurement, tags = parse_delete_predicate(request.get("predicate") or "")
            db, _, rp = bucket.partition("/")
            exists = self._bucket_exists(basic, db, rp)
            if exists is None:
                self._unauthorized()
                return
            if not exists:
                self._v2_error(404, "not found", f'bucket "{bucket}" not found')
                return
            statement = delete_statement(measurement, tags, start_ns, stop_ns)
            if statement is not None:
                results = self._influxql(basic, statement, db)
                if results is None:
                    self._unauthorized()
                    return
                errors = [r["error"] for r in results if "error" in r]
                if any("database not found" in e for e in errors):
                    self._v2_error(404, "not found", f'bucket "{bucket}" not found')
                    return
                if errors:
                    raise BadRequest(f"delete failed: {errors[0]}")
            self._send(204)

        def _influxql(self, basic: str, statement: str, db: str | None = None) -> list[dict] | None:
            """The statement results, with HTTP errors as a result error; None when 1.x answers 401."""
            params = {"q": statement, **({"db": db} if db else {})}
            status, _, data = adapter.upstream(
                "POST",
                "/query",
                urllib.parse.urlencode(params).encode(),
                {"Authorization": basic, "Content-Type": "application/x-www-form-urlencoded"},
            )
            if status == 401:
                return None
            if status != 200:
                return [{"error": _error_message(data)}]
            payload = json.loads(data)
            return payload.get("results") or [{"error": payload.get("error", "no results")}]

        def _bucket_exists(self, basic: str, db: str, rp: str) -> bool | None:
            """Whether database `db` (and retention policy `rp`, if given) exists; None when 1.x answers 401."""
            results = self._influxql(basic, "SHOW DATABASES")
            if results is None:
                return None
            if "error" in results[0]:
                raise BadRequest(f"cannot list databases: {results[0]['error']}")
            names = {row[0] for series in results[0].get("series", []) for row in series.get("values", [])}
            if db not in names:
                return False
            if not rp:
                return True
            results = self._influxql(basic, f"SHOW RETENTION POLICIES ON {influxql_ident(db)}") or [{}]
            rows = [row for series in results[0].get("series", []) for row in series.get("values", [])]
            return any(row[0] == rp for row in rows)

        def _health(self) -> None:
            try:
                status, headers, _ = adapter.upstream("GET", "/ping")
                up = status == 204
                version = headers.get("X-Influxdb-Version", "")
            except OSError:
                up, version = False, ""
            payload = {
                "name": "influxdb",
                "message": "ready for queries and writes" if up else "InfluxDB 1.x does not answer /ping",
                "status": "pass" if up else "fail",
                "checks": [],
                "version": version,
            }
            self._json(200 if up else 503, payload)

    return Handler
