"""Idle PostgreSQL connections kept for reuse within one process.

A chunk's steps each open a connection (export, validation count, load, reconcile), and with
SCRAM authentication each costs some 20 ms. Connections that end their work cleanly, with no
transaction open, go back here and the next step with the same settings takes one; a
connection that saw an error, or that a server restart broke, is closed instead. Settings
differ per use (a source's read-only session, a target's), so each use names its own key.

A login that fails for good (wrong password, unknown database or role, no pg_hba.conf entry,
bad SSL or connection settings) raises `ConnectionCheckError`, which is permanent. A server
that cannot be reached right now (refused, closed the connection, starting up or shutting
down, timed out) raises `ConnectionError`, which the steps' retries retry: a PostgreSQL
restart in the middle of a migration costs a few retries, not the run. The blocks' `check()`,
the connection check before a run, turns an unreachable server into a `ConnectionCheckError`
too: nothing is written yet, so waiting gains nothing.

The settings passed in here are a `PostgresCredentials` block (`blocks.postgres.credentials`).
"""

from __future__ import annotations

import hashlib
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import ConnStatus, TransactionStatus

from blocks.errors import ConnectionCheckError

# Not psycopg_pool.ConnectionPool: it connects on a worker thread, so a caller waits its whole timeout
# and gets "couldn't get a connection after 5.00 sec" (no server, no reason to classify) where
# psycopg.connect fails in 0.001 s (refused port) or 0.012 s (wrong password), and it retries on its own.
MAX_IDLE_PER_KEY = 8
_IDLE: dict[tuple, list[psycopg.Connection]] = {}
_LOCK = threading.Lock()

# Words in libpq's message when the server answered and refused the login, or the settings
# cannot work: retrying would fail the same way. (Connection errors carry no SQLSTATE.)
_REFUSED_FOR_GOOD = (
    "authentication",  # password, SCRAM, ident... failed or unsupported
    "no password supplied",
    "does not exist",  # database, role, or a certificate file
    "no pg_hba.conf entry",
    "permission denied",
    "invalid",  # sslmode, port, option names or values
    "does not support ssl",
    "certificate",
)


def describe(settings: Any) -> str:
    """`PostgreSQL user@host:port/dbname` for PostgreSQL connection settings."""
    return f"PostgreSQL {settings.user}@{settings.host}:{settings.port}/{settings.dbname}"


def pool_key(use: str, settings: Any) -> tuple:
    """What makes two connections interchangeable: the use and every login setting (the
    password only as a digest)."""
    digest = hashlib.sha256(settings.secret().encode()).hexdigest()
    return (use, settings.host, settings.port, settings.dbname, settings.user, digest, settings.sslmode)


def refused_for_good(message: str) -> bool:
    """True when a connect error's message says retrying cannot help (see `_REFUSED_FOR_GOOD`).

    Anything else, including a host name that does not resolve (a restarting server's DNS
    entry can vanish for a while), counts as the server being unavailable for now."""
    text = message.lower()
    return any(words in text for words in _REFUSED_FOR_GOOD)


def open_connection(settings: Any, application_name: str, **options: Any) -> psycopg.Connection:
    """Log in with a `PostgresCredentials` block's settings.

    A login refused for good raises `ConnectionCheckError`; a server unavailable for now raises
    `ConnectionError`. Either message (psycopg's)
    names host, port, user and database, never the password."""
    secret = settings.secret()
    try:
        return psycopg.connect(**settings.connect_kwargs(application_name=application_name, **options))
    except psycopg.OperationalError as exc:
        detail = str(exc).strip()
        # libpq does not echo the password; should a message ever quote the settings, it still must not.
        shown = detail.replace(secret, "***") if secret else detail
        message = f"cannot connect to {describe(settings)}: {shown}"
        if refused_for_good(detail):
            raise ConnectionCheckError(message) from None
        raise ConnectionError(message) from None


def _take(key: tuple) -> psycopg.Connection | None:
    """The most recently returned idle connection for `key` that still answers, or None."""
    while True:
        with _LOCK:
            idle = _IDLE.get(key)
            if not idle:
                return None
            conn = idle.pop()
        if _alive(conn):
            return conn
        conn.close()


def _alive(conn: psycopg.Connection) -> bool:
    """False for a connection the server ended while it sat idle (a restart, a terminated
    backend), told without a round trip: an idle session is sent nothing, so a socket with
    something to read holds the server's goodbye or its end. (A ping took two round trips per
    reuse, about twenty per chunk.) A connection lost without a word fails its next statement
    instead, which the steps' retries retry."""
    if conn.closed or conn.broken or conn.pgconn.status != ConnStatus.OK:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _give(key: tuple, conn: psycopg.Connection) -> None:
    with _LOCK:
        idle = _IDLE.setdefault(key, [])
        if len(idle) < MAX_IDLE_PER_KEY:
            idle.append(conn)
            return
    conn.close()


@contextmanager
def pooled(key: tuple, connect: Callable[[], psycopg.Connection]) -> Iterator[psycopg.Connection]:
    """An idle connection for `key`, or a new one from `connect`. The caller ends its
    transaction; the connection returns to the pool only if it left none open, saw no error
    and is not broken (a restarted server ends every session)."""
    conn = _take(key) or connect()
    clean = False
    try:
        yield conn
        clean = True
    finally:
        if (
            clean
            and not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        ):
            _give(key, conn)
        else:
            conn.close()


def close_all() -> None:
    """Close every idle connection (tests that restart or drop databases call this)."""
    with _LOCK:
        conns = [c for idle in _IDLE.values() for c in idle]
        _IDLE.clear()
    for conn in conns:
        conn.close()
