"""The benchmark's private servers (PostgreSQL, InfluxDB 1.x, moto for S3 and Timestream, a
Prefect API server) and the environment every flow process inherits, started the way
tests/conftest.py starts them."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from devstack.servers import PostgresServer, Service, start_influxdb, start_moto, start_prefect_server

BENCH_DB = "bench"
AWS_REGION = "us-east-1"


@dataclass
class Stack:
    root: Path
    pg: PostgresServer
    influx: Service
    prefect: Service
    moto: Service
    env: dict[str, str]
    results: dict = field(default_factory=dict)  # measurements share runs (e reuses a's job)

    def pg_url(self, dbname: str = BENCH_DB) -> str:
        return f"postgresql://postgres:{self.pg.password}@127.0.0.1:{self.pg.port}/{dbname}"

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.moto.port}"

    def stop(self, keep: bool = False) -> None:
        self.prefect.stop()
        self.moto.stop()
        self.influx.stop()
        self.pg.stop()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def start_stack() -> Stack:
    """Start all four servers (the Prefect server, the slow one, in a thread meanwhile), create
    the bench database, and set PREFECT_API_URL and the secrets in os.environ for child processes."""
    root = Path(tempfile.mkdtemp(prefix="migrate-bench-"))
    os.chmod(root, 0o755)
    box: dict = {}

    def prefect_up():
        try:
            box["svc"] = start_prefect_server(root / "prefect", root / "logs" / "prefect.log")
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=prefect_up, daemon=True)
    thread.start()
    pg = PostgresServer(root / "pg", "pg-" + secrets.token_hex(12)).start()
    with pg.connect() as conn:
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    influx = start_influxdb(root / "influxdb", root / "logs" / "influxdb.log")
    moto = start_moto(root / "logs" / "moto.log")
    thread.join()
    if "error" in box:
        raise box["error"]
    prefect = box["svc"]
    env = {
        "PREFECT_API_URL": prefect.extra["api_url"],
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "PGPASSWORD": pg.password,
        "INFLUX_PASSWORD": influx.extra["password"],
        # moto takes any key; the Timestream source of (h) reads these by name.
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-" + secrets.token_hex(6),
        "AWS_DEFAULT_REGION": AWS_REGION,
    }
    os.environ.update(env)
    return Stack(root=root, pg=pg, influx=influx, prefect=prefect, moto=moto, env=env)
