"""Reading InfluxDB back for exact comparisons: InfluxQL straight on the session's 1.x server."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

from blocks.influxdb.target import influxql_ident


def _request(servers, path: str, body: bytes) -> urllib.request.Request:
    extra = servers["influx"].extra
    credentials = base64.b64encode(f"{extra['user']}:{extra['password']}".encode()).decode()
    return urllib.request.Request(
        extra["url"] + path, data=body, headers={"Authorization": "Basic " + credentials}
    )


def write_lines(servers, db: str, lines: str) -> None:
    """Write line protocol straight to the 1.x server (nanosecond times)."""
    query = urllib.parse.urlencode({"db": db, "precision": "ns"})
    with urllib.request.urlopen(_request(servers, f"/write?{query}", lines.encode()), timeout=30) as resp:
        assert resp.status == 204


def select(servers, db: str, statement: str) -> list[dict]:
    """Every series of an InfluxQL query run straight on the 1.x server, chunked."""
    body = urllib.parse.urlencode(
        {"q": statement, "db": db, "epoch": "ns", "chunked": "true", "chunk_size": "20000"}
    ).encode()
    request = _request(servers, "/query", body)
    series = []
    with urllib.request.urlopen(request, timeout=60) as resp:
        for line in resp:
            if line.strip():
                for result in json.loads(line)["results"]:
                    assert "error" not in result, result
                    series.extend(result.get("series", []))
    return series


def stored_points(servers, db: str, measurement: str) -> dict[tuple, dict]:
    """What InfluxDB holds, in the shape of `expected_points`."""
    points = {}
    for series in select(servers, db, f"SELECT * FROM {influxql_ident(measurement)} GROUP BY *"):
        tags = tuple(sorted((k, v) for k, v in series.get("tags", {}).items() if v))
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            key = (tags, row.pop("time"))
            assert key not in points, key
            points[key] = {k: v for k, v in row.items() if v is not None}
    return points


def field_types(servers, db: str, measurement: str) -> dict[str, str]:
    series = select(servers, db, f"SHOW FIELD KEYS FROM {influxql_ident(measurement)}")
    return {key: kind for s in series for key, kind in s["values"]}


def measurements(servers, db: str) -> list[str]:
    return sorted(v[0] for s in select(servers, db, "SHOW MEASUREMENTS") for v in s["values"])
