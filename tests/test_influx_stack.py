"""The InfluxDB test stack: the real influxdb-client (v2 API) against InfluxDB 1.6.7 via the adapter.

Writes go through `/api/v2/write` and `/api/v2/delete`; everything is read back with InfluxQL on
`/query`, through the same base URL and token, the way a reconcile step would count rows.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from devstack.servers import influxql
from tests.influx_v2_adapter import influxql_ident
from tests.support import NASTY_TAGS


@pytest.fixture
def client(servers):
    with InfluxDBClient(
        url=servers["influx_v2_url"], token=servers["influx_token"], org="any", enable_gzip=True
    ) as c:
        yield c


def write(client: InfluxDBClient, bucket: str, records, precision: str = WritePrecision.NS) -> None:
    client.write_api(write_options=SYNCHRONOUS).write(
        bucket=bucket, record=records, write_precision=precision
    )


def query(servers, db: str, statement: str) -> list[dict]:
    """InfluxQL through the adapter's /query with the v2 token; returns the first result's series."""
    url = (
        servers["influx_v2_url"]
        + "/query?"
        + urllib.parse.urlencode({"q": statement, "db": db, "epoch": "ns"})
    )
    request = urllib.request.Request(url, headers={"Authorization": "Token " + servers["influx_token"]})
    with urllib.request.urlopen(request, timeout=30) as resp:
        result = json.load(resp)["results"][0]
    assert "error" not in result, result
    return result.get("series", [])


def rows(servers, db: str, measurement: str) -> list[dict]:
    """Every point of a measurement as {column: value}, in time order (tags and fields side by side)."""
    series = query(servers, db, f"SELECT * FROM {influxql_ident(measurement)}")
    if not series:
        return []
    columns = series[0]["columns"]
    return [dict(zip(columns, values, strict=True)) for values in series[0]["values"]]


def rfc3339_ns(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


NASTY_STRINGS = NASTY_TAGS + ["ends with backslash\\", "new\nline\tand tab", '"', "", "\\"]


def test_client_writes_nasty_points_that_read_back_exactly(servers, client, influx_database):
    points, expected = [], {}
    for i, tag in enumerate(NASTY_TAGS):
        ts = 1_700_000_000_123_456_789 + i * 1_000_000_007
        fields = {
            "int, field": -(2**63) + i,
            "big int": 2**63 - 1 - i,
            "ratio=x": 0.1 + i,
            "tiny": -2.5e-300 * (i + 1),
            "whole float": float(i),
            "flag": i % 2 == 0,
            'text "f"': NASTY_STRINGS[i],
        }
        point = Point("m").tag("tag key,= x", tag).tag("plain", f"p{i}").time(ts, WritePrecision.NS)
        for name, value in fields.items():
            point.field(name, value)
        points.append(point)
        expected[ts] = {"tag key,= x": tag, "plain": f"p{i}", **fields}
    # Strings the tags cannot carry (see the test below) still round-trip as field values.
    for j, text in enumerate(NASTY_STRINGS[len(NASTY_TAGS) :]):
        ts = -1 - j * 86_400_000_000_001  # before 1970, nanoseconds kept
        points.append(Point("m").tag("plain", f"q{j}").field('text "f"', text).time(ts, WritePrecision.NS))
        expected[ts] = {"tag key,= x": None, "plain": f"q{j}", 'text "f"': text}

    write(client, influx_database, points)

    got = {row.pop("time"): row for row in rows(servers, influx_database, "m")}
    assert sorted(got) == sorted(expected)
    field_types = {
        key: kind for key, kind in query(servers, influx_database, "SHOW FIELD KEYS FROM m")[0]["values"]
    }
    assert field_types == {
        "int, field": "integer",
        "big int": "integer",
        "ratio=x": "float",
        "tiny": "float",
        "whole float": "float",
        "flag": "boolean",
        'text "f"': "string",
    }
    tag_keys = {row[0] for row in query(servers, influx_database, "SHOW TAG KEYS FROM m")[0]["values"]}
    assert tag_keys == {"tag key,= x", "plain"}
    for ts, want in expected.items():
        row = got[ts]
        assert set(row) == set(field_types) | tag_keys
        for column, value in row.items():
            if column not in want:
                assert value is None, (ts, column)
            elif field_types.get(column) == "float":
                # JSON drops the ".0" of whole floats; the field type above says they are floats.
                assert float(value) == want[column] and not isinstance(value, bool), (ts, column)
            else:
                assert value == want[column] and type(value) is type(want[column]), (ts, column, value)


def test_tag_values_line_protocol_cannot_carry(servers, client, influx_database):
    """Known limits of line protocol (same parser in 1.8 and 2.x): these tag values come back changed.

    influxdb-client writes a tag value ending in a backslash as `ab\\ ` (read back as "ab "), and
    newlines/tabs as the two characters `\\n`/`\\t`, which the server does not unescape. A
    migration must refuse or flag such tag values rather than load them silently.
    """
    changed = {"ab\\": "ab ", "a\nb": "a\\nb", "a\tb": "a\\tb"}
    write(
        client,
        influx_database,
        [Point("m").tag("k", v).field("f", 1).time(i, "ns") for i, v in enumerate(changed)],
    )
    assert [row["k"] for row in rows(servers, influx_database, "m")] == list(changed.values())


@pytest.mark.parametrize(
    ("precision", "stamp", "stored_ns"),
    [
        (WritePrecision.S, 1_700_000_000, 1_700_000_000_000_000_000),
        (WritePrecision.MS, 1_700_000_000_123, 1_700_000_000_123_000_000),
        (WritePrecision.US, 1_700_000_000_123_456, 1_700_000_000_123_456_000),
        (WritePrecision.NS, 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
    ],
)
def test_write_precision_is_honoured(servers, client, influx_database, precision, stamp, stored_ns):
    write(client, influx_database, f"m v=1i {stamp}", precision=precision)
    assert [row["time"] for row in rows(servers, influx_database, "m")] == [stored_ns]


def test_ping_and_health(client):
    assert client.ping() is True
    assert client.health().status == "pass"


def test_wrong_token_is_401_and_writes_nothing(servers, influx_database):
    with InfluxDBClient(url=servers["influx_v2_url"], token="admin:wrong", org="any") as bad:
        with pytest.raises(ApiException) as raised:
            write(bad, influx_database, "m v=1i 1")
    assert raised.value.status == 401
    assert json.loads(raised.value.body) == {"code": "unauthorized", "message": "unauthorized access"}
    assert rows(servers, influx_database, "m") == []


def test_field_type_conflict_is_422_naming_the_field(servers, client, influx_database):
    write(client, influx_database, "m temperature=1i 1")
    with pytest.raises(ApiException) as raised:
        # The first line is fine and is kept (a partial write, as on every InfluxDB); the second is not.
        write(client, influx_database, "m temperature=2i 2\nm temperature=2.5 3")
    assert raised.value.status == 422
    body = json.loads(raised.value.body)
    assert body["code"] == "unprocessable entity"
    assert "field type conflict" in body["message"] and '"temperature"' in body["message"]
    assert raised.value.message == body["message"]
    assert [(row["time"], row["temperature"]) for row in rows(servers, influx_database, "m")] == [
        (1, 1),
        (2, 2),
    ]


def test_bad_line_protocol_is_400(client, influx_database):
    with pytest.raises(ApiException) as raised:
        write(client, influx_database, "m temperature=")
    assert raised.value.status == 400
    assert "unable to parse" in json.loads(raised.value.body)["error"]


@pytest.mark.parametrize("suffix", ["", "/no_such_rp"])
def test_unknown_bucket_is_404(client, influx_database, suffix):
    bucket = "no_such_db" if not suffix else influx_database + suffix
    with pytest.raises(ApiException) as raised:
        write(client, bucket, "m v=1i 1")
    assert raised.value.status == 404
    assert json.loads(raised.value.body) == {"code": "not found", "message": f'bucket "{bucket}" not found'}


def test_delete_removes_exactly_start_inclusive_stop_exclusive(servers, client, influx_database):
    start, stop = 1_700_000_000_000_000_100, 1_700_000_000_000_000_900
    stamps = [start - 1, start, start + 1, stop - 1, stop, stop + 1]
    write(
        client,
        influx_database,
        [
            f"{measurement},host={host} v={i}i {ts}"
            for measurement in ("m", "other")
            for host in ("a", "b")
            for i, ts in enumerate(stamps)
        ],
    )

    client.delete_api().delete(
        rfc3339_ns(start), rfc3339_ns(stop), '_measurement="m"', bucket=influx_database, org="any"
    )

    kept = [start - 1, stop, stop + 1]
    remaining = sorted((row["host"], row["time"]) for row in rows(servers, influx_database, "m"))
    assert remaining == [(host, ts) for host in ("a", "b") for ts in kept]
    assert len(rows(servers, influx_database, "other")) == 2 * len(stamps)


def test_delete_by_tag_and_awkward_names(servers, client, influx_database):
    measurement, tag_value = 'we ird"m', 'it\'s a "v", ok'
    point = Point(measurement).tag("host", tag_value).field("v", 1)
    write(
        client,
        influx_database,
        [point.time(10, "ns"), Point(measurement).tag("host", "b").field("v", 2).time(10, "ns")],
    )

    escaped = tag_value.replace('"', '\\"')
    predicate = f'_measurement="{measurement.replace(chr(34), chr(92) + chr(34))}" AND host="{escaped}"'
    client.delete_api().delete(
        "1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z", predicate, bucket=influx_database, org="any"
    )

    assert [row["host"] for row in rows(servers, influx_database, measurement)] == ["b"]


def test_delete_rejects_what_v2_rejects(client, influx_database):
    delete = client.delete_api().delete
    for start, stop, predicate in [
        ("yesterday", "1970-01-01T00:00:01Z", ""),
        ("1970-01-01T00:00:02Z", "1970-01-01T00:00:01Z", ""),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z", '_measurement="m" OR host="a"'),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z", '_field="v"'),
    ]:
        with pytest.raises(ApiException) as raised:
            delete(start, stop, predicate, bucket=influx_database, org="any")
        assert raised.value.status == 400, (start, stop, predicate)
        assert json.loads(raised.value.body)["code"] == "invalid"
    with pytest.raises(ApiException) as raised:
        delete("1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z", "", bucket="no_such_db", org="any")
    assert raised.value.status == 404


def test_influx_database_fixture_gives_each_test_its_own_database(servers, influx_database):
    databases = {row[0] for row in influxql(servers["influx"], "SHOW DATABASES")[0]["series"][0]["values"]}
    assert influx_database in databases


def test_delete_without_predicate_over_all_time_empties_the_bucket(servers, client, influx_database):
    """Ranges beyond 1.x's time limits (1677-09-21 .. 2262-04-11) are clamped, not rejected."""
    write(client, influx_database, ["m v=1i -9223372036854775806", "m v=2i 0", "n v=3i 9223372036854775806"])
    client.delete_api().delete(
        "1600-01-01T00:00:00Z", "2300-01-01T00:00:00Z", "", bucket=influx_database, org="any"
    )
    assert rows(servers, influx_database, "m") == [] and rows(servers, influx_database, "n") == []
