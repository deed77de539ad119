"""Idle PostgreSQL connections kept for reuse within one process.

A chunk's steps each open a connection (export, validation count, load, reconcile), and with
SCRAM authentication each costs some 20 ms. Connections that end their work cleanly, with no
transaction open, go back here and the next step with the same settings takes one; a
connection that saw an error is closed instead. Settings differ per use (a source's
read-only session, a target's), so each use names its own key.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from blocks.errors import ConnectionCheckError

MAX_IDLE_PER_KEY = 8
_IDLE: dict[tuple, list[psycopg.Connection]] = {}
_LOCK = threading.Lock()


def describe(settings: Any) -> str:
    """`PostgreSQL user@host:port/dbname` for a block with PostgreSQL connection settings."""
    return f"PostgreSQL {settings.user}@{settings.host}:{settings.port}/{settings.dbname}"


def pool_key(use: str, settings: Any) -> tuple:
    """What makes two connections interchangeable: the use and every login setting (the
    password only as a digest)."""
    secret = settings.password.get_secret_value() if settings.password else ""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return (use, settings.host, settings.port, settings.dbname, settings.user, digest, settings.sslmode)


def open_connection(settings: Any, application_name: str, **options: Any) -> psycopg.Connection:
    """Log in with a block's settings; a failed login raises `ConnectionCheckError`, whose
    message (psycopg's) names host, port and user, never the password."""
    try:
        return psycopg.connect(
            host=settings.host,
            port=settings.port,
            dbname=settings.dbname,
            user=settings.user,
            password=settings.password.get_secret_value() if settings.password else None,
            sslmode=settings.sslmode,
            connect_timeout=settings.connect_timeout,
            application_name=application_name,
            **options,
        )
    except psycopg.OperationalError as exc:
        raise ConnectionCheckError(f"cannot connect to {describe(settings)}: {exc}".strip()) from None


def _take(key: tuple) -> psycopg.Connection | None:
    with _LOCK:
        idle = _IDLE.get(key) or []
        candidates = list(reversed(idle))
        idle.clear()
    for conn in candidates:
        try:  # a server restart or a terminated backend leaves a dead connection behind
            conn.execute("SELECT 1")
            conn.rollback()
            return conn
        except psycopg.Error:
            conn.close()
    return None


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
    transaction; the connection returns to the pool only if it left none open and saw no error."""
    conn = _take(key) or connect()
    clean = False
    try:
        yield conn
        clean = True
    finally:
        if clean and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
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
