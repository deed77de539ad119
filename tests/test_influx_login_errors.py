"""A login InfluxDB refuses names the user and the environment variable (or saved block) that
held the password or token, never the secret, against the session's real InfluxDB 1.6.7 (auth
on): directly (api v1) and through the v2-API adapter (api v2)."""

from __future__ import annotations

import secrets

import pyarrow as pa
import pytest
from pydantic import SecretStr

from blocks.errors import ConnectionCheckError
from blocks.influxdb.line_protocol import FieldSpec, PointMapping
from blocks.influxdb.target import InfluxDBTarget
from tasks.config import MigrationSpec
from tasks.connections import build_target


def influx_spec(**target) -> MigrationSpec:
    """A migration whose target is the session's InfluxDB; only the target is ever built."""
    return MigrationSpec.model_validate(
        {
            "source": {"type": "parquet", "location": "/nonexistent"},
            "target": {"type": "influxdb", **target},
            "ledger": {"type": "postgres", "password_env": "PGPASSWORD"},
            "tables": [{"name": "t", "chunk_column": "time", "chunk_interval": "1d"}],
        }
    )


def refusals(target: InfluxDBTarget) -> list[str]:
    """The messages of a connection check, a chunk write and a count, each refused."""
    batch = pa.record_batch({"time": pa.array([1], pa.timestamp("ns")), "v": [1]})
    mapping = PointMapping(fields=(FieldSpec("v"),), time_column="time", measurement="m")
    messages = []
    for attempt in (target.check, lambda: target.write_chunk([batch], mapping), lambda: target.count("m")):
        with pytest.raises(ConnectionCheckError) as raised:
            attempt()
        messages.append(str(raised.value))
    return messages


def test_v1_wrong_password_names_the_user_and_its_environment_variable(servers, influx_database, monkeypatch):
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("MIG_TEST_INFLUX_PASSWORD", wrong)
    url = servers["influx"].extra["url"]
    spec = influx_spec(
        url=url,
        api="v1",
        database=influx_database,
        username="admin",
        password_env="MIG_TEST_INFLUX_PASSWORD",
    )
    messages = refusals(build_target(spec))
    assert messages[0] == (
        f"unauthorized: InfluxDB at {url} refused user 'admin' with the password from "
        "environment variable MIG_TEST_INFLUX_PASSWORD while checking write access"
    )
    for message in messages:
        assert "user 'admin' with the password from environment variable MIG_TEST_INFLUX_PASSWORD" in message
        assert wrong not in message and servers["influx"].extra["password"] not in message


def test_v1_user_without_a_password_says_so(servers, influx_database):
    url = servers["influx"].extra["url"]
    spec = influx_spec(url=url, api="v1", database=influx_database, username="admin")
    with pytest.raises(ConnectionCheckError) as raised:
        build_target(spec).check()
    assert f"unauthorized: InfluxDB at {url} refused user 'admin' without a password" in str(raised.value)


def test_v2_wrong_token_names_its_environment_variable(servers, influx_database, monkeypatch):
    wrong = f"admin:wrong-{secrets.token_hex(8)}"
    monkeypatch.setenv("MIG_TEST_INFLUX_TOKEN", wrong)
    url = servers["influx_v2_url"]
    spec = influx_spec(
        url=url,
        api="v2",
        org="any",
        bucket=influx_database,
        token_env="MIG_TEST_INFLUX_TOKEN",
    )
    for message in refusals(build_target(spec)):
        assert message.startswith(
            f"unauthorized: InfluxDB at {url} refused the token from environment variable MIG_TEST_INFLUX_TOKEN while "
        )
        assert wrong not in message and servers["influx_token"] not in message


def test_a_saved_block_names_the_block_setting(servers, influx_database):
    wrong = "wrong-" + secrets.token_hex(8)
    name = "login-" + secrets.token_hex(4)
    url = servers["influx"].extra["url"]
    InfluxDBTarget(
        url=url, api="v1", database=influx_database, username="admin", password=SecretStr(wrong)
    ).save(name)
    spec = influx_spec(block=name)
    with pytest.raises(ConnectionCheckError) as raised:
        build_target(spec).check()
    message = str(raised.value)
    assert (
        f"unauthorized: InfluxDB at {url} refused user 'admin' with the password from setting "
        f"`password` of saved block {name!r} while checking write access"
    ) == message
    assert wrong not in message


def test_a_block_built_in_code_names_its_setting(servers, influx_database):
    url = servers["influx"].extra["url"]
    target = InfluxDBTarget(
        url=url, api="v1", database=influx_database, username="admin", password=SecretStr("wrong")
    )
    with pytest.raises(
        ConnectionCheckError, match="refused user 'admin' with the password from setting `password` "
    ):
        target.check()
