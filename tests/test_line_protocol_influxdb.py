"""What InfluxDB 1.6.7 stores for each backslash pattern, and that the encoder keeps all of it.

Every backslash pattern that matters (a run of 1 to 4 before a space, comma, equals sign,
double quote, another character or a newline; at the start, at the end, alone) goes through
`encode_batch` into the session's real InfluxDB, in one request of many lines, and is read
back with InfluxQL. What the encoder writes must read back equal to the source value, and
what it drops must be dropped under its reason. For each value it drops or name it refuses,
every spelling with 0 to k+3 backslashes is sent as well, to show that InfluxDB really
cannot store it. The table in blocks/line_protocol.py's docstring sums these tests up.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

import pyarrow as pa
import pytest

from blocks.influxdb.influxql import influxql_ident
from blocks.influxdb.line_protocol import EncodeReport, FieldSpec, PointMapping, encode_batch
from devstack.servers import influxql
from tests.influx_readback import _request, select
from tests.test_line_protocol import (
    BACKSLASH_TAG_KEYS,
    FIELD_KEYS,
    NASTY_MAPPING,
    TAG_KEYS,
    _expected_point,
    _random_rows,
    _rows,
)


def _patterns() -> list[str]:
    out = []
    for k in range(1, 5):
        run = "\\" * k
        out += [f"a{run}{after}b" for after in ' ,="x\n'] + [f"{run} b", f"a{run}", run]
    return out + ["a\nb", "a\rb", "a\\\rb", "a\tb", "c\\ d"]


PATTERNS = _patterns()


def _line_break(text: str) -> bool:
    """A newline not paired with the last backslash of an odd run before it."""
    return re.search(r"(?:^|[^\\])(?:\\\\)*\n", text) is not None


def _post(servers, db: str, body: bytes) -> tuple[int, str]:
    """Send line protocol to the 1.x server as it is; the status and InfluxDB's error text."""
    query = urllib.parse.urlencode({"db": db, "precision": "ns"})
    try:
        with urllib.request.urlopen(_request(servers, f"/write?{query}", body), timeout=30) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _stored(servers, db: str) -> list[tuple[str, dict, dict, int]]:
    """(measurement, tags, fields, time) of every point that InfluxQL can read back."""
    points = []
    for series in select(servers, db, "SELECT * FROM /.*/ GROUP BY *"):
        tags = {k: v for k, v in series.get("tags", {}).items() if v}
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            stamp = row.pop("time")
            points.append((series["name"], tags, {k: v for k, v in row.items() if v is not None}, stamp))
    return points


@contextmanager
def _scratch_database(servers):
    name = "t_" + secrets.token_hex(5)
    influxql(servers["influx"], f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        influxql(servers["influx"], f'DROP DATABASE "{name}"')


def _write_batch(servers, db: str, batch: pa.Table, mapping: PointMapping) -> EncodeReport:
    data, report = encode_batch(batch, mapping)
    assert _post(servers, db, data) == (204, "")
    return report


def _times(n: int) -> pa.Array:
    return pa.array(range(1, n + 1), pa.timestamp("ns"))


def test_tag_values_read_back_exactly_or_are_dropped_by_reason(servers, influx_database):
    # A string field with quotes and a newline on every line: the line splitter must still
    # find each line's end.
    n = len(PATTERNS)
    batch = pa.table(
        {
            "time": _times(n),
            "t": PATTERNS,
            "u": [f"p{i}" for i in range(n)],
            "s": ['say "hi"\nbye,x=1'] * n,
            "v": pa.array(range(n), pa.int64()),
        }
    )
    mapping = PointMapping(
        measurement="m", tags=("u", "t"), fields=(FieldSpec("v"), FieldSpec("s")), time_column="time"
    )
    report = _write_batch(servers, influx_database, batch, mapping)

    trailing = [v for v in PATTERNS if v.endswith("\\")]
    line_break = [v for v in PATTERNS if _line_break(v)]
    kept = {i + 1: v for i, v in enumerate(PATTERNS) if v not in trailing + line_break}
    assert {"c\\ d", "a\\ b", "a\\\\\\ b", "\\ b", "a\\\nb", "a\rb"} <= set(kept.values())
    stored = {stamp: point for *point, stamp in _stored(servers, influx_database)}
    assert sorted(stored) == sorted(kept)
    for stamp, value in kept.items():
        i = stamp - 1
        assert stored[stamp] == ["m", {"t": value, "u": f"p{i}"}, {"v": i, "s": 'say "hi"\nbye,x=1'}]
    shown = select(servers, influx_database, 'SHOW TAG VALUES FROM "m" WITH KEY = "t"')
    assert sorted(row[1] for series in shown for row in series["values"]) == sorted(kept.values())
    assert report.rows_with_unwritable_backslash == len(trailing) == 8
    assert report.rows_with_newline_in_tag == len(line_break) == 3
    assert report.rows_dropped == len(trailing) + len(line_break)


# (tag a, tag b, string field s, whether the encoder drops the row)
SPLITTER_ROWS = [
    ("c\\ d", "x\\=y", "plain", False),
    ("c\\ d", 'x\\=y"', None, True),  # the quote opens a string that never closes: joins the next line
    ("c\\ d", "x\\,y", "two\nlines", True),  # the string's quotes go unseen: its newline ends the line
    ("c\\ d", "x\\,y", "one line", False),
    ("x\\,y", "c\\ d", "two\nlines", False),  # the extra comma comes before the splitter counts
    ("c\\ d", '"q"', "two\nlines", False),
]


def _escape_tag(text: str) -> str:
    return re.sub("([,= ])", r"\\\1", text)


def test_lines_the_line_splitter_would_end_elsewhere_are_dropped_and_only_those(servers, influx_database):
    """Rows with `c\\ d` and a later `\\=` or `\\,` read back exactly unless InfluxDB's line
    splitter would end their line elsewhere; those are dropped, and sending them shows why."""
    rows = SPLITTER_ROWS
    batch = pa.table(
        {
            "time": _times(len(rows)),
            "a": [r[0] for r in rows],
            "b": [r[1] for r in rows],
            "s": pa.array([r[2] for r in rows], pa.string()),
            "v": pa.array(range(len(rows)), pa.int64()),
        }
    )
    mapping = PointMapping(
        measurement="m", tags=("a", "b"), fields=(FieldSpec("v"), FieldSpec("s")), time_column="time"
    )
    report = _write_batch(servers, influx_database, batch, mapping)
    stored = {stamp: point for *point, stamp in _stored(servers, influx_database)}
    kept = {i + 1: row for i, row in enumerate(rows) if not row[3]}
    assert sorted(stored) == sorted(kept)
    for stamp, (a, b, s, _) in kept.items():
        assert stored[stamp] == ["m", {"a": a, "b": b}, {"v": stamp - 1, **({"s": s} if s else {})}]
    assert report.rows_with_misread_line_end == report.rows_dropped == 2

    # Each dropped row, spelled as the encoder spells the kept ones, then an ordinary line:
    # InfluxDB refuses the request and does not hold the point.
    for a, b, s, dropped in rows:
        if dropped:
            fields = "v=0i" + (f',s="{s}"' if s else "")
            line = f"m,a={_escape_tag(a)},b={_escape_tag(b)} {fields} 1\n"
            with _scratch_database(servers) as db:
                status, error = _post(servers, db, (line + "m,a=z v=1i 2\n").encode())
                assert status == 400 and "unable to parse" in error, (a, b, s)
                assert not [p for p in _stored(servers, db) if p[3] == 1], (a, b, s)


def test_measurements_read_back_exactly_or_are_dropped_by_reason(servers, influx_database):
    n = len(PATTERNS)
    batch = pa.table({"time": _times(n), "name": PATTERNS, "v": pa.array(range(n), pa.int64())})
    mapping = PointMapping(measurement_column="name", fields=(FieldSpec("v"),), time_column="time")
    report = _write_batch(servers, influx_database, batch, mapping)

    carriage_return = [v for v in PATTERNS if "\r" in v]
    line_break = [v for v in PATTERNS if _line_break(v)]
    backslash = [
        v for v in PATTERNS if re.search(r'\\$|\\[, "=]', v) and v not in carriage_return + line_break
    ]
    kept = {i + 1: v for i, v in enumerate(PATTERNS) if v not in carriage_return + line_break + backslash}
    assert {"a\\xb", "a\\\\\\\nb", "a\tb"} <= set(kept.values())
    stored = {stamp: point for *point, stamp in _stored(servers, influx_database)}
    assert stored == {stamp: [name, {}, {"v": stamp - 1}] for stamp, name in kept.items()}
    for name in kept.values():  # InfluxQL can name each of them
        assert select(servers, influx_database, f"SELECT * FROM {influxql_ident(name)}")
    assert report.rows_with_unusable_measurement == len(carriage_return) == 2
    assert report.rows_with_newline_in_tag == len(line_break) == 3
    assert report.rows_with_unwritable_backslash == len(backslash) == 29
    assert report.rows_dropped == n - len(kept)


def _odd_run_before(text: str, chars: str) -> bool:
    """Whether an odd run of backslashes stands right before one of `chars`."""
    run = 0
    for ch in text:
        if run % 2 == 1 and ch in chars:
            return True
        run = run + 1 if ch == "\\" else 0
    return False


def test_tag_keys_and_field_keys_read_back_exactly_or_the_mapping_is_refused(servers, influx_database):
    keys = [v for v in PATTERNS if "\r" not in v and not _line_break(v)]
    body, tag_keys, field_keys, refused = b"", [], [], []
    for i, key in enumerate(keys):
        stamp = pa.array([i + 1], pa.timestamp("ns"))
        try:
            mapping = PointMapping(
                measurement="tags", tags=(key,), fields=(FieldSpec("f"),), time_column="time"
            )
            body += encode_batch(pa.table({"time": stamp, key: ["v"], "f": [i]}), mapping)[0]
            tag_keys.append(key)
        except ValueError:
            refused.append(("tag key", key))
        try:
            mapping = PointMapping(
                measurement="fields", fields=(FieldSpec("f", key=key),), time_column="time"
            )
            body += encode_batch(pa.table({"time": stamp, "f": [i]}), mapping)[0]
            field_keys.append(key)
        except ValueError:
            refused.append(("field key", key))
    assert _post(servers, influx_database, body) == (204, "")

    shown = select(servers, influx_database, 'SHOW TAG KEYS FROM "tags"')
    assert sorted(row[0] for s in shown for row in s["values"]) == sorted(tag_keys)
    shown = select(servers, influx_database, 'SHOW FIELD KEYS FROM "fields"')
    assert sorted(row[0] for s in shown for row in s["values"]) == sorted(field_keys)
    want = {("tags", ((key, "v"),), (("f", i),), i + 1) for i, key in enumerate(keys) if key in tag_keys}
    want |= {("fields", (), ((key, i),), i + 1) for i, key in enumerate(keys) if key in field_keys}
    got = {
        (n, tuple(t.items()), tuple(f.items()), stamp) for n, t, f, stamp in _stored(servers, influx_database)
    }
    assert got == want
    # Refused: names ending in a backslash; field keys also with an odd run of them before
    # ',', '=' or a space (the table in blocks/line_protocol.py).
    want_refused = [("tag key", k) for k in keys if k.endswith("\\")] + [
        ("field key", k) for k in keys if k.endswith("\\") or _odd_run_before(k, ",= ")
    ]
    assert sorted(refused) == sorted(want_refused)
    assert len(tag_keys) == len(keys) - 8 and len(field_keys) == len(keys) - 17


def test_string_field_values_read_back_exactly(servers, influx_database):
    values = PATTERNS + ['"', '\\"', '"\\', "", "\n", "\\\n\\"]
    batch = pa.table({"time": _times(len(values)), "s": values})
    report = _write_batch(
        servers,
        influx_database,
        batch,
        PointMapping(measurement="m", fields=(FieldSpec("s"),), time_column="time"),
    )
    assert report.rows_dropped == 0
    stored = {stamp: fields.get("s") for _, _, fields, stamp in _stored(servers, influx_database)}
    assert stored == {i + 1: value for i, value in enumerate(values)}


# What the encoder drops or refuses, as (element, text before the run, k, text after it).
NEVER = (
    [("tag value", "a", k, "") for k in range(1, 5)]
    + [("tag value", "", k, "") for k in range(1, 5)]
    + [("tag value", "a", k, "\nb") for k in (0, 2, 4)]
    + [("measurement", "a", k, after) for k in range(1, 5) for after in (",b", '"b', " b", "=b", "")]
    + [("tag key", "a", k, "") for k in range(1, 5)]
    + [("field key", "a", k, after) for k in (1, 3) for after in (",b", "=b", " b")]
    + [("field key", "a", k, "") for k in range(1, 5)]
)
LINES = {
    "tag value": "m,t={} f=1i 1\n",
    "tag key": "m,{}=v f=1i 1\n",
    "measurement": "{} f=1i 1\n",
    "field key": "m {}=1i 1\n",
}


def _encoder_leaves_out(element: str, text: str) -> bool:
    """Whether the encoder drops the row (per-row values) or refuses the mapping (names)."""
    table = pa.table({"time": _times(1), "v": [1], "t": [text]})
    try:
        if element == "tag value":
            mapping = PointMapping(measurement="m", tags=("t",), fields=(FieldSpec("v"),), time_column="time")
        elif element == "measurement":
            mapping = PointMapping(measurement_column="t", fields=(FieldSpec("v"),), time_column="time")
        elif element == "tag key":
            mapping = PointMapping(
                measurement="m", tags=(text,), fields=(FieldSpec("v"),), time_column="time"
            )
            table = table.rename_columns(["time", "v", text])
        else:
            mapping = PointMapping(measurement="m", fields=(FieldSpec("v", key=text),), time_column="time")
    except ValueError:
        return True
    return encode_batch(table, mapping)[0] == b""


@pytest.mark.parametrize(("element", "before", "k", "after"), NEVER)
def test_what_the_encoder_leaves_out_influxdb_cannot_store(servers, element, before, k, after):
    """Every spelling with 0 to k+3 backslashes, each alone in a fresh database: none reads
    back as the original (SELECT * FROM /.*/ GROUP BY *). Alone, because InfluxDB 1.6.7 lets
    a measurement written as `a\\\\\\,b` be read as `a\\,b` once `a\\\\,b` has been written too,
    whose own point then reads back under no name."""
    original = before + "\\" * k + after
    assert _encoder_leaves_out(element, original)
    for sent in range(k + 4):
        with _scratch_database(servers) as db:
            _post(servers, db, LINES[element].format(before + "\\" * sent + after).encode())
            for name, tags, fields, _ in _stored(servers, db):
                assert (
                    original
                    not in {
                        "tag value": tags.values(),
                        "tag key": tags.keys(),
                        "measurement": [name],
                        "field key": fields.keys(),
                    }[element]
                ), sent


@pytest.mark.parametrize("tag_keys", [TAG_KEYS, BACKSLASH_TAG_KEYS])
def test_random_nasty_rows_are_stored_as_the_rules_promise(servers, influx_database, tag_keys):
    """Random rows of special characters and backslashes, in one request: InfluxDB takes every
    line the encoder writes (a line split wrongly would fail the request) and holds exactly
    the points the reference rules in test_line_protocol.py promise."""
    field_keys = tuple(key for key in FIELD_KEYS if key != "u")  # InfluxDB 1.x has no unsigned
    table = _random_rows(seed=11, n=1500, tag_keys=tag_keys)
    table = table.set_column(0, "time", _times(table.num_rows))  # one shard, no NULL times
    mapping = dataclasses.replace(
        NASTY_MAPPING, tags=tag_keys, fields=tuple(FieldSpec(key) for key in field_keys)
    )
    report = _write_batch(servers, influx_database, table, mapping)
    want = {}
    for row in _rows(table):
        point = _expected_point(row, field_keys, tag_keys)
        if point is not None:
            want[point[3]] = (point[0], dict(point[1]), point[2])
    assert report.lines_out == len(want) and report.rows_with_misread_line_end > 0
    got = {stamp: (name, tags, fields) for name, tags, fields, stamp in _stored(servers, influx_database)}
    assert sorted(got) == sorted(want)
    for stamp, (name, tags, fields) in want.items():
        assert got[stamp][:2] == (name, tags), stamp
        assert got[stamp][2].keys() == fields.keys(), stamp
        for key, value in fields.items():
            stored = got[stamp][2][key]
            assert (float(stored) == value) if isinstance(value, float) else (stored == value), (stamp, key)
