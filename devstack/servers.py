"""Start and stop private throwaway servers on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} was not ready within {timeout} s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def pg_bin(name: str) -> str:
    for folder in PG_BIN_CANDIDATES:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed; run scripts/setup.sh (apt-get install postgresql)"
        )
    return found


class PostgresServer:
    """A private PostgreSQL cluster: superuser `postgres` with a password, TCP on a free port."""

    def __init__(self, root: Path, password: str, port: int | None = None):
        self.root = root
        self.data = root / "data"
        self.password = password
        self.port = port or free_port()
        self.as_postgres = os.geteuid() == 0

    def _run(self, args: list[str]) -> None:
        cmd = (["runuser", "-u", "postgres", "--"] if self.as_postgres else []) + args
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pwfile"
        if not (self.data / "PG_VERSION").exists():
            pwfile.write_text(self.password + "\n")
            if self.as_postgres:
                shutil.chown(self.root, "postgres")
                shutil.chown(pwfile, "postgres")
            self._run(
                [
                    pg_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            )
            pwfile.unlink()
        self._run(
            [
                pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-o",
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                "start",
            ]
        )
        return self

    def connect(self, dbname: str = "postgres"):
        """An autocommit superuser connection over TCP (password auth, as clients use)."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.password,
            dbname=dbname,
            autocommit=True,
        )

    def stop(self) -> None:
        try:
            self._run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass


def start_fakesnow(log: Path, port: int | None = None) -> Service:
    port = port or free_port()
    proc = _spawn(
        [sys.executable, "-m", "devstack.fakesnow_server", "--port", str(port)],
        log,
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    wait_for(lambda: port_open(port), "fakesnow server", 60, proc, log)
    return Service("fakesnow", port, proc)


def start_moto(log: Path, port: int | None = None) -> Service:
    port = port or free_port()
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/"), "moto server", 60, proc, log)
    return Service("moto", port, proc)


def start_prefect_server(home: Path, log: Path, port: int | None = None) -> Service:
    """A Prefect API server with its own PREFECT_HOME (SQLite), ready when /api/health answers."""
    port = port or free_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    proc = _spawn([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, env=env)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/api/health"), "Prefect server", 120, proc, log)
    return Service("prefect", port, proc, extra={"api_url": f"http://127.0.0.1:{port}/api"})


INFLUXD_CONFIG = """\
# A private, throwaway InfluxDB 1.x for tests and the local demo. Written by devstack/servers.py.
# Debian's build reads `reporting-enabled`; upstream builds read `reporting-disabled`.
reporting-enabled = false
reporting-disabled = true
# The backup/restore RPC service listens on 8088 by default: give each server its own port.
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"

[monitor]
  # No _internal database filling up in the background.
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = true
  unix-socket-enabled = false

[ifql]
  enabled = false
"""


def influx_ping(url: str) -> bool:
    """True when InfluxDB 1.x answers `/ping` with 204 (it does so before auth is set up)."""
    with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
        return resp.status == 204


def influxql(service: Service, query: str, db: str | None = None, **params: str) -> list[dict]:
    """Run InfluxQL as the admin user on an InfluxDB started by `start_influxdb`.

    Returns the `results` list (one entry per statement). Raises RuntimeError when the server
    answers with an HTTP error or any statement reports an error.
    """
    import base64
    import json
    import urllib.error
    import urllib.parse

    fields = {"q": query, **params}
    if db:
        fields["db"] = db
    headers = {}
    if service.extra.get("user"):
        credentials = f"{service.extra['user']}:{service.extra['password']}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    request = urllib.request.Request(
        f"{service.extra['url']}/query",
        data=urllib.parse.urlencode(fields).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"InfluxQL {query!r} failed ({exc.code}): {exc.read().decode()}") from None
    errors = [r["error"] for r in body.get("results", []) if "error" in r]
    if "error" in body or errors:
        raise RuntimeError(f"InfluxQL {query!r} failed: {body.get('error') or errors}")
    return body["results"]


def start_influxdb(root: Path, log: Path, port: int | None = None) -> Service:
    """A private InfluxDB 1.x (`influxd`) with auth on, ready when `/ping` answers 204.

    Data, WAL and metadata live under `root`; HTTP and the RPC service bind to free loopback
    ports, so several servers can run side by side. An admin user is created at start (1.x
    allows the first `CREATE USER ... WITH ALL PRIVILEGES` without credentials); its name and
    password are in `extra`, with the base URL. Raises RuntimeError if `influxd` is missing or
    exits early, TimeoutError if it is not up within 30 s.
    """
    import secrets

    influxd = shutil.which("influxd")
    if not influxd:
        raise RuntimeError(
            "InfluxDB's influxd is not installed; run scripts/setup.sh (apt-get install influxdb)"
        )
    port = port or free_port()
    rpc_port = free_port()
    while rpc_port == port:
        rpc_port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "influxdb.conf"
    config.write_text(INFLUXD_CONFIG.format(root=root, http_port=port, rpc_port=rpc_port))
    url = f"http://127.0.0.1:{port}"
    proc = _spawn([influxd, "-config", str(config)], log)
    service = Service("influxdb", port, proc, extra={"url": url, "rpc_port": rpc_port, "config": str(config)})
    try:
        wait_for(lambda: influx_ping(url), "InfluxDB", 30, proc, log)
        user, password = "admin", "influx-" + secrets.token_hex(12)
        # No credentials yet: with auth on and no users, 1.x accepts exactly this statement.
        influxql(service, f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
        service.extra.update(user=user, password=password)
        influxql(service, "SHOW DATABASES")  # the credentials work
    except BaseException:
        service.stop()
        raise
    return service
