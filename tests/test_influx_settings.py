"""An InfluxDB target's settings are refused when the config is read, never later.

The config (`InfluxSettings`) and the block (`InfluxDBTarget`) share one connection model,
`InfluxConnection`. Before they did, a v2 target without `token_env` passed config validation;
the block then raised pydantic's `ValidationError` inside a chunk step, and that was retried as
if the server were busy. Now `load_migrations` refuses every setting the block would refuse,
naming the key and where it sits, and the `migrate` flow fails at validate-config, once,
before it reaches the target.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal, get_origin

import pytest
import yaml
from pydantic import ValidationError

from blocks.errors import ConfigError, is_transient
from blocks.influxdb import InfluxConnection
from blocks.influxdb.access import InfluxServerError
from blocks.influxdb.target import InfluxDBTarget
from blocks.spec import RetryPolicy
from tasks.config import load_migrations
from tasks.policy import RetriesExhausted, run_step

MIGRATION = "energy"
WHERE = f"migrations.{MIGRATION}.target"
V2 = {"type": "influxdb", "url": "http://127.0.0.1:9", "api": "v2", "org": "o", "bucket": "b"}
V1 = {"type": "influxdb", "url": "http://127.0.0.1:9", "api": "v1", "database": "d", "username": "u"}


def migrations_file(path: Path, target: dict) -> Path:
    spec = {
        "source": {"type": "parquet", "location": str(path.parent / "files")},
        "target": target,
        "ledger": {"type": "postgres", "host": "127.0.0.1", "port": 9, "password_env": "PGPASSWORD"},
        "staging": {"type": "local", "path": str(path.parent / "staging")},
        "retries": {"attempts": 3, "delay_seconds": 0.01, "jitter": 0.1},
        "tables": [
            {
                "name": "generation_data",
                "manifest": "generation_data/manifest.json",
                "chunk_column": "time",
                "chunk_interval": "1d",
            }
        ],
    }
    path.write_text(yaml.safe_dump({"migrations": {MIGRATION: spec}}, sort_keys=False))
    return path


def config_error(tmp_path: Path, target: dict) -> str:
    path = migrations_file(tmp_path / "migrations.yaml", target)
    with pytest.raises(ConfigError) as raised:
        load_migrations(path)
    return str(raised.value)


def error_lines(message: str) -> list[str]:
    """The message's lines that name a key of the target section."""
    return [line.strip() for line in message.splitlines() if line.strip().startswith(WHERE)]


def block_settings(target: dict) -> dict:
    """The block's keyword arguments for a config target section (secrets held, not named)."""
    kwargs = {k: v for k, v in target.items() if k not in ("type", "token_env", "password_env")}
    if "token_env" in target:
        kwargs["token"] = "a-token"
    if "password_env" in target:
        kwargs["password"] = "a-password"
    return kwargs


def without(settings: dict, key: str) -> dict:
    return {k: v for k, v in settings.items() if k != key}


# --- the settings a v2 or v1 target cannot do without ------------------------------------------


@pytest.mark.parametrize(
    ("target", "missing"),
    [
        (V2, "token_env"),
        ({**V2, "token_env": "INFLUX_TOKEN", "org": None}, "org"),
        (without({**V2, "token_env": "INFLUX_TOKEN"}, "bucket"), "bucket"),
        (without({**V2, "token_env": "INFLUX_TOKEN"}, "org"), "org"),
        (without({**V1, "password_env": "INFLUX_PASSWORD"}, "database"), "database"),
    ],
    ids=[
        "v2 without token_env",
        "v2 with org null",
        "v2 without bucket",
        "v2 without org",
        "v1 without database",
    ],
)
def test_a_target_missing_a_setting_its_api_needs_fails_config_validation(tmp_path, target, missing):
    message = config_error(tmp_path, target)
    lines = error_lines(message)
    assert lines, message
    assert any(missing in line for line in lines), message
    assert message.startswith(f"{tmp_path / 'migrations.yaml'} is invalid:"), message
    # The block refuses the same settings (that refusal used to come first, inside a chunk).
    with pytest.raises(ValidationError, match=missing.removesuffix("_env")):
        InfluxDBTarget(**block_settings(target))


def test_the_complete_settings_pass_both(tmp_path):
    for target in ({**V2, "token_env": "INFLUX_TOKEN"}, {**V1, "password_env": "INFLUX_PASSWORD"}):
        path = migrations_file(tmp_path / "migrations.yaml", target)
        spec = load_migrations(path).migrations[MIGRATION]
        assert spec.target.type == "influxdb"
        InfluxDBTarget(**block_settings(target))


def test_a_v2_target_without_token_env_names_all_that_is_missing(tmp_path):
    message = config_error(tmp_path, without(V2, "bucket"))
    (line,) = error_lines(message)
    assert "token_env" in line and "bucket" in line, message


# --- every value the block refuses, the config refuses -----------------------------------------

BAD_VALUES = [
    ("batch_lines", 0),
    ("batch_lines", -5),
    ("batch_lines", "many"),
    ("writers", 0),
    ("writers", 17),
    ("timeout_seconds", 0),
    ("timeout_seconds", -1.5),
    ("api", "v3"),
    ("gzip", "sometimes"),
    ("url", None),
    ("url", ""),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_every_value_the_block_refuses_the_config_refuses(tmp_path, key, value):
    good = {**V2, "token_env": "INFLUX_TOKEN"}
    with pytest.raises(ValidationError):
        InfluxDBTarget(**block_settings({**good, key: value}))
    message = config_error(tmp_path, {**good, key: value})
    assert any(key in line for line in error_lines(message)), message


def test_the_bad_values_cover_every_constrained_connection_setting():
    """A new bound or choice on `InfluxConnection` needs a case in BAD_VALUES."""
    constrained = {
        name
        for name, field in InfluxConnection.model_fields.items()
        if field.metadata or get_origin(field.annotation) is Literal or field.annotation in ("bool", bool)
    }
    assert constrained <= {key for key, _ in BAD_VALUES}, constrained - {key for key, _ in BAD_VALUES}


def test_an_unknown_key_is_refused_by_name(tmp_path):
    message = config_error(tmp_path, {**V2, "token_env": "INFLUX_TOKEN", "tokn_env": "X"})
    assert any("tokn_env" in line for line in error_lines(message)), message


# --- the migrate flow stops at validate-config, once, before the target ------------------------


class _Recorder(BaseHTTPRequestHandler):
    requests: list[str] = []

    def _any(self):
        type(self).requests.append(f"{self.command} {self.path}")
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST = do_HEAD = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def influx_stand_in():
    """An HTTP server at the target's URL that records every request it gets."""
    handler = type("Recorder", (_Recorder,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def _task_runs(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=50
        )
    return {run.name: run.state.name if run.state else "Pending" for run in runs}


def test_migrate_fails_at_validate_config_once_and_never_reaches_the_target(
    tmp_path, influx_stand_in, monkeypatch
):
    import tasks.connections
    from flows.migrate import migrate

    url, requests = influx_stand_in
    path = migrations_file(tmp_path / "migrations.yaml", {**V2, "url": url})
    monkeypatch.setenv("INFLUX_TOKEN", "a-token")
    calls = []
    real_load = tasks.connections.load_migration

    def counting_load(*args, **kwargs):
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(tasks.connections, "load_migration", counting_load)

    state = migrate(source_name=MIGRATION, migrations_file=str(path), return_state=True)

    assert state.is_failed()
    with pytest.raises(ConfigError) as raised:
        state.result()
    assert any("token_env" in line for line in error_lines(str(raised.value))), str(raised.value)
    assert len(calls) == 1  # read once: not retried
    deadline = time.monotonic() + 30
    runs = _task_runs(state.state_details.flow_run_id)
    while (
        not (runs and all(s in ("Failed", "Completed") for s in runs.values()))
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
        runs = _task_runs(state.state_details.flow_run_id)
    assert [name.rsplit("-", 1)[0] for name in runs] == ["validate-config"], runs
    assert list(runs.values()) == ["Failed"], runs
    assert requests == []  # nothing reached the target


# --- a chunk step's unexpected, permanent error is raised at once ------------------------------


def test_a_validation_error_inside_a_chunk_step_is_not_retried():
    """The old path: the block refused its settings while a chunk was loading."""
    attempts = []

    def build_the_block():
        attempts.append(1)
        return InfluxDBTarget(url="http://127.0.0.1:9", api="v2", org="o", bucket="b")

    with pytest.raises(ValidationError) as raised:
        run_step(build_the_block, RetryPolicy(attempts=3, delay_seconds=0.01), "load energy/00001")
    assert not is_transient(raised.value)
    assert len(attempts) == 1


def test_a_transient_error_inside_a_chunk_step_is_retried():
    """The contrast: InfluxDB not answering is worth the retries."""
    attempts = []

    def unreachable():
        attempts.append(1)
        raise InfluxServerError(
            "cannot reach InfluxDB at http://127.0.0.1:9 while writing: connection refused"
        )

    with pytest.raises(RetriesExhausted, match="gave up after 3 attempts"):
        run_step(unreachable, RetryPolicy(attempts=2, delay_seconds=0.01), "load energy/00001")
    assert len(attempts) == 3
