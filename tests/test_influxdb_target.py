"""`InfluxDBTarget` against the session's real InfluxDB 1.6.7: directly (api="v1") and through the
v2-API adapter with influxdb-client (api="v2").

Everything written is read back with InfluxQL straight from the 1.x server (``/query?epoch=ns``,
chunked, GROUP BY * so series stay apart) and compared with the source Arrow table: every tag,
field value, field type and nanosecond timestamp.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest
from pydantic import SecretStr, ValidationError

from blocks.errors import (
    ConfigError,
    ConnectionCheckError,
    DataConversionError,
    MigrationError,
    ValidationFailed,
)
from blocks.influxdb.influxql import (
    influxql_ident,
    rfc3339_ns,
    time_condition,
    v2_delete_stop_is_inclusive,
)
from blocks.influxdb.line_protocol import FieldSpec, PointMapping
from blocks.influxdb.target import InfluxDBTarget
from devstack.servers import free_port, influxql
from tests.influx_readback import field_types, select, stored_points
from tests.support import NASTY_TAGS

MEASUREMENT = 'cpu load, "x"'
TAGS = ("host", "region zone", "dev,id")
FIELD_KEYS = {"f": "value f", "i": "count=i", "s": 'label "s"', "b": "ok,b"}
FIELD_TYPES = {"value f": "float", "count=i": "integer", 'label "s"': "string", "ok,b": "boolean"}
MAPPING = PointMapping(
    fields=tuple(FieldSpec(column, key) for column, key in FIELD_KEYS.items()),
    time_column="time",
    tags=TAGS,
    measurement=MEASUREMENT,
)
NASTY_STRINGS = NASTY_TAGS + [
    "ends with backslash\\",
    "new\nline\tand tab\r\n",
    '"',
    "",
    "\\",
    'say "hi"\\n',
    "x" * 1000,
]
# Tag values line protocol cannot carry: the encoder drops their rows and says so.
UNWRITABLE_HOST = "ends in backslash\\"
FLOATS = [0.1 + 0.2, 1e-310, -2.5e-300, 1e308, 3.0, -0.0, 123456.789, math.pi]


# ---------------------------------------------------------------------------------------------
# Source data, expectations and reading back


def source_table(n: int, seed: int = 7) -> pa.Table:
    """`n` rows: unique times with odd nanoseconds over a few days around 1970 (and two far
    out, in 1900 and 2200), nasty tags and strings, NULL and NaN field values, and a few rows
    whose host tag cannot be written. (InfluxDB 1.x keeps one shard per week: a time range of
    centuries would make the test measure shard creation.)"""
    rng = np.random.default_rng(seed)
    index = np.arange(n)
    times = -3 * 86_400_000_000_000 + index * 10_000_000_007
    times[2], times[3] = -2_208_988_800_000_000_001, 7_258_118_400_123_456_789
    hosts = np.array([f"host-{k}" for k in range(42)] + NASTY_TAGS, dtype=object)[index % 50]
    hosts[index % 997 == 5] = UNWRITABLE_HOST
    regions = np.array(["eu west", "us=east", "ap,south", "", None], dtype=object)[index % 5]
    devices = np.array([f"dev {k}" for k in range(7)], dtype=object)[(index // 3) % 7]
    floats = rng.normal(scale=1e6, size=n)
    floats[index % 11 == 0] = np.array(FLOATS)[(index[index % 11 == 0] // 11) % len(FLOATS)]
    floats[index % 13 == 1] = np.nan  # left out of the line, counted in the report
    float_nulls = index % 17 == 2
    ints = rng.integers(-(10**15), 10**15, n)
    ints[0], ints[1] = -(2**63), 2**63 - 1
    strings = np.array(NASTY_STRINGS + [f"text {k}" for k in range(10)], dtype=object)[index % 25]
    string_nulls = index % 19 == 3
    bools = rng.random(n) > 0.5
    bool_nulls = index % 23 == 4
    return pa.table(
        {
            "time": pa.array(times, pa.timestamp("ns", tz="UTC")),
            "host": pa.array(hosts, pa.string()),
            "region zone": pa.array(regions, pa.string()),
            "dev,id": pa.array(devices, pa.string()),
            "f": pa.array(floats, mask=float_nulls),
            "i": pa.array(ints),
            "s": pa.array(strings, pa.string(), mask=string_nulls),
            "b": pa.array(bools, mask=bool_nulls),
        }
    )


def expected_points(table: pa.Table) -> dict[tuple, dict]:
    """{(sorted non-empty tags, time ns): {field key: value}} for every row InfluxDB should hold."""
    columns = table.to_pydict()
    times = table.column("time").cast(pa.int64()).to_pylist()
    points = {}
    for row in range(table.num_rows):
        tags = tuple(sorted((tag, columns[tag][row]) for tag in TAGS if columns[tag][row]))
        if dict(tags).get("host") == UNWRITABLE_HOST:
            continue
        fields = {}
        for column, key in FIELD_KEYS.items():
            value = columns[column][row]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            fields[key] = value
        points[(tags, times[row])] = fields
    return points


def assert_same_points(got: dict[tuple, dict], want: dict[tuple, dict]) -> None:
    assert got.keys() == want.keys()
    for key, fields in want.items():
        row = got[key]
        assert row.keys() == fields.keys(), key
        for name, value in fields.items():
            stored = row[name]
            if FIELD_TYPES[name] == "float":
                # JSON drops the ".0" of whole floats; SHOW FIELD KEYS says they are floats.
                assert not isinstance(stored, bool) and float(stored) == value, (key, name, stored, value)
            else:
                assert stored == value and type(stored) is type(value), (key, name, stored, value)


# ---------------------------------------------------------------------------------------------
# Targets


@pytest.fixture(params=["v1", "v2"])
def api(request) -> str:
    return request.param


def make_target(servers, api: str, db: str, **settings) -> InfluxDBTarget:
    if api == "v1":
        defaults = {
            "url": servers["influx"].extra["url"],
            "database": db,
            "username": servers["influx"].extra["user"],
            "password": SecretStr(os.environ["INFLUX_PASSWORD"]),
        }
    else:
        defaults = {
            "url": servers["influx_v2_url"],
            "bucket": db,
            "org": "any",
            "token": SecretStr(os.environ["INFLUX_TOKEN"]),
        }
    return InfluxDBTarget(api=api, **{**defaults, **settings})


# ---------------------------------------------------------------------------------------------
# Writing and reading back


def test_points_read_back_exactly_and_rewriting_is_idempotent(servers, api, influx_database):
    table = source_table(50_000)
    want = expected_points(table)
    dropped = table.num_rows - len(want)
    target = make_target(servers, api, influx_database)
    target.check()
    # Batches that do not line up with the 10,000-line requests.
    batches = table.to_batches(max_chunksize=12_345)

    started = time.perf_counter()
    load = target.write_chunk(batches, MAPPING, chunk="c-1")
    seconds = time.perf_counter() - started
    print(
        f"\n[{api}] wrote {load.points_written} points in {seconds:.2f}s: {load.points_written / seconds:,.0f} points/s"
    )

    assert load.rows_in == table.num_rows
    assert load.points_written == load.lines_sent == len(want)
    assert load.report["rows_with_unwritable_backslash"] == dropped > 0
    index = np.arange(table.num_rows)
    assert load.report["non_finite_values"] == {"value f": int(np.sum((index % 13 == 1) & (index % 17 != 2)))}
    assert any("backslash" in line for line in load.problems)
    # Requests hold at most 10,000 lines and are sent once more than 7,500 are in.
    assert math.ceil(len(want) / 10_000) <= load.requests <= math.ceil(len(want) / 7_500) + 1
    assert load.bytes_on_wire < load.bytes_sent  # gzip
    assert field_types(servers, influx_database, MEASUREMENT) == FIELD_TYPES
    assert_same_points(stored_points(servers, influx_database, MEASUREMENT), want)
    assert target.count(MEASUREMENT) == len(want)

    again = target.write_chunk(table.to_batches(max_chunksize=7_000), MAPPING)
    assert again.points_written == len(want)
    assert target.count(MEASUREMENT) == len(want)
    assert target.count(MEASUREMENT, field="count=i") == len(want)
    assert_same_points(stored_points(servers, influx_database, MEASUREMENT), want)


def test_count_of_a_range_is_exact(servers, api, influx_database):
    table = source_table(20_000, seed=3)
    want = expected_points(table)
    target = make_target(servers, api, influx_database)
    target.write_chunk(table.to_batches(max_chunksize=5_000), MAPPING)
    times = table.column("time").cast(pa.int64()).to_pylist()
    start, stop = times[4_321], times[15_000]
    stamps = {ts for _, ts in want}
    assert start in stamps and stop in stamps and stop - 1 not in stamps  # points on both bounds

    def expected(lower, upper, key=None):
        return sum(
            1
            for (_, ts), fields in want.items()
            if (lower is None or ts >= lower)
            and (upper is None or ts < upper)
            and (key is None or key in fields)
        )

    assert target.count(MEASUREMENT, start, stop) == expected(start, stop) > 10_000
    assert target.count(MEASUREMENT, start, stop + 1) == expected(start, stop) + 1
    assert target.count(MEASUREMENT, start, stop, field="count=i") == expected(start, stop)
    # A sparse field counts only the points that carry it.
    assert target.count(MEASUREMENT, start, stop, field="value f") == expected(start, stop, "value f")
    assert expected(start, stop, "value f") < expected(start, stop)
    assert target.count(MEASUREMENT, None, start) == expected(None, start)  # before 1970 included
    assert target.count(MEASUREMENT, stop, None) == expected(stop, None)  # after now included
    assert target.count(MEASUREMENT, start, start) == 0
    assert target.count("no such measurement") == 0
    assert target.count(MEASUREMENT, field="no such field") == 0


def test_requests_hold_at_most_batch_lines_even_with_newlines_in_strings(
    servers, api, influx_database, monkeypatch
):
    table = source_table(5_000, seed=11)
    want = expected_points(table)
    target = make_target(servers, api, influx_database, batch_lines=1_000, writers=3, gzip=False)
    sent = []
    send = InfluxDBTarget._send

    def recording_send(self, wire, body, lines, label, turn):
        sent.append((lines, body.count(b"\n")))
        return send(self, wire, body, lines, label, turn)

    monkeypatch.setattr(InfluxDBTarget, "_send", recording_send)

    load = target.write_chunk(table.to_batches(max_chunksize=1_234), MAPPING)

    assert sum(lines for lines, _ in sent) == len(want) == load.lines_sent
    assert max(lines for lines, _ in sent) <= 1_000
    assert any(newlines > lines for lines, newlines in sent)  # "\n" inside string fields
    assert load.bytes_on_wire == load.bytes_sent  # no gzip
    assert_same_points(stored_points(servers, influx_database, MEASUREMENT), want)


# ---------------------------------------------------------------------------------------------
# Deleting


def test_delete_removes_exactly_the_half_open_range(servers, api, influx_database):
    start, stop = 1_700_000_000_000_000_100, 1_700_000_000_000_000_900
    stamps = [start - 1, start, start + 1, stop - 1, stop, stop + 1]
    measurement = 'we ird"m\\x'
    rows = [(m, host, ts) for m in (measurement, "other") for host in ("a", "b") for ts in stamps]
    batch = pa.record_batch(
        {
            "m": [m for m, _, _ in rows],
            "host": [h for _, h, _ in rows],
            "time": pa.array([ts for _, _, ts in rows], pa.timestamp("ns")),
            "v": list(range(len(rows))),
        }
    )
    mapping = PointMapping(
        fields=(FieldSpec("v"),), time_column="time", tags=("host",), measurement_column="m"
    )
    target = make_target(servers, api, influx_database)
    target.write_chunk([batch], mapping)

    target.delete(measurement, start, stop)

    def remaining(name):
        return sorted(
            (series["tags"]["host"], values[0])
            for series in select(
                servers, influx_database, f"SELECT v FROM {influxql_ident(name)} GROUP BY host"
            )
            for values in series["values"]
        )

    assert remaining(measurement) == [(h, ts) for h in ("a", "b") for ts in (start - 1, stop, stop + 1)]
    assert len(remaining("other")) == 2 * len(stamps)
    assert target.count(measurement, start, stop) == 0

    target.delete(measurement, None, stop + 1)  # open start
    assert remaining(measurement) == [(h, stop + 1) for h in ("a", "b")]
    target.delete(measurement, stop, stop)  # empty range: nothing
    assert target.count(measurement) == 2
    target.delete(measurement)  # all time
    assert remaining(measurement) == []
    assert len(remaining("other")) == 2 * len(stamps)


def test_v2_delete_stop_follows_the_server_version():
    assert v2_delete_stop_is_inclusive("v2.7.11") and v2_delete_stop_is_inclusive("2.0.9")
    assert v2_delete_stop_is_inclusive(None) and v2_delete_stop_is_inclusive("")
    assert not v2_delete_stop_is_inclusive("1.8.10") and not v2_delete_stop_is_inclusive("1.6.7~rc0")
    assert rfc3339_ns(-1) == "1969-12-31T23:59:59.999999999Z"
    assert rfc3339_ns(9223372036854775806) == "2262-04-11T23:47:16.854775806Z"


# ---------------------------------------------------------------------------------------------
# Failures


def test_field_type_conflict_names_the_field_and_the_chunk(servers, api, influx_database):
    target = make_target(servers, api, influx_database)
    times = pa.array([1, 2], pa.timestamp("ns"))
    as_int = pa.record_batch({"time": times, "temperature": pa.array([1, 2], pa.int64())})
    as_float = pa.record_batch({"time": times, "temperature": pa.array([1.5, 2.5])})
    mapping = PointMapping(fields=(FieldSpec("temperature"),), time_column="time", measurement="m")
    target.write_chunk([as_int], mapping)

    with pytest.raises(ValidationFailed) as raised:
        target.write_chunk([as_float], mapping, chunk="2024-01-01")

    message = str(raised.value)
    assert '"temperature"' in message and "chunk 2024-01-01" in message
    assert "integer" in message and "float" in message


def test_wrong_credentials_are_unauthorized_without_the_secret(servers, api, influx_database):
    wrong = "wrong-" + secrets.token_hex(8)
    secret = {"v1": {"password": SecretStr(wrong)}, "v2": {"token": SecretStr(f"admin:{wrong}")}}[api]
    target = make_target(servers, api, influx_database, **secret)
    batch = pa.record_batch({"time": pa.array([1], pa.timestamp("ns")), "v": [1]})
    mapping = PointMapping(fields=(FieldSpec("v"),), time_column="time", measurement="m")
    for attempt in (target.check, lambda: target.write_chunk([batch], mapping), lambda: target.count("m")):
        with pytest.raises(ConnectionCheckError) as raised:
            attempt()
        message = str(raised.value)
        assert "unauthorized" in message
        assert wrong not in message and os.environ["INFLUX_PASSWORD"] not in message
        assert wrong not in repr(target)


def test_unknown_bucket_or_database_is_named(servers, api, influx_database):
    missing = "no_such_" + secrets.token_hex(4)
    target = make_target(servers, api, missing)
    with pytest.raises(ConnectionCheckError, match=missing):
        target.check()
    batch = pa.record_batch({"time": pa.array([1], pa.timestamp("ns")), "v": [1]})
    mapping = PointMapping(fields=(FieldSpec("v"),), time_column="time", measurement="m")
    with pytest.raises(ConnectionCheckError, match=missing):
        target.write_chunk([batch], mapping)

    # An unknown retention policy is named too.
    policy = {"v1": {"retention_policy": "no_such_rp"}, "v2": {"bucket": f"{influx_database}/no_such_rp"}}[
        api
    ]
    with pytest.raises(ConnectionCheckError, match="no_such_rp"):
        make_target(servers, api, influx_database, **policy).check()


def test_unreachable_url(api):
    url = f"http://127.0.0.1:{free_port()}"
    settings = {"database": "db"} if api == "v1" else {"bucket": "b", "org": "o", "token": SecretStr("t:t")}
    target = InfluxDBTarget(url=url, api=api, timeout_seconds=5, **settings)
    with pytest.raises(ConnectionCheckError, match="cannot reach InfluxDB at " + url):
        target.check()
    batch = pa.record_batch({"time": pa.array([1], pa.timestamp("ns")), "v": [1]})
    mapping = PointMapping(fields=(FieldSpec("v"),), time_column="time", measurement="m")
    with pytest.raises(Exception) as raised:  # transient: the task layer retries it
        target.write_chunk([batch], mapping)
    assert not isinstance(raised.value, MigrationError)


def test_names_cannot_inject_influxql(servers, api, influx_database):
    target = make_target(servers, api, influx_database)
    batch = pa.record_batch({"time": pa.array([1, 2], pa.timestamp("ns")), "v": [1, 2]})
    target.write_chunk([batch], PointMapping(fields=(FieldSpec("v"),), time_column="time", measurement="m"))
    hostile = 'm" WHERE time > 0; DROP DATABASE "' + influx_database
    assert target.count(hostile) == 0
    assert target.count("m", field='v") FROM "m" --') == 0
    target.delete(hostile)
    assert target.count("m") == 2
    databases = {row[0] for row in influxql(servers["influx"], "SHOW DATABASES")[0]["series"][0]["values"]}
    assert influx_database in databases
    assert influxql_ident('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert time_condition(None, None) == "time >= -9223372036854775806 AND time <= 9223372036854775806"


def test_settings_are_checked_per_api(servers):
    with pytest.raises(ValidationError, match="token"):
        InfluxDBTarget(url="http://x", api="v2", org="o", bucket="b")
    with pytest.raises(ValidationError, match="database"):
        InfluxDBTarget(url="http://x", api="v1")
    target = InfluxDBTarget(url="http://user:pw@host:8086/", api="v1", database="d")
    assert target.display_url == "http://host:8086" and "pw" not in target.describe_target()


def test_mapping_and_value_errors_are_permanent(servers, influx_database):
    target = make_target(servers, "v1", influx_database)
    batch = pa.record_batch(
        {"time": pa.array([1, 2], pa.timestamp("ns")), "big": pa.array([1, 2**63], pa.uint64())}
    )
    with pytest.raises(ConfigError, match="nope"):
        target.write_chunk(
            [batch], PointMapping(fields=(FieldSpec("nope"),), time_column="time", measurement="m")
        )
    with pytest.raises(DataConversionError, match="chunk c-9.*big"):
        target.write_chunk(
            [batch],
            PointMapping(fields=(FieldSpec("big", kind="integer"),), time_column="time", measurement="m"),
            chunk="c-9",
        )
    assert target.count("m") == 0


def test_v2_delete_sends_stop_minus_one_to_a_2x_server(influx_database):
    """InfluxDB 2.x deletes [start, stop]: the block sends stop - 1 ns so the range stays [start, stop).

    The session's server is 1.x (half-open, checked above); a stub that answers /ping like
    2.7 records what a real 2.x server would receive.
    """
    received = []

    class Stub2x(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(204)
            self.send_header("X-Influxdb-Version", "v2.7.11")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Authorization"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub2x)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = InfluxDBTarget(
            url=f"http://127.0.0.1:{server.server_address[1]}",
            api="v2",
            org="o",
            bucket="b",
            token=SecretStr("secret-token"),
        )
        target.delete('m"x', 1_700_000_000_000_000_100, 1_700_000_000_000_000_900)
        target.delete("m", None, None)
    finally:
        server.shutdown()
        server.server_close()
    (path, auth, first), (_, _, everything) = received
    assert path.startswith("/api/v2/delete?") and "bucket=b" in path and auth == "Token secret-token"
    assert first == {
        "start": "2023-11-14T22:13:20.000000100Z",
        "stop": "2023-11-14T22:13:20.000000899Z",
        "predicate": '_measurement="m\\"x"',
    }
    assert everything["start"] == "1677-09-21T00:12:43.145224194Z"
    assert everything["stop"] == "2262-04-11T23:47:16.854775806Z"


def test_block_saves_and_loads_with_its_secret(servers, influx_database):
    target = make_target(servers, "v2", influx_database, writers=3)
    name = "influx-" + secrets.token_hex(3)
    target.save(name)
    loaded = InfluxDBTarget.load(name)
    assert loaded.token.get_secret_value() == os.environ["INFLUX_TOKEN"]
    assert (loaded.api, loaded.bucket, loaded.writers) == ("v2", influx_database, 3)
    loaded.check()


def test_write_slots_serve_the_chunk_that_began_first():
    """Chunks sharing the write slots are served in the order they began: while the first one
    has a request waiting, a later one gets no slot. So the first finishes (and is counted)
    while the later one still writes, instead of all finishing, and idling, together."""
    from blocks.influxdb.writes import WriteSlots

    slots = WriteSlots(2)
    first, later = slots.ticket(), slots.ticket()
    order: list[int] = []
    release = threading.Event()

    def request(ticket: int) -> None:
        with slots.slot(ticket):
            order.append(ticket)
            release.wait()

    threads = [threading.Thread(target=request, args=(later,)) for _ in range(4)]
    threads += [threading.Thread(target=request, args=(first,)) for _ in range(3)]
    for thread in threads:  # the later chunk's requests queue up before the first chunk's
        thread.start()
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while len(slots._waiting) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert order == [later, later] and len(slots._waiting) == 5
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == [later, later, first, first, first, later, later]
