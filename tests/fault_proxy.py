"""A fault-injecting HTTP forwarder to put in front of a test server (InfluxDB, moto).

Clients talk to `FaultProxy.url`; every request is forwarded to the upstream port on its own
connection (the proxy asks both sides for `Connection: close`, so each connection carries one
request, and it never has to parse bodies it forwards). Faults, set and cleared while a
migration runs:

- `down()` closes the listener and every live connection: new connections are refused, as
  from a stopped server. `up()` listens again on the same port.
- `fail_requests(503, path="/write")` answers matching requests with that status instead of
  forwarding them, after letting the first `after` through.
- `down_when(predicate)` goes down at the first matching request for which `predicate()` is
  true, dropping that request unanswered (like a server dying in the middle of it).

`log` records every request: when it arrived (`time.monotonic()`), its method and path, and
what the proxy did with it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from devstack.servers import free_port

_HEAD_LIMIT = 1 << 16


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic()
    method: str
    path: str  # without the query string
    outcome: str  # "forwarded", "dropped", or the status answered, e.g. "503"


@dataclass
class _Rule:
    path: str
    method: str | None
    action: str  # "status" or "down"
    status: int = 503
    after: int = 0
    count: int | None = None
    when: Callable[[], bool] | None = None
    seen: int = 0
    applied: int = 0

    def applies(self, method: str, path: str) -> bool:
        if not path.startswith(self.path) or (self.method and method != self.method):
            return False
        if self.count is not None and self.applied >= self.count:
            return False
        if self.when is not None and not self.when():
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        self.applied += 1
        return True


class FaultProxy:
    """Forward 127.0.0.1:`port` (default: a free port) to 127.0.0.1:`upstream_port`."""

    def __init__(self, upstream_port: int, port: int | None = None):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # --- faults ---------------------------------------------------------------------------

    def up(self) -> None:
        """Listen (again) on `port`; a no-op while already up."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every live connection: clients get "connection refused"."""
        with self._lock:
            listener, self._listener = self._listener, None
            live, self._sockets = self._sockets, set()
        for sock in ([listener] if listener else []) + list(live):
            _close(sock)

    def fail_requests(
        self,
        status: int = 503,
        *,
        path: str = "/",
        method: str | None = None,
        after: int = 0,
        count: int | None = None,
        when: Callable[[], bool] | None = None,
    ) -> None:
        """Answer `status` to requests whose path starts with `path` (and whose method is
        `method`, if given) instead of forwarding them: all but the first `after` of them, at
        most `count` times (None: until `heal()`). With `when`, only requests arriving while
        `when()` is true count."""
        with self._lock:
            self._rules.append(_Rule(path, method, "status", status, after, count, when))

    def down_when(self, predicate: Callable[[], bool], *, path: str = "/", method: str | None = None) -> None:
        """Go down at the first matching request that arrives while `predicate()` is true; that
        request is dropped unanswered."""
        with self._lock:
            self._rules.append(_Rule(path, method, "down", count=1, when=predicate))

    def heal(self) -> None:
        """Forget every fault rule (a proxy that is down stays down until `up()`)."""
        with self._lock:
            self._rules.clear()

    def requests(self, path: str = "/", outcome: str | None = None) -> list[Request]:
        """The logged requests whose path starts with `path` (and that had `outcome`)."""
        with self._lock:
            return [
                r for r in self.log if r.path.startswith(path) and (outcome is None or r.outcome == outcome)
            ]

    # --- forwarding -----------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._listener is None:
                return False
            self._sockets.add(sock)
            return True

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            if not self._track(client):
                return
            head, rest = _read_head(client)
            if head is None:
                return
            request_line, headers = _parse_head(head)
            method, target = request_line.split(" ")[:2]
            path = target.split("?", 1)[0]
            with self._lock:
                rule = next((r for r in self._rules if r.applies(method, path)), None)
            outcome = (
                "forwarded" if rule is None else "dropped" if rule.action == "down" else str(rule.status)
            )
            with self._lock:
                self.log.append(Request(time.monotonic(), method, path, outcome))
            if rule is not None and rule.action == "down":
                self.down()
                return
            if rule is not None:
                if headers.get("expect", "").lower() != "100-continue":
                    _drain_body(client, rest, headers)
                body = f"{rule.status} injected by the fault proxy\n".encode()
                client.sendall(
                    f"HTTP/1.1 {rule.status} Injected Fault\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
            if not self._track(upstream):
                return
            upstream.sendall(_with_connection_close(head) + rest)
            pump = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
            pump.start()
            answer, answer_rest = _read_head(upstream)
            while answer is not None and answer.startswith(b"HTTP/1.1 1"):  # 100 Continue
                client.sendall(answer)
                answer, answer_rest = _read_head(upstream, answer_rest)
            if answer is None:
                return
            client.sendall(_with_connection_close(answer) + answer_rest)
            _pump(upstream, client)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._sockets.discard(sock)
                    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until `source` ends; then tell `sink` nothing more comes."""
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _read_head(sock: socket.socket, data: bytes = b"") -> tuple[bytes | None, bytes]:
    """The message head up to the blank line (after `data`, bytes already read), and the
    bytes read past it; None at EOF."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk or len(data) > _HEAD_LIMIT:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return first, headers


def _with_connection_close(head: bytes) -> bytes:
    """The head with `Connection: close` instead of any Connection or Keep-Alive header."""
    first, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    kept = [
        line for line in lines if line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")
    ]
    return "\r\n".join([first, *kept, "Connection: close", "", ""]).encode("latin-1")


def _drain_body(sock: socket.socket, rest: bytes, headers: dict[str, str]) -> None:
    """Read the request body the client is sending, so that an injected answer is not lost
    to a connection reset: Content-Length bytes, or (chunked) until the client goes quiet."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        sock.settimeout(0.3)
        try:
            while sock.recv(1 << 16):
                pass
        except TimeoutError:
            pass
        finally:
            sock.settimeout(None)
        return
    left = int(headers.get("content-length", "0") or 0) - len(rest)
    while left > 0:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            return
        left -= len(chunk)
