"""The demo: start local stand-ins, seed demo data, run `analytics`, `conflict` and `energy`.

Run it through `bash scripts/demo.sh`. Everything lives under `.demo/` and is recreated on
each run: a private PostgreSQL (port 15432), fakesnow's Snowflake stand-in (port 18085), a
private InfluxDB 1.x (port 18086), and a Prefect server (port 4200 when free) whose UI shows
the runs, artifacts and events. The energy data is written as the Parquet files and manifest
a Timestream UNLOAD produces, under `.demo/energy_unload/`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
# fakesnow accepts any password; the demo still passes one, as migrations.yaml names it.
SNOWFLAKE_PASSWORD = "snow"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-running", action="store_true", help="leave the servers up until Ctrl-C")
    parser.add_argument("--events", type=int, default=120_000, help="rows in the demo EVENTS table")
    parser.add_argument("--energy-rows", type=int, default=50_000, help="records in the demo energy data")
    args = parser.parse_args()

    from devstack.servers import (
        PostgresServer,
        free_port,
        influxql,
        port_open,
        start_fakesnow,
        start_influxdb,
        start_prefect_server,
    )

    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    os.chmod(DEMO, 0o755)
    prefect_port = 4200
    try:
        port_open(prefect_port)
        prefect_port = free_port()
    except OSError:
        pass
    print("==> starting PostgreSQL, fakesnow, InfluxDB and a Prefect server under .demo/")
    pg = PostgresServer(DEMO / "pg", password="demo-" + secrets.token_hex(8), port=15432)
    services = []
    try:
        pg.start()
        services.append(start_fakesnow(DEMO / "logs" / "fakesnow.log", port=18085))
        influx = start_influxdb(DEMO / "influxdb", DEMO / "logs" / "influxdb.log", port=18086)
        services.append(influx)
        influxql(influx, 'CREATE DATABASE "generation_data"')
        prefect = start_prefect_server(DEMO / "prefect", DEMO / "logs" / "prefect.log", port=prefect_port)
        services.append(prefect)
        os.environ.update(
            {
                "PREFECT_API_URL": prefect.extra["api_url"],
                "PREFECT_HOME": str(DEMO / "prefect"),
                "PREFECT_LOCAL_STORAGE_PATH": str(DEMO / "results"),
                "PGPASSWORD": pg.password,
                "SNOWFLAKE_PASSWORD": SNOWFLAKE_PASSWORD,
                "STAGING_DIR": str(DEMO / "staging"),
                "INFLUX_URL": influx.extra["url"],
                "INFLUX_USER": influx.extra["user"],
                "INFLUX_PASSWORD": influx.extra["password"],
                "ENERGY_UNLOAD_LOCATION": str(DEMO / "energy_unload"),
            }
        )
        secret_files = {
            "PGPASSWORD": write_secret("pgpassword", pg.password),
            "SNOWFLAKE_PASSWORD": write_secret("snowflakepassword", SNOWFLAKE_PASSWORD),
            "INFLUX_PASSWORD": write_secret("influxpassword", influx.extra["password"]),
        }
        import snowflake.connector

        from devstack.demo_data import seed

        with pg.connect() as conn:
            conn.execute("CREATE DATABASE analytics")
        print(f"==> seeding demo Snowflake data ({args.events:,} EVENTS rows)")
        sf = snowflake.connector.connect(
            user="fake",
            password=SNOWFLAKE_PASSWORD,
            account="fakesnow",
            host="127.0.0.1",
            port=18085,
            protocol="http",
            session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
            platform_detection_timeout_seconds=0.0,
        )
        seed(sf.cursor(), events=args.events)
        sf.close()
        from devstack.energy_data import write_energy_demo

        energy = write_energy_demo(DEMO / "energy_unload", rows=args.energy_rows)
        print(f"==> wrote {energy['rows']:,} energy records as Timestream UNLOAD Parquet files + manifest")

        from flows.migrate import migrate

        for name in ("analytics", "conflict", "energy"):
            print(f"==> migrate(source_name={name!r})")
            report = migrate(source_name=name)
            print(report.summary())
        print(f"\nPrefect UI: http://127.0.0.1:{prefect_port}  (runs, logs, progress and report artifacts)")
        print(
            f"PostgreSQL: PGPASSWORD=$(cat .demo/pgpassword) psql -h 127.0.0.1 -p {pg.port} -U postgres analytics"
        )
        print(
            f"InfluxDB: curl -s -u {influx.extra['user']}:$(cat .demo/influxpassword) "
            f"'http://127.0.0.1:{influx.port}/query?db=generation_data' "
            "--data-urlencode 'q=SELECT COUNT(*) FROM generation_mw'"
        )
        if args.keep_running:
            print(other_shell_lines(prefect.extra["api_url"], secret_files))
            print("Servers keep running; press Ctrl-C to stop them.")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        flush_prefect_logs()
        for svc in services:
            svc.stop()
        pg.stop()


def write_secret(name: str, value: str) -> Path:
    """Write a demo password to `.demo/<name>`, readable by its owner only; the demo prints
    `$(cat .demo/<name>)`, never the value."""
    path = DEMO / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return path


def other_shell_lines(api_url: str, secret_files: dict[str, Path]) -> str:
    """What another shell needs to use the demo's servers: the Prefect API URL and the
    secrets `migrations.yaml` names, read from their files (the values are never printed).
    The other settings in `migrations.yaml` default to the demo's servers."""
    secrets_line = " ".join(f"{var}=$(cat {path.relative_to(ROOT)})" for var, path in secret_files.items())
    return (
        "\nIn another shell, for the operator's loop (README and docs/operate.md: prefect-migrate, the prefect CLI, a worker),\n"
        "start from the repo root and point it at the demo's Prefect server and secrets (files under .demo/):\n"
        f"  cd {shlex.quote(str(ROOT))}\n"
        f"  export PREFECT_API_URL={api_url}\n"
        f"  export {secrets_line}\n"
        "  .venv/bin/python -m flows.status      # the demo's jobs"
    )


def flush_prefect_logs() -> None:
    """Send buffered run logs to the Prefect server before it stops."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
