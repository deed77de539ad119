"""Idle PostgreSQL connections kept for reuse within one process.

A chunk's steps each open a connection (export, validation count, load, reconcile), and with
SCRAM authentication each costs some 20 ms. Connections that end their work cleanly, with no
transaction open, go back here and the next step with the same settings takes one; a
connection that saw an error is closed instead. Settings differ per use (a source's
read-only session, a target's), so each use names its own key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg.pq import TransactionStatus

MAX_IDLE_PER_KEY = 8
_IDLE: dict[tuple, list[psycopg.Connection]] = {}
_LOCK = threading.Lock()


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
