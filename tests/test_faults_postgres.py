"""A PostgreSQL target restarted in the middle of a migration: the retries recover, and the
final data is exact, with every chunk loaded once.

The restart runs against a private PostgreSQL server (stopped and started again on the same
port and data directory), so the session's server, which every other test uses, stays up.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.errors import ConnectionCheckError, MigrationError
from blocks.postgres import ledger as pg_ledger
from blocks.postgres import pool as pg_pool
from blocks.postgres.credentials import PostgresCredentials
from blocks.postgres.ledger_lock import run_lock_holder
from blocks.postgres.target import PostgresTarget
from devstack.servers import PostgresServer, free_port
from tests.support import assert_same_rows, source_rows, target_rows, write_migrations

EVENTS_JSON = {"PAYLOAD", "ATTRS", "TAGS"}
DATABASE = "restart_target"


def wait_until(check, what: str, timeout: float = 120):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def private_pg(servers):
    """A PostgreSQL server of this test's own, with an empty database `restart_target`."""
    root = Path(os.environ["MIGRATE_TEST_ROOT"]) / f"pg-restart-{secrets.token_hex(4)}"
    server = PostgresServer(root, os.environ["PGPASSWORD"]).start()
    with server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    yield server
    server.stop()
    pg_pool.close_all()  # idle connections to the stopped server
    shutil.rmtree(root, ignore_errors=True)


def target_block(
    server: PostgresServer, password: str | None = None, dbname: str = DATABASE
) -> PostgresTarget:
    return PostgresTarget(
        credentials=PostgresCredentials(
            host="127.0.0.1",
            port=server.port,
            dbname=dbname,
            password=SecretStr(password or server.password),
            connect_timeout=5,
        )
    )


def loaded_chunks(server: PostgresServer) -> int:
    try:
        with server.connect(DATABASE) as conn:
            return conn.execute(
                "SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'loaded'"
            ).fetchone()[0]
    except Exception:  # the ledger does not exist yet
        return 0


# Classification of connect errors --------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "10.0.0.5", port 5432 failed: Connection refused',
        'connection to server at "db", port 5432 failed: FATAL:  the database system is starting up',
        'connection to server at "db", port 5432 failed: FATAL:  the database system is shutting down',
        'connection to server at "db", port 5432 failed: server closed the connection unexpectedly',
        'connection to server at "db", port 5432 failed: timeout expired',
        "failed to resolve host 'db': [Errno -3] Temporary failure in name resolution",
        'connection to server at "db", port 5432 failed: FATAL:  sorry, too many clients already',
    ],
)
def test_an_unavailable_server_is_transient(message):
    assert not pg_pool.refused_for_good(message)


@pytest.mark.parametrize(
    "message",
    [
        'FATAL:  password authentication failed for user "app"',
        'FATAL:  database "nope" does not exist',
        'FATAL:  role "nobody" does not exist',
        'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "app", database "db", no encryption',
        "fe_sendauth: no password supplied",
        'invalid sslmode value: "bogus"',
        "server does not support SSL, but SSL was required",
        "SSL error: certificate verify failed",
        'FATAL:  permission denied for database "db"',
    ],
)
def test_a_refused_login_is_permanent(message):
    assert pg_pool.refused_for_good(message)


def test_connect_errors_name_the_server_never_the_password(private_pg):
    """Unreachable: `ConnectionError` (retried) on connecting, `ConnectionCheckError` from the
    pre-flight check; a wrong password or an unknown database: `ConnectionCheckError` (permanent)."""
    closed = PostgresTarget(
        credentials=PostgresCredentials(
            host="127.0.0.1", port=free_port(), password=SecretStr(private_pg.password), connect_timeout=5
        )
    )
    with pytest.raises(
        ConnectionError, match=r"cannot connect to PostgreSQL postgres@127\.0\.0\.1:\d+/"
    ) as down:
        with closed.connect():
            pass
    assert not isinstance(down.value, MigrationError)
    with pytest.raises(ConnectionCheckError, match="Connection refused") as checked:
        closed.check()
    wrong = "wrong-" + secrets.token_hex(6)
    with pytest.raises(ConnectionCheckError, match="password authentication failed") as refused:
        target_block(private_pg, password=wrong).check()
    with pytest.raises(ConnectionCheckError, match='database "no_such_db" does not exist'):
        target_block(private_pg, dbname="no_such_db").check()
    for error in (down.value, checked.value, refused.value):
        assert private_pg.password not in str(error) and wrong not in str(error)


def test_snowflake_unreachable_is_transient_and_fails_the_check(snowflake_kwargs):
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    from blocks.snowflake.source import SnowflakeSource

    source = SnowflakeSource(
        connector=SnowflakeConnector(
            credentials=SnowflakeCredentials(account="fakesnow", user="fake", password="snow"),
            database="ANALYTICS",
            schema="PUBLIC",
            warehouse="COMPUTE_WH",
        ),
        host="127.0.0.1",
        port=free_port(),
        protocol="http",
        login_timeout=5,
    )
    with pytest.raises(ConnectionError, match=r"cannot connect to Snowflake \(127\.0\.0\.1:") as down:
        with source.connection():
            pass
    assert not isinstance(down.value, MigrationError)
    with pytest.raises(ConnectionCheckError, match=r"cannot connect to Snowflake \(127\.0\.0\.1:"):
        source.check()


def test_a_pooled_connection_broken_by_a_restart_is_not_reused(private_pg):
    target = target_block(private_pg)
    with target.connect() as conn:
        before = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with target.connect() as conn:  # the idle connection is reused while the server lives
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == before
    private_pg.stop()
    with pytest.raises(ConnectionError, match="Connection refused"):
        with target.connect():
            pass
    private_pg.start()
    with target.connect() as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != before


# The restart in the middle of a migration --------------------------------------------------


@pytest.mark.parametrize("where", ["before_a_load", "inside_a_load_transaction"])
def test_target_restarted_mid_migration_recovers_with_exact_data(
    tmp_path, servers, private_pg, snowflake_kwargs, demo_source, monkeypatch, caplog, where
):
    """Chunk 3 waits while PostgreSQL stops: before its load opens a connection (its retries
    then meet a refused connection), or inside its load transaction after COPY (fast shutdown
    aborts it under the load). The server is down about 2 s, then starts again."""
    from flows.migrate import migrate

    path = write_migrations(
        tmp_path / "migrations.yaml",
        servers,
        DATABASE,
        [{"name": "EVENTS", "chunk_column": "EVENT_ID", "chunk_size": 10_000}],
        target={"port": private_pg.port, "connect_timeout": 5},
        extra={"concurrency": 2, "retries": {"attempts": 6, "delay_seconds": 0.5, "jitter": 0.1}},
    )
    waiting, server_down = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def gate(chunk_id: str) -> None:
        if chunk_id.startswith("00003") and not waiting.is_set():
            waiting.set()
            assert server_down.wait(180), "the test never stopped the server"

    def observed(call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            failures.append(exc)
            raise

    if where == "before_a_load":
        real_load = PostgresTarget.load_chunk

        def load_chunk(self, **kwargs):
            gate(kwargs["chunk_id"])
            return observed(real_load, self, **kwargs)

        monkeypatch.setattr(PostgresTarget, "load_chunk", load_chunk)
    else:
        real_mark = pg_ledger.mark_chunk_loaded

        def mark_chunk_loaded(conn, job_id, table, chunk_id, *args):
            gate(chunk_id)
            return observed(real_mark, conn, job_id, table, chunk_id, *args)

        monkeypatch.setattr(pg_ledger, "mark_chunk_loaded", mark_chunk_loaded)

    caplog.set_level("WARNING", logger="blocks.postgres.ledger_lock")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["state"] = migrate(
                source_name="analytics", job_id="restart-1", migrations_file=str(path), return_state=True
            )
        except BaseException as exc:  # surfaced below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: waiting.is_set() or "error" in outcome, "chunk 3 did not reach its load")
        assert "error" not in outcome, outcome.get("error")
        wait_until(lambda: loaded_chunks(private_pg) >= 2, "2 chunks were not loaded")
        private_pg.stop()
        server_down.set()
        time.sleep(2)  # the outage itself
        private_pg.start()
    finally:
        server_down.set()
        thread.join(300)
    assert not thread.is_alive(), "the migration did not finish within 300 s of the restart"
    assert "error" not in outcome, outcome.get("error")
    report = outcome["state"].result()
    assert report.status == "completed"

    # The outage was met, and retried: a refused connection, or the load's aborted transaction.
    assert failures, "chunk 3's load never failed: the restart did not reach it"
    assert not any(isinstance(f, MigrationError) for f in failures), failures
    assert all(private_pg.password not in str(f) for f in failures)
    if where == "before_a_load":
        assert any(isinstance(f, ConnectionError) and "Connection refused" in str(f) for f in failures), (
            failures
        )
    # The run's lock on the job went with the restarted server; the next load took it again.
    assert any("took the job's run lock again" in r.getMessage() for r in caplog.records)

    connect = lambda: private_pg.connect(DATABASE)  # noqa: E731
    names, expected = source_rows(snowflake_kwargs, "ANALYTICS", "PUBLIC", "EVENTS", "EVENT_ID", EVENTS_JSON)
    assert_same_rows(expected, target_rows(connect, "analytics.events", names, "event_id"), names)
    with connect() as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM analytics.events"
        ).fetchone()
        chunks = conn.execute(
            "SELECT chunk_id, status, rows_loaded, rows_after - rows_before, details->>'xid' "
            "FROM migration_status.migration_chunk_status WHERE job_id = 'restart-1' ORDER BY chunk_id"
        ).fetchall()
        xids = conn.execute(
            "SELECT xmin::text, count(*) FROM analytics.events GROUP BY 1 ORDER BY 1"
        ).fetchall()
        job = conn.execute(
            "SELECT status, chunks_done, rows_total FROM migration_status.migration_runs"
        ).fetchall()
        lock_left = run_lock_holder(conn, "restart-1")
    assert total == distinct == len(expected) == 110_000
    assert len(chunks) == 11 and all(status == "loaded" for _, status, *_ in chunks)
    assert all(loaded == gained for _, _, loaded, gained, _ in chunks), (
        chunks
    )  # each range gained its rows once
    # Every row was written by the one transaction its chunk's ledger row names.
    assert sorted((xid, rows) for *_, rows, _, xid in chunks) == sorted(xids)
    assert job == [("completed", 11, 110_000)]
    assert lock_left is None
