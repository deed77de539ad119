"""Reaching InfluxDB: the HTTP pool and credentials, one write request, InfluxQL on ``/query``,
the connection check, and the exception each kind of answer maps to.

401 raises `ConnectionCheckError` saying "unauthorized", with the user and where the password
or token came from (the environment variable `secret_from` names, else the block setting); 403
and an unknown bucket, database or retention policy raise `ConnectionCheckError` naming it; 413
raises `ConfigError` (lower `batch_lines`); other 4xx answers raise `ValidationFailed` with the
server's message. 5xx, 408 and 429 raise `InfluxServerError`, and so does a request that gets
no answer (connection refused, reset or timed out), saying "cannot reach InfluxDB at <url>
while <doing>: <reason>": both are transient, so the task layer retries the chunk. No message
ever holds the token or password.
"""

from __future__ import annotations

import io
import json
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import urllib3
from influxdb_client import InfluxDBClient, WriteService
from influxdb_client.rest import ApiException

from blocks.errors import ConfigError, ConnectionCheckError, TransientError, ValidationFailed
from blocks.influxdb.influxql import influxql_ident


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


# A JSON number -0 (InfluxDB writes the float -0.0 so), which json.loads would read as the int 0.
_MINUS_ZERO = re.compile(rb"[\[,:]\s*-0\s*[,\]}]")


def _int_or_minus_zero(text: str) -> int | float:
    return -0.0 if text == "-0" else int(text)


def _json_answer(line: bytes) -> Any:
    """One line of an InfluxQL answer; the number -0 is read as the float -0.0, so a float
    field's sign survives (a line without it takes the plain, faster path)."""
    if b"-0" in line and _MINUS_ZERO.search(line):
        return json.loads(line, parse_int=_int_or_minus_zero)
    return json.loads(line)


@dataclass
class Wire:
    """The HTTP side of one call: a urllib3 pool, plus an influxdb-client for api="v2"."""

    http: urllib3.PoolManager
    client: InfluxDBClient | None


class InfluxAccess:
    """The connection side of `InfluxDBTarget`: names for messages, requests and their errors,
    and `check`. Mixed into the block, whose fields (`InfluxConnection`, `token`, `password`)
    it reads."""

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

    def secret_from(self, source: str) -> Self:
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
    def _wire(self) -> Iterator[Wire]:
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
            yield Wire(http, client)
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
        self, wire: Wire, statement: str, doing: str, chunk_rows: int | None = None
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
                payload = _json_answer(line)
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

    def check(self, container: str | None = None) -> None:
        """Raise `ConnectionCheckError` unless the target takes writes and answers InfluxQL.
        (`container`, the seam's, is this block's own bucket or database: the empty write
        below proves the login may write there.)

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

    def _show_values(self, wire: Wire, statement: str, doing: str) -> set[str]:
        return {
            row[0]
            for result in self._influxql(wire, statement, doing)
            for series in result.get("series", [])
            for row in series.get("values") or []
        }

    def _post_lines(self, wire: Wire, body: bytes, doing: str, compressed: bool = False) -> None:
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
