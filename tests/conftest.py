"""Real servers for the whole test session: PostgreSQL, InfluxDB 1.6.7 (behind a v2-API adapter),
fakesnow, moto and a Prefect API server.

They start in `pytest_configure`, before any test module imports Prefect, so every Prefect
client in the session talks to the private server. Each test gets its own PostgreSQL
database (InfluxDB database, and S3 bucket where it needs one), so tests never see each other's data.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from devstack.servers import (
    PostgresServer,
    influxql,
    start_fakesnow,
    start_influxdb,
    start_moto,
    start_prefect_server,
)
from tests.influx_v2_adapter import InfluxV2Adapter

_STATE: dict = {}


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return
    root = Path(tempfile.mkdtemp(prefix="migrate-tests-"))
    os.chmod(root, 0o755)
    started = time.monotonic()
    pg_password = "pg-" + secrets.token_hex(12)
    pg = PostgresServer(root / "pg", pg_password)
    prefect_home = root / "prefect"
    # Start the slow one first; the others come up while it boots.
    prefect = start_prefect_server_async(prefect_home, root / "logs" / "prefect.log")
    pg.start()
    influx = start_influxdb(root / "influxdb", root / "logs" / "influxdb.log")
    # A v2-style token as InfluxDB 1.8 accepts it ("user:password"); the adapter maps it.
    influx_token = f"{influx.extra['user']}:{influx.extra['password']}"
    influx_v2 = InfluxV2Adapter(
        influx.extra["url"], {influx_token: (influx.extra["user"], influx.extra["password"])}
    ).start()
    fakesnow = start_fakesnow(root / "logs" / "fakesnow.log")
    moto = start_moto(root / "logs" / "moto.log")
    prefect = prefect()
    os.environ.update(
        {
            "PREFECT_API_URL": prefect.extra["api_url"],
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_LOCAL_STORAGE_PATH": str(root / "results"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
            "PGPASSWORD": pg_password,
            "INFLUX_TOKEN": influx_token,
            "INFLUX_PASSWORD": influx.extra["password"],
            "SNOWFLAKE_PASSWORD": "snow",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-" + secrets.token_hex(6),
            "AWS_DEFAULT_REGION": "us-east-1",
            "MIGRATE_TEST_ROOT": str(root),
        }
    )
    _STATE.update(
        root=root,
        pg=pg,
        influx=influx,
        influx_v2=influx_v2,
        influx_v2_url=influx_v2.url,
        influx_token=influx_token,
        fakesnow=fakesnow,
        moto=moto,
        prefect=prefect,
    )
    print(f"\ntest servers up in {time.monotonic() - started:.1f}s under {root}")


def start_prefect_server_async(home: Path, log: Path):
    """Start the Prefect server in a thread; return a function that waits for it."""
    import threading

    box: dict = {}

    def run():
        try:
            box["svc"] = start_prefect_server(home, log)
        except Exception as exc:  # surfaced by the waiter
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def wait():
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["svc"]

    return wait


def pytest_unconfigure(config):
    # Send Prefect's queued logs and events while its server still runs; draining them at
    # interpreter exit, against a stopped server, would stall the run for about a minute.
    if "prefect" in _STATE:
        try:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            for worker in (APILogWorker, EventsWorker):
                worker.drain_all(timeout=30)
        except Exception:
            pass
    for name in ("prefect", "fakesnow", "moto", "influx_v2", "influx"):
        if name in _STATE:
            _STATE[name].stop()
    if "pg" in _STATE:
        _STATE["pg"].stop()
    if "root" in _STATE and not os.environ.get("KEEP_TEST_ROOT"):
        shutil.rmtree(_STATE["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def servers() -> dict:
    return _STATE


@pytest.fixture(scope="session")
def snowflake_kwargs(servers) -> dict:
    return {
        "user": "fake",
        "password": "snow",
        "account": "fakesnow",
        "host": "127.0.0.1",
        "port": servers["fakesnow"].port,
        "protocol": "http",
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        "platform_detection_timeout_seconds": 0.0,
    }


@pytest.fixture(scope="session")
def demo_source(snowflake_kwargs) -> dict:
    """The demo tables (ANALYTICS.PUBLIC), seeded once and only read by tests."""
    import snowflake.connector

    from devstack.demo_data import seed

    conn = snowflake.connector.connect(**snowflake_kwargs)
    seed(conn.cursor(), events=110_000, page_views=20_000, customers=3_000)
    conn.close()
    return {"database": "ANALYTICS", "schema": "PUBLIC"}


@pytest.fixture
def pg_database(servers, request):
    """A fresh PostgreSQL database for one test; yields its name."""
    name = "t_" + secrets.token_hex(5)
    pg = servers["pg"]
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with pg.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def influx_database(servers):
    """A fresh InfluxDB database for one test (its v2 bucket name is the same); yields its name."""
    name = "t_" + secrets.token_hex(5)
    influxql(servers["influx"], f'CREATE DATABASE "{name}"')
    yield name
    influxql(servers["influx"], f'DROP DATABASE "{name}"')


@pytest.fixture
def pg_connect(servers, pg_database):
    """A function returning an autocommit connection to this test's database."""
    return lambda: servers["pg"].connect(pg_database)
