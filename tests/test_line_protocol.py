"""The line-protocol encoder, checked byte by byte and by parsing its output back.

`parse_line_protocol` below reads line protocol the way InfluxDB 1.x and 2.x do
(`models/points.go`): `_split_lines` cuts the text into lines like its `scanLine`, which
reads a backslash and the next character as a pair and tracks quotes in the fields; each line
is then read like `scanMeasurement`/`scanTags`, where a character is escaped when the one
before it is a backslash, and only each element's own escape pairs are unescaped. The two
rules disagree on `\\\\ `, which is why the encoder replays the splitter on some lines. It
is deliberately a plain per-character loop, so it shares no code with the encoder. What
InfluxDB itself stores is checked against a real server in test_line_protocol_influxdb.py.
"""

from __future__ import annotations

import dataclasses
import math
import random
import struct
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from influxdb_client import Point, WritePrecision

from blocks.influxdb.line_protocol import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    EncodeReport,
    FieldSpec,
    PointMapping,
    encode_batch,
)

# ---------------------------------------------------------------------------------------------
# A reference parser


def _scan(text: str, i: int, stops: str) -> int:
    """Index of the first stop character at or after i that is not preceded by a backslash."""
    start = i
    while i < len(text) and not (text[i] in stops and (i == start or text[i - 1] != "\\")):
        if text[i] == "\n" and "\n" in stops and text[i - 1] != "\\":
            break
        i += 1
    return i


def _unescape(raw: str, specials: str) -> str:
    for ch in specials:
        raw = raw.replace("\\" + ch, ch)
    return raw


def _unescape_string_field(raw: str) -> str:
    out, i = [], 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] in '\\"':
            out.append(raw[i + 1])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def _field_value(raw: str):
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    if raw.endswith("i"):
        assert raw[:-1].lstrip("-").isdigit(), raw
        return int(raw[:-1])
    if raw.endswith("u"):
        assert raw[:-1].isdigit(), raw
        return ("u", int(raw[:-1]))
    assert raw.lower() not in ("nan", "inf", "-inf", "+inf"), raw
    assert raw[0] in "-0123456789.", raw
    return float(raw)


def _split_lines(text: str) -> list[str]:
    """The lines of text as `scanLine` in models/points.go cuts them."""
    lines, i = [], 0
    while i < len(text):
        start, quoted, fields, equals, commas = i, False, False, 0, 0
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == " ":
                fields = True
            if fields:
                if not quoted and ch == "=":
                    equals += 1
                    i += 1
                    continue
                if not quoted and ch == ",":
                    commas += 1
                    i += 1
                    continue
                if ch == '"' and equals > commas:
                    quoted = not quoted
                    i += 1
                    continue
            if ch == "\n" and not quoted:
                break
            i += 1
        lines.append(text[start:i] + "\n")
        i += 1
    return lines


def parse_line_protocol(data: bytes) -> list[tuple[str, list[tuple[str, str]], dict, int]]:
    """(measurement, [(tag key, tag value)], {field key: value}, time) for each line."""
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n"), "output must end with a newline"
    return [_parse_line(line) for line in _split_lines(text)]


def _parse_line(text: str) -> tuple[str, list[tuple[str, str]], dict, int]:
    i = 0
    while text[i] in " \t\x00":  # InfluxDB skips these at the start of a line
        i += 1
    assert text[i] not in "#\n", f"line would be a comment or empty: {text!r}"
    end = _scan(text, i, ", \n")
    measurement = _unescape(text[i:end], ", ")
    assert measurement, "empty measurement"
    i = end
    tags = []
    while text[i] == ",":
        end = _scan(text, i + 1, "=, \n")
        assert text[end] == "=", f"tag key without '=' at {end}: {text[i : end + 5]!r}"
        key = _unescape(text[i + 1 : end], ",= ")
        i = end + 1
        end = _scan(text, i, "=, \n")
        assert text[end] in ", ", f"bad tag value at {end}: {text[i : end + 5]!r}"
        value = _unescape(text[i:end], ",= ")
        assert key and value, "empty tag key or value"
        tags.append((key, value))
        i = end
    assert text[i] == " ", f"expected a space before the fields at {i}"
    i += 1
    fields = {}
    while True:
        end = _scan(text, i, "=, \n")
        assert text[end] == "=", f"field key without '=' at {end}"
        key = _unescape(text[i:end], ",= ")
        assert key and key not in fields
        i = end + 1
        if text[i] == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            fields[key] = _unescape_string_field(text[i + 1 : j])
            i = j + 1
        else:
            end = i
            while text[end] not in ", \n":
                end += 1
            fields[key] = _field_value(text[i:end])
            i = end
        if text[i] == ",":
            i += 1
            continue
        break
    assert text[i] == " ", "expected a space before the time"
    end = text.index("\n", i + 1)
    stamp = text[i + 1 : end]
    assert stamp.lstrip("-").isdigit(), stamp
    assert end == len(text) - 1, f"text after the time: {text!r}"
    return (measurement, tags, fields, int(stamp))


def test_reference_parser_reads_the_spec_examples():
    data = (
        b'my\\ measure\\,ment,tag\\ key\\,\\=1=tag\\ value\\,\\=1 f\\=k="s\\"tr\\\\ing",i=-5i,u=7u,b=t 1\n'
        b'm s="multi\nline",x=1e+16 -1\n'
    )
    assert parse_line_protocol(data) == [
        (
            "my measure,ment",
            [("tag key,=1", "tag value,=1")],
            {"f=k": 's"tr\\ing', "i": -5, "u": ("u", 7), "b": True},
            1,
        ),
        ("m", [], {"s": "multi\nline", "x": 1e16}, -1),
    ]


# ---------------------------------------------------------------------------------------------
# Exact bytes

T0 = 1_700_000_000_123_456_789


def _ts(values, unit="ns", tz=None):
    return pa.array(values, pa.timestamp(unit, tz))


def encode_one(value, arrow_type=None, *, kind=None, timestamp_fields="integer") -> bytes:
    """The line for one row with one field "f" holding value (or b"" when nothing is written)."""
    batch = pa.table({"time": _ts([T0]), "f": pa.array([value], arrow_type)})
    mapping = PointMapping(
        measurement="m",
        fields=(FieldSpec("f", kind=kind),),
        time_column="time",
        timestamp_fields=timestamp_fields,
    )
    data, _ = encode_batch(batch, mapping)
    return data


def test_one_line_has_the_documented_shape():
    batch = pa.table(
        {
            "time": _ts([T0, T0 + 1]),
            "host": ["a", "b"],
            "region": ["eu", "us"],
            "usage": [0.5, 1.25],
            "count": pa.array([3, -4], pa.int64()),
        }
    )
    mapping = PointMapping(
        measurement="cpu",
        tags=("host", "region"),
        fields=(FieldSpec("usage"), FieldSpec("count", key="n")),
        time_column="time",
    )
    data, report = encode_batch(batch, mapping)
    assert data == (
        b"cpu,host=a,region=eu usage=0.5,n=3i 1700000000123456789\n"
        b"cpu,host=b,region=us usage=1.25,n=-4i 1700000000123456790\n"
    )
    assert report == EncodeReport(rows_in=2, lines_out=2)
    assert report.problems() == []


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a,b", "a\\,b"),
        ("a b", "a\\ b"),
        ("a=b", "a=b"),  # '=' is not special in a measurement name
        ('a"b', 'a"b'),
        ("a\\b", "a\\b"),  # a backslash is kept as it is
        ("a\\\\b", "a\\\\b"),
        ("caf\u00e9 \U0001f600", "caf\u00e9\\ \U0001f600"),
        ("a\tb", "a\tb"),
        ("x#", "x#"),
        # InfluxDB 1.6.7 unescapes measurement names twice: a backslash before any of , " = and
        # space is lost there, so those names are not written.
        ("a\\,b", None),
        ('a\\"b', None),
        ("a\\=b", None),
        ("a\\ b", None),
        ("a\\\\ b", None),
        ("a\\", None),
        ("a\\\nb", "a\\\nb"),  # a newline after an odd run of backslashes stays in the line
    ],
)
def test_measurement_escaping(raw, escaped):
    batch = pa.table({"time": _ts([1]), "name": [raw], "v": pa.array([1], pa.int64())})
    per_row = PointMapping(measurement_column="name", fields=(FieldSpec("v"),), time_column="time")
    data, report = encode_batch(batch, per_row)
    if escaped is None:
        assert data == b"" and report.rows_with_unwritable_backslash == 1
        with pytest.raises(ValueError, match="backslash"):
            PointMapping(measurement=raw, fields=(FieldSpec("v"),), time_column="time")
        return
    assert data == f"{escaped} v=1i 1\n".encode()
    assert parse_line_protocol(data)[0][0] == raw
    constant = PointMapping(measurement=raw, fields=(FieldSpec("v"),), time_column="time")
    assert encode_batch(batch, constant)[0] == data


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a,b", "a\\,b"),
        ("a b", "a\\ b"),
        ("a=b", "a\\=b"),
        ('a"b', 'a"b'),
        ("\\", None),  # a lone backslash is a trailing backslash
        ("a\\b", "a\\b"),
        ("a\\ b", "a\\\\ b"),  # InfluxDB 1.6.7 stores "a\ b" when sent "a\\ b"
        ("a\\\\ b", "a\\\\\\ b"),
        ("a\\\\\\ b", "a\\\\\\\\ b"),
        ("\\ b", "\\\\ b"),
        ("a\\\\", None),  # any backslash at the end
        ("\\=", "\\\\="),
        ("a\\,b", "a\\\\,b"),
        ('a\\"b', 'a\\"b'),
        ("a\\\nb", "a\\\nb"),  # a newline after an odd run of backslashes stays in the line
        ("a\\\\\nb", None),  # after an even run it ends the line
        ("a\rb", "a\rb"),
        ("\u65e5\u672c \U0001f600,=", "\u65e5\u672c\\ \U0001f600\\,\\="),
        ("#x", "#x"),
        ("  ", "\\ \\ "),
    ],
)
def test_tag_value_escaping(raw, escaped):
    batch = pa.table({"time": _ts([1]), "t": [raw], "v": pa.array([1], pa.int64())})
    mapping = PointMapping(measurement="m", tags=("t",), fields=(FieldSpec("v"),), time_column="time")
    data, report = encode_batch(batch, mapping)
    if escaped is None:
        reason = "rows_with_unwritable_backslash" if raw.endswith("\\") else "rows_with_newline_in_tag"
        assert data == b"" and getattr(report, reason) == report.rows_dropped == 1
        return
    assert data == f"m,t={escaped} v=1i 1\n".encode()
    assert parse_line_protocol(data)[0][1] == [("t", raw)]


def test_tag_and_field_keys_are_escaped():
    batch = pa.table({"time": _ts([1]), "ta g,=1": ["v"], 'f "x': pa.array([2], pa.int64())})
    mapping = PointMapping(
        measurement="m",
        tags=("ta g,=1",),
        fields=(FieldSpec('f "x', key="k=, y\\z"),),
        time_column="time",
    )
    data, _ = encode_batch(batch, mapping)
    assert data == b"m,ta\\ g\\,\\=1=v k\\=\\,\\ y\\z=2i 1\n"
    assert parse_line_protocol(data) == [("m", [("ta g,=1", "v")], {"k=, y\\z": 2}, 1)]


@pytest.mark.parametrize(
    ("raw", "written"),
    [
        ("", '""'),
        ("plain", '"plain"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("ends with \\", '"ends with \\\\"'),
        ('\\"', '"\\\\\\""'),
        ("a,b c=d", '"a,b c=d"'),
        ("line one\nline two\r\n", '"line one\nline two\r\n"'),  # newlines in a string field are kept
        ("tab\there", '"tab\there"'),
        (
            "\u00e9\u00e8 \u65e5\u672c\u8a9e \U0001f600\U0001f1eb\U0001f1f7",
            '"\u00e9\u00e8 \u65e5\u672c\u8a9e \U0001f600\U0001f1eb\U0001f1f7"',
        ),
        ("#not a comment", '"#not a comment"'),
    ],
)
def test_string_field_escaping(raw, written):
    data = encode_one(raw)
    assert data == f"m f={written} {T0}\n".encode()
    assert parse_line_protocol(data)[0][2] == {"f": raw}


# ---------------------------------------------------------------------------------------------
# Field types


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1 + 0.2, "0.30000000000000004"),
        (1e-310, "1e-310"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (-1.7976931348623157e308, "-1.7976931348623157e+308"),
        (-0.0, "-0"),
        (0.0, "0"),
        (123456789.123456789, "123456789.12345679"),
        (3.0, "3"),
        (-2.5, "-2.5"),
        (1e16, "1e+16"),
        (2.0**53 + 2, "9.007199254740994e+15"),
        (1e-5, "0.00001"),
        (1 / 3, "0.3333333333333333"),
    ],
)
def test_float64_is_the_shortest_text_that_reads_back_exactly(value, text):
    data = encode_one(value, pa.float64())
    assert data == f"m f={text} {T0}\n".encode()
    parsed = parse_line_protocol(data)[0][2]["f"]
    assert struct.pack("<d", parsed) == struct.pack("<d", value)  # same bits, so -0 stays -0


def test_float64_round_trips_for_random_bit_patterns():
    rng = np.random.default_rng(2024)
    values = rng.integers(-(2**63), 2**63 - 1, size=20_000, dtype=np.int64).view(np.float64)
    values = values[np.isfinite(values)]
    batch = pa.table({"time": _ts(np.arange(len(values))), "f": pa.array(values)})
    data, report = encode_batch(
        batch, PointMapping(measurement="m", fields=(FieldSpec("f"),), time_column="time")
    )
    parsed = np.array([p[2]["f"] for p in parse_line_protocol(data)])
    assert report.lines_out == len(values)
    assert np.array_equal(parsed.view(np.int64), values.view(np.int64))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_left_out_and_counted(value):
    batch = pa.table({"time": _ts([1]), "f": [value], "g": [1.5]})
    mapping = PointMapping(measurement="m", fields=(FieldSpec("f"), FieldSpec("g")), time_column="time")
    data, report = encode_batch(batch, mapping)
    assert data == b"m g=1.5 1\n"
    assert report.non_finite_values == {"f": 1}
    assert report.problems() == ["field 'f': 1 NaN/Inf value(s) left out (line protocol cannot carry them)"]


def test_float32_is_written_as_its_shortest_float32_text():
    values = np.array([0.1, 1 / 3, 3.0, 1e-45, 3.4028235e38, -0.0], dtype=np.float32)
    texts = [encode_one(v, pa.float32()).split(b" ")[1] for v in values]
    assert texts == [b"f=0.1", b"f=0.33333334", b"f=3", b"f=1e-45", b"f=3.4028235e+38", b"f=-0"]
    for value, text in zip(values, texts, strict=True):
        assert np.float32(float(text[2:])) == value


def test_float16_is_written_as_a_float():
    assert encode_one(np.float16(0.5), pa.float16()) == f"m f=0.5 {T0}\n".encode()


@pytest.mark.parametrize(
    ("arrow_type", "value", "text"),
    [
        (pa.int8(), -128, "-128i"),
        (pa.int16(), 32767, "32767i"),
        (pa.int32(), -(2**31), "-2147483648i"),
        (pa.int64(), -(2**63), "-9223372036854775808i"),
        (pa.int64(), 2**63 - 1, "9223372036854775807i"),
        (pa.uint8(), 255, "255i"),
        (pa.uint16(), 65535, "65535i"),
        (pa.uint32(), 2**32 - 1, "4294967295i"),
        (pa.uint64(), 2**64 - 1, "18446744073709551615u"),
        (pa.uint64(), 0, "0u"),
        (pa.bool_(), True, "true"),
        (pa.bool_(), False, "false"),
    ],
)
def test_integer_unsigned_and_boolean_fields(arrow_type, value, text):
    data = encode_one(value, arrow_type)
    assert data == f"m f={text} {T0}\n".encode()


def test_kind_overrides_the_inferred_type():
    assert encode_one(2**63 - 1, pa.uint64(), kind="integer") == f"m f=9223372036854775807i {T0}\n".encode()
    assert encode_one(5, pa.int32(), kind="unsigned") == f"m f=5u {T0}\n".encode()
    assert encode_one(2**53 + 1, pa.int64(), kind="float") == f"m f=9.007199254740992e+15 {T0}\n".encode()
    assert encode_one(-7, pa.int64(), kind="string") == f'm f="-7" {T0}\n'.encode()
    assert encode_one(True, pa.bool_(), kind="string") == f'm f="true" {T0}\n'.encode()
    assert encode_one(2.5, pa.float64(), kind="string") == f'm f="2.5" {T0}\n'.encode()


def test_kind_that_a_value_cannot_take_raises():
    with pytest.raises(ValueError, match="does not fit kind 'integer'"):
        encode_one(2**63, pa.uint64(), kind="integer")
    with pytest.raises(ValueError, match="does not fit kind 'unsigned'"):
        encode_one(-1, pa.int64(), kind="unsigned")
    with pytest.raises(TypeError, match="cannot be written as kind 'boolean'"):
        encode_one(1, pa.int64(), kind="boolean")
    with pytest.raises(TypeError, match="cannot be written as kind 'integer'"):
        encode_one(1.5, pa.float64(), kind="integer")
    with pytest.raises(TypeError, match="no line-protocol field type"):
        encode_one(b"\x00", pa.binary())


def test_decimals_are_written_as_the_nearest_float_and_inexact_ones_are_counted():
    values = [
        Decimal("0.0638"),  # Arrow's own decimal->double cast gives 0.06380000000000001 here
        Decimal("-13.2473"),
        Decimal("241.92"),
        Decimal("12.3000"),
        Decimal("0.0000000001"),
        Decimal("1234567890123456789.0123456789"),  # 29 digits: cannot survive a double
        None,
    ]
    batch = pa.table({"time": _ts(range(len(values))), "d": pa.array(values, pa.decimal128(38, 10))})
    data, report = encode_batch(
        batch, PointMapping(measurement="m", fields=(FieldSpec("d"),), time_column="time")
    )
    assert data.decode().splitlines() == [
        "m d=0.0638 0",
        "m d=-13.2473 1",
        "m d=241.92 2",
        "m d=12.3 3",
        "m d=1e-10 4",
        "m d=1.2345678901234568e+18 5",
    ]
    assert report.inexact_decimals == {"d": 1}
    assert report.rows_without_fields == 1
    for (_, _, fields, _), original in zip(parse_line_protocol(data), values, strict=False):
        assert fields["d"] == float(original)  # Python's float(Decimal) is correctly rounded


def test_random_decimals_become_correctly_rounded_floats():
    rng = random.Random(11)
    for precision, scale in [(38, 10), (18, 4), (38, 0), (38, 30), (10, 2), (60, 20)]:
        values = []
        for _ in range(3000):
            digits = rng.randint(1, precision)
            values.append(Decimal(rng.randrange(-(10**digits) + 1, 10**digits)).scaleb(-scale))
        arrow_type = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        batch = pa.table({"time": _ts(range(len(values))), "d": pa.array(values, arrow_type)})
        data, report = encode_batch(
            batch, PointMapping(measurement="m", fields=(FieldSpec("d"),), time_column="time")
        )
        parsed = [p[2]["d"] for p in parse_line_protocol(data)]
        assert parsed == [float(v) for v in values]
        inexact = sum(Decimal(repr(float(v))) != v for v in values)
        assert report.inexact_decimals.get("d", 0) == inexact


def test_decimal_as_string_keeps_every_digit():
    data = encode_one(Decimal("1234567890123456789.0123456789"), pa.decimal128(38, 10), kind="string")
    assert data == f'm f="1234567890123456789.0123456789" {T0}\n'.encode()


@pytest.mark.parametrize(
    ("unit", "raw", "ns"),
    [("s", 1_700_000_000, 1_700_000_000_000_000_000), ("ms", -1, -1_000_000), ("us", 5, 5_000), ("ns", 7, 7)],
)
def test_timestamp_fields_as_integer_nanoseconds(unit, raw, ns):
    assert encode_one(raw, pa.timestamp(unit, "Europe/Paris")) == f"m f={ns}i {T0}\n".encode()


def test_timestamp_fields_as_rfc3339_strings():
    cases = [
        (pa.timestamp("s"), 0, "1970-01-01T00:00:00Z"),
        (pa.timestamp("ms", "America/New_York"), 1_500, "1970-01-01T00:00:01.500Z"),
        (pa.timestamp("us", "UTC"), -1, "1969-12-31T23:59:59.999999Z"),
        (pa.timestamp("ns"), T0, "2023-11-14T22:13:20.123456789Z"),
        (pa.timestamp("s"), 253402300799, "9999-12-31T23:59:59Z"),
        (pa.timestamp("s"), -62167219200, "0000-01-01T00:00:00Z"),
    ]
    for arrow_type, raw, text in cases:
        assert encode_one(raw, arrow_type, timestamp_fields="string") == f'm f="{text}" {T0}\n'.encode()
    # Explicit kinds beat the mapping's default.
    assert encode_one(0, pa.timestamp("s"), kind="string") == f'm f="1970-01-01T00:00:00Z" {T0}\n'.encode()
    assert encode_one(1, pa.timestamp("s"), kind="integer", timestamp_fields="string") == (
        f"m f=1000000000i {T0}\n".encode()
    )


def test_timestamp_fields_that_cannot_be_written_are_left_out_and_counted():
    batch = pa.table(
        {
            "time": _ts([1, 2, 3]),
            "as_int": pa.array([2**62, 1, None], pa.timestamp("s")),  # 2**62 s does not fit int64 ns
            "as_text": pa.array([253402300800, -62167219201, 0], pa.timestamp("s")),  # year 10000, year -1
        }
    )
    mapping = PointMapping(
        measurement="m",
        fields=(FieldSpec("as_int"), FieldSpec("as_text", kind="string")),
        time_column="time",
    )
    data, report = encode_batch(batch, mapping)
    assert data == b'm as_int=1000000000i 2\nm as_text="1970-01-01T00:00:00Z" 3\n'
    assert report.out_of_range_values == {"as_int": 1, "as_text": 2}
    assert report.rows_without_fields == 1


def test_date_time_and_all_null_columns():
    batch = pa.table(
        {
            "time": _ts([1, 2]),
            "day": pa.array([19000, None], pa.date32()),
            "clock": pa.array([3_723_000_001, None], pa.time64("us")),
            "nothing": pa.nulls(2),
            "v": pa.array([None, 1], pa.int64()),
        }
    )
    mapping = PointMapping(
        measurement="m",
        fields=(FieldSpec("day"), FieldSpec("clock"), FieldSpec("nothing"), FieldSpec("v")),
        time_column="time",
    )
    data, report = encode_batch(batch, mapping)
    assert data == b'm day="2022-01-08",clock="01:02:03.000001" 1\nm v=1i 2\n'
    assert report.lines_out == 2


def test_oversized_strings_are_left_out_and_counted_in_bytes():
    fits = "x" * 65535
    too_long_in_bytes = "\u00e9" * 32768  # 32,768 characters, 65,536 bytes
    batch = pa.table({"time": _ts([1, 2, 3]), "s": [fits, too_long_in_bytes, "x" * 65536], "n": [1, 2, 3]})
    mapping = PointMapping(measurement="m", fields=(FieldSpec("s"), FieldSpec("n")), time_column="time")
    data, report = encode_batch(batch, mapping)
    assert data == f'm s="{fits}",n=1i 1\nm n=2i 2\nm n=3i 3\n'.encode()
    assert report.oversized_strings == {"s": 2}


def test_dictionary_columns_are_written_like_plain_ones():
    tags = pa.array(["a b", "c", None, "a b", ""]).dictionary_encode()
    values = pa.array(["x", None, '"q"', "x", "y"]).dictionary_encode()
    batch = pa.table({"time": _ts(range(5)), "t": tags, "s": values})
    mapping = PointMapping(measurement="m", tags=("t",), fields=(FieldSpec("s"),), time_column="time")
    data, report = encode_batch(batch, mapping)
    assert data == b'm,t=a\\ b s="x" 0\nm s="\\"q\\"" 2\nm,t=a\\ b s="x" 3\nm s="y" 4\n'
    assert report.rows_without_fields == 1
    assert report.empty_tags == {"t": 1}


def test_integer_and_boolean_tags_are_written_as_text():
    batch = pa.table({"time": _ts([1]), "id": pa.array([-42], pa.int64()), "ok": [True], "v": [1.0]})
    mapping = PointMapping(measurement="m", tags=("id", "ok"), fields=(FieldSpec("v"),), time_column="time")
    assert encode_batch(batch, mapping)[0] == b"m,id=-42,ok=true v=1 1\n"
    with pytest.raises(TypeError, match="cannot be a tag"):
        encode_batch(
            pa.table({"time": _ts([1]), "f": [1.5], "v": [1.0]}),
            PointMapping(measurement="m", tags=("f",), fields=(FieldSpec("v"),), time_column="time"),
        )


# ---------------------------------------------------------------------------------------------
# NULLs, dropped rows and the report


def test_null_and_empty_tags_and_null_fields_are_left_out():
    batch = pa.table(
        {
            "time": _ts([1, 2, 3, 4]),
            "a": ["x", None, "", "y"],
            "b": [None, "z", "w", None],
            "f": [1.0, None, 3.0, None],
            "g": pa.array([None, 2, 3, None], pa.int64()),
            "h": ["s", None, None, None],
        }
    )
    mapping = PointMapping(
        measurement="m",
        tags=("a", "b"),
        fields=(FieldSpec("f"), FieldSpec("g"), FieldSpec("h")),
        time_column="time",
    )
    data, report = encode_batch(batch, mapping)
    # Row 4 has no field left and is dropped; the rows around it keep their own values.
    assert data == b'm,a=x f=1,h="s" 1\nm,b=z g=2i 2\nm,b=w f=3,g=3i 3\n'
    assert report.empty_tags == {"a": 1}
    assert report.rows_without_fields == 1
    assert report.lines_out == 3


def test_rows_whose_tags_and_fields_are_all_null_stay_aligned():
    # pyarrow's binary_join_element_wise(null_handling="skip") drops rows whose inputs are all
    # NULL; the encoder must not shift the following rows onto the wrong times.
    n = 1000
    rng = np.random.default_rng(5)
    tag = np.where(rng.random(n) < 0.5, None, np.char.add("t", np.arange(n).astype(str)))
    value = np.where(rng.random(n) < 0.5, None, np.arange(n))
    batch = pa.table(
        {"time": _ts(range(n)), "t": pa.array(tag.tolist()), "v": pa.array(value.tolist(), pa.int64())}
    )
    mapping = PointMapping(measurement="m", tags=("t",), fields=(FieldSpec("v"),), time_column="time")
    data, report = encode_batch(batch, mapping)
    parsed = parse_line_protocol(data)
    expected = [i for i in range(n) if value[i] is not None]
    assert [p[3] for p in parsed] == expected
    for _, tags, fields, stamp in parsed:
        assert fields == {"v": stamp}
        assert tags == ([] if tag[stamp] is None else [("t", f"t{stamp}")])
    assert report.rows_without_fields == n - len(expected)


@pytest.mark.parametrize(
    ("bad", "counter"),
    [
        ("line\nbreak", "rows_with_newline_in_tag"),
        ("even run\\\\\nthen a newline", "rows_with_newline_in_tag"),
        ("ends with\\", "rows_with_unwritable_backslash"),
    ],
)
def test_rows_with_unwritable_tag_values_or_measurements_are_dropped(bad, counter):
    batch = pa.table(
        {
            "time": _ts([1, 2, 3]),
            "name": ["ok", bad, "ok"],
            "t": ["a", "b", bad],
            "v": [1.0, 2.0, 3.0],
        }
    )
    mapping = PointMapping(
        measurement_column="name", tags=("t",), fields=(FieldSpec("v"),), time_column="time"
    )
    data, report = encode_batch(batch, mapping)
    assert data == b"ok,t=a v=1 1\n"
    assert getattr(report, counter) == 2
    assert report.rows_dropped == 2


def test_a_carriage_return_is_kept_in_a_tag_value_but_drops_a_measurement():
    """InfluxDB stores both, but InfluxQL cannot name a measurement holding a CR, so a load
    with one could not be counted, verified or deleted."""
    batch = pa.table({"time": _ts([1, 2]), "name": ["ok", "a\rb"], "t": ["c\rd", "e"], "v": [1.0, 2.0]})
    mapping = PointMapping(
        measurement_column="name", tags=("t",), fields=(FieldSpec("v"),), time_column="time"
    )
    data, report = encode_batch(batch, mapping)
    assert data == b"ok,t=c\rd v=1 1\n"
    assert report.rows_with_unusable_measurement == report.rows_dropped == 1
    assert "carriage return" in report.problems()[0]


def test_lines_the_line_splitter_would_end_elsewhere_are_dropped():
    """`c\\ d` is written as `c\\\\ d`, and InfluxDB's line splitter starts the fields at that
    space. A later `\\=` or `\\,` (written `\\\\=`, `\\\\,`) then shifts its count, so a quote or a
    newline in the rest of the line can end the line elsewhere: those rows, and only those,
    are dropped."""
    rows = [
        # (tag a, tag b, string field, dropped?)
        ("c\\ d", "x\\=y", "plain", False),  # an extra "=" and no quote after it
        ("c\\ d", "x\\=y", None, False),
        ("c\\ d", 'x\\=y"', None, True),  # the quote opens a string that never closes
        ("c\\ d", "x\\,y", "two\nlines", True),  # the string's quote is not seen: its newline ends the line
        ("c\\ d", "x\\,y", None, False),
        ("c\\ d", "x\\,y", "one line", False),  # its quotes are not seen, but nothing else happens
        ("x\\,y", "c\\ d", "two\nlines", False),  # here the splitter counts nothing extra
        ("c\\ d", '"q"', "two\nlines", False),  # quotes in tags alone do nothing
        ("c d", "x\\,y", "two\nlines", False),  # no unpaired space
    ]
    batch = pa.table(
        {
            "time": _ts(range(len(rows))),
            "a": [r[0] for r in rows],
            "b": [r[1] for r in rows],
            "s": pa.array([r[2] for r in rows], pa.string()),
            "v": pa.array(range(len(rows)), pa.int64()),
        }
    )
    mapping = PointMapping(
        measurement="m", tags=("a", "b"), fields=(FieldSpec("v"), FieldSpec("s")), time_column="time"
    )
    data, report = encode_batch(batch, mapping)
    parsed = parse_line_protocol(data)
    kept = [i for i, r in enumerate(rows) if not r[3]]
    assert [p[3] for p in parsed] == kept
    for _, tags, fields, stamp in parsed:
        assert tags == [("a", rows[stamp][0]), ("b", rows[stamp][1])]
        assert fields == {"v": stamp, **({"s": rows[stamp][2]} if rows[stamp][2] else {})}
    assert report.rows_with_misread_line_end == report.rows_dropped == len(rows) - len(kept)
    assert "line splitter" in report.problems()[0]


def test_per_row_measurements():
    batch = pa.table(
        {
            "time": _ts(range(6)),
            "measure_name": ["cpu", "disk io", None, "", "#comment", "a,b=c"],
            "v": pa.array(range(6), pa.int64()),
        }
    )
    mapping = PointMapping(measurement_column="measure_name", fields=(FieldSpec("v"),), time_column="time")
    data, report = encode_batch(batch, mapping)
    assert data == b"cpu v=0i 0\ndisk\\ io v=1i 1\na\\,b=c v=5i 5\n"
    assert report.rows_with_unusable_measurement == 3
    assert parse_line_protocol(data)[2][0] == "a,b=c"


@pytest.mark.parametrize(
    ("unit", "per_unit"),
    [("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1)],
)
def test_time_units_and_the_time_range(unit, per_unit):
    lowest = -((-MIN_TIME_NS) // per_unit)  # the limits in the column's unit, rounded inwards
    highest = MAX_TIME_NS // per_unit
    raw = [0, 1, -1, lowest, highest, lowest - 1, highest + 1, None, -(2**63), 2**63 - 1]
    batch = pa.table({"time": pa.array(raw, pa.timestamp(unit)), "v": pa.array(range(len(raw)), pa.int64())})
    data, report = encode_batch(
        batch, PointMapping(measurement="m", fields=(FieldSpec("v"),), time_column="time")
    )
    stamps = [p[3] for p in parse_line_protocol(data)]
    assert stamps == [0, per_unit, -per_unit, lowest * per_unit, highest * per_unit]
    assert all(MIN_TIME_NS <= s <= MAX_TIME_NS for s in stamps)
    assert report.rows_without_time == 1
    # ns: the two int64 extremes and one step past each limit; other units: the same four.
    assert report.rows_with_time_out_of_range == 4
    assert report.rows_in == report.lines_out + report.rows_dropped


def test_tz_aware_and_naive_times_of_the_same_instant_give_the_same_nanoseconds():
    instants = {
        pa.timestamp("s", "Asia/Kolkata"): 1_700_000_000,
        pa.timestamp("ms", "America/Los_Angeles"): 1_700_000_000_000,
        pa.timestamp("us", "UTC"): 1_700_000_000_000_000,
        pa.timestamp("ns"): 1_700_000_000_000_000_000,
    }
    for arrow_type, raw in instants.items():
        batch = pa.table({"time": pa.array([raw], arrow_type), "v": [1.0]})
        data, _ = encode_batch(
            batch, PointMapping(measurement="m", fields=(FieldSpec("v"),), time_column="time")
        )
        assert data == b"m v=1 1700000000000000000\n", arrow_type


def test_each_dropped_row_is_counted_once_in_order_of_precedence():
    batch = pa.table(
        {
            "time": pa.array([None, 2**62, 3, 4, 5, 6, 7, 8], pa.timestamp("s")),
            "name": [None, None, None, "m\n", "m\\", "m", "m", "m"],
            "t": ["x\\", "x\n", "x\n", "x\\", "x", 'x\\ y\\="', 'x\\ y\\="', "x"],
            "v": [None, None, None, None, None, None, 1.0, 1.0],
        }
    )
    mapping = PointMapping(
        measurement_column="name", tags=("t",), fields=(FieldSpec("v"),), time_column="time"
    )
    data, report = encode_batch(batch, mapping)
    assert data == b"m,t=x v=1 8000000000\n"
    assert (
        report.rows_without_time,
        report.rows_with_time_out_of_range,
        report.rows_with_unusable_measurement,
        report.rows_with_newline_in_tag,
        report.rows_with_unwritable_backslash,
        report.rows_without_fields,
        report.rows_with_misread_line_end,
    ) == (1, 1, 1, 1, 1, 1, 1)
    assert report.rows_dropped == 7 and report.lines_out == 1


def test_reports_add_up_and_describe_their_problems():
    a = EncodeReport(rows_in=3, lines_out=2, rows_without_fields=1, empty_tags={"host": 1})
    b = EncodeReport(rows_in=2, lines_out=1, rows_without_time=1, empty_tags={"host": 2, "dc": 1})
    total = a + b
    assert total == EncodeReport(
        rows_in=5, lines_out=3, rows_without_time=1, rows_without_fields=1, empty_tags={"host": 3, "dc": 1}
    )
    assert total.problems() == [
        "1 row(s) dropped: the time is NULL",
        "1 row(s) dropped: no field value is left (all NULL or left out)",
        "tag 'dc': 1 empty value(s) left out (InfluxDB rejects empty tag values)",
        "tag 'host': 3 empty value(s) left out (InfluxDB rejects empty tag values)",
    ]


def test_tables_with_several_chunks_and_empty_batches():
    mapping = PointMapping(measurement="m", tags=("t",), fields=(FieldSpec("v"),), time_column="time")
    first = pa.table({"time": _ts([1, 2]), "t": ["a", "b"], "v": [1.0, 2.0]})
    second = pa.table({"time": _ts([3]), "t": ["c"], "v": [3.0]})
    data, report = encode_batch(pa.concat_tables([first, second]), mapping)
    assert data == b"m,t=a v=1 1\nm,t=b v=2 2\nm,t=c v=3 3\n"
    assert report.lines_out == 3
    empty, report = encode_batch(first.slice(0, 0), mapping)
    assert empty == b"" and report == EncodeReport()
    sliced, _ = encode_batch(pa.concat_tables([first, second]).to_batches()[0].slice(1, 1), mapping)
    assert sliced == b"m,t=b v=2 2\n"


def test_bad_mappings_and_batches_are_refused():
    field = (FieldSpec("v"),)
    with pytest.raises(ValueError, match="exactly one"):
        PointMapping(fields=field, time_column="time")
    with pytest.raises(ValueError, match="exactly one"):
        PointMapping(measurement="m", measurement_column="n", fields=field, time_column="time")
    with pytest.raises(ValueError, match="at least one field"):
        PointMapping(measurement="m", fields=(), time_column="time")
    with pytest.raises(ValueError, match="comment"):
        PointMapping(measurement="#m", fields=field, time_column="time")
    with pytest.raises(ValueError, match="backslash"):
        PointMapping(measurement="m\\", fields=field, time_column="time")
    with pytest.raises(ValueError, match="backslash"):
        PointMapping(measurement="m\\ x", fields=field, time_column="time")
    with pytest.raises(ValueError, match="backslash"):  # an odd run before , = or space
        PointMapping(measurement="m", fields=(FieldSpec("v", key="a\\,b"),), time_column="time")
    with pytest.raises(ValueError, match="backslash"):
        PointMapping(measurement="m", fields=(FieldSpec("v", key="a\\\\\\ b"),), time_column="time")
    PointMapping(measurement="m", fields=(FieldSpec("v", key="a\\\\ b"),), time_column="time")  # an even run
    with pytest.raises(ValueError, match="backslash"):
        PointMapping(measurement="m", tags=("a\\",), fields=field, time_column="time")
    PointMapping(
        measurement="m", tags=("a\\=b", "c\\ d"), fields=field, time_column="time"
    )  # fine in tag keys
    # InfluxDB unescapes \" in field keys: a quote after a backslash takes one more.
    quoted = PointMapping(measurement="m", fields=(FieldSpec("v", key='a\\"b"'),), time_column="time")
    assert encode_batch(pa.table({"time": _ts([1]), "v": [1.0]}), quoted)[0] == b'm a\\\\"b"=1 1\n'
    PointMapping(measurement="m", tags=('a\\"b',), fields=field, time_column="time")  # fine in a tag key
    with pytest.raises(ValueError, match="newline"):
        PointMapping(measurement="m", tags=("a\nb",), fields=field, time_column="time")
    PointMapping(measurement="m\\\nx", tags=("a\\\nb",), fields=field, time_column="time")  # paired
    with pytest.raises(ValueError, match="carriage return"):
        PointMapping(measurement="m\rx", fields=field, time_column="time")
    with pytest.raises(ValueError, match="reserved"):
        PointMapping(measurement="m", fields=(FieldSpec("v", key="time"),), time_column="time")
    with pytest.raises(ValueError, match="more than once"):
        PointMapping(measurement="m", tags=("v",), fields=field, time_column="time")
    with pytest.raises(ValueError, match="empty"):
        PointMapping(measurement="m", fields=(FieldSpec("v", key=""),), time_column="time")
    mapping = PointMapping(measurement="m", fields=field, time_column="time")
    with pytest.raises(ValueError, match="missing"):
        encode_batch(pa.table({"time": _ts([1])}), mapping)
    with pytest.raises(TypeError, match="timestamp"):
        encode_batch(pa.table({"time": [1], "v": [1.0]}), mapping)


# ---------------------------------------------------------------------------------------------
# Round trip and comparison with influxdb-client, on random rows with nasty strings

# The last three make InfluxDB's line splitter and its tag scanner disagree (blocks/line_protocol.py).
NASTY = [",", "=", " ", '"', "\\", "\t", "#", "a", "Z", "0", "-", "'", "\u00e9", "\u65e5", "\U0001f600"]
NASTY += ["\\ ", "\\,", "\\="]
TAG_KEYS = ("host name", "dc,zone", "k=v", 'q"t')
# Tag keys the line splitter reads differently from the tag scanner: an unpaired space or "=".
BACKSLASH_TAG_KEYS = ("c\\ d", "k\\=v", 'q"t', "e\\\\ f")
FIELD_KEYS = ("f loat", "i,nt", "s=tr", "b\\ool", "u")


def _nasty(rng: random.Random, max_len: int = 12, lethal: float = 0.0) -> str:
    """Random text of special characters; with probability `lethal` it also holds a newline
    or carriage return, or ends in a backslash, which may cost the row its line."""
    text = "".join(rng.choice(NASTY) for _ in range(rng.randint(0, max_len)))
    if rng.random() < lethal:
        where = rng.randint(0, len(text))
        return rng.choice(
            [text[:where] + "\n" + text[where:], text[:where] + "\r" + text[where:], text + "\\"]
        )
    return text


def _random_time(rng: random.Random) -> int | None:
    roll = rng.random()
    if roll < 0.02:
        return None
    if roll < 0.05:
        return rng.choice([MIN_TIME_NS + rng.randint(-2, 2), MAX_TIME_NS + rng.randint(-2, 1)])
    return rng.randrange(MIN_TIME_NS, MAX_TIME_NS + 1)


def _random_rows(seed: int, n: int, tag_keys: tuple[str, ...] = TAG_KEYS) -> pa.Table:
    rng = random.Random(seed)
    no_fields = [rng.random() < 0.03 for _ in range(n)]

    def maybe(value):
        return None if rng.random() < 0.15 else value

    def field_values(make):
        return [None if no_fields[i] else maybe(make()) for i in range(n)]

    floats = [1.5, -0.0, 0.1 + 0.2, 1e-310, 1e300, math.nan, math.inf, -math.inf, 3.0, 2.0**60]
    columns = {
        "time": pa.array([_random_time(rng) for _ in range(n)], pa.timestamp("ns")),
        "measure": [
            maybe(
                rng.choice(["", "#m", "\tm", "\x00m"]) if rng.random() < 0.03 else _nasty(rng, 6, 0.02) or "m"
            )
            for _ in range(n)
        ],
        **{key: [maybe(_nasty(rng, lethal=0.02)) for _ in range(n)] for key in tag_keys},
        "f loat": pa.array(field_values(lambda: rng.choice(floats + [rng.uniform(-1e9, 1e9)])), pa.float64()),
        "i,nt": pa.array(field_values(lambda: rng.randrange(-(2**63), 2**63)), pa.int64()),
        "s=tr": field_values(lambda: _nasty(rng, 30, lethal=0.3)),  # newlines are fine in a string field
        "b\\ool": field_values(lambda: rng.random() < 0.5),
        "u": pa.array(field_values(lambda: rng.randrange(0, 2**64)), pa.uint64()),
    }
    return pa.table(columns)


NASTY_MAPPING = PointMapping(
    measurement_column="measure",
    tags=TAG_KEYS,
    fields=tuple(FieldSpec(key) for key in FIELD_KEYS),
    time_column="time",
)


def _line_break(text: str) -> bool:
    """A newline that is not paired with the last backslash of an odd run before it."""
    run = 0
    for ch in text:
        if ch == "\n" and run % 2 == 0:
            return True
        run = run + 1 if ch == "\\" else 0
    return False


def _unwritable_in_measurement(text: str) -> bool:
    """A backslash at the end, or before a character InfluxDB 1.6.7 unescapes in a name."""
    return text.endswith("\\") or any(text[i] == "\\" and text[i + 1] in ', "=' for i in range(len(text) - 1))


def _escape(text: str, specials: str) -> str:
    return "".join("\\" + ch if ch in specials else ch for ch in text)


def _split_elsewhere(measurement: str, tags: list[tuple[str, str]], fields: dict) -> bool:
    """Whether `_split_lines` cuts the point's line (followed by another) anywhere but at its
    own end. Numbers and booleans are written as 0: the splitter only sees strings in fields."""
    series = _escape(measurement, ", ") + "".join(
        f",{_escape(k, ',= ')}={_escape(v, ',= ')}" for k, v in tags
    )
    values = [
        _escape(key, ",= ")
        + "="
        + ('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if isinstance(value, str) else "0")
        for key, value in fields.items()
    ]
    line = f"{series} {','.join(values)} 0\n"
    return _split_lines(line + "m f=0 0\n")[0] != line


def _expected_point(
    row: dict, field_keys: tuple[str, ...] = FIELD_KEYS, tag_keys: tuple[str, ...] = TAG_KEYS
):
    """The point the rules promise for a row, or None when the row must be dropped."""
    stamp, measurement = row["time"], row["measure"]
    if stamp is None or not MIN_TIME_NS <= stamp <= MAX_TIME_NS:
        return None
    if not measurement or measurement[0] in "#\t\x00" or "\r" in measurement:
        return None
    tags = [(key, row[key]) for key in tag_keys if row[key]]
    series = [measurement] + [value for _, value in tags]
    if any(map(_line_break, series)):
        return None
    if _unwritable_in_measurement(measurement) or any(value.endswith("\\") for value in series[1:]):
        return None
    fields = {}
    for key in field_keys:
        value = row[key]
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        fields[key] = ("u", value) if key == "u" else value
    if not fields or _split_elsewhere(measurement, tags, fields):
        return None
    return (measurement, tags, fields, stamp)


def _rows(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    stamps = table.column("time").cast(pa.int64()).to_pylist()
    for row, stamp in zip(rows, stamps, strict=True):
        row["time"] = stamp
    return rows


@pytest.mark.parametrize("tag_keys", [TAG_KEYS, BACKSLASH_TAG_KEYS])
def test_random_nasty_rows_round_trip_through_a_reference_parser(tag_keys):
    table = _random_rows(seed=20240611, n=600, tag_keys=tag_keys)
    mapping = dataclasses.replace(NASTY_MAPPING, tags=tag_keys)
    data, report = encode_batch(table, mapping)
    expected = [p for row in _rows(table) if (p := _expected_point(row, tag_keys=tag_keys)) is not None]
    parsed = parse_line_protocol(data)
    assert len(parsed) == len(expected) == report.lines_out
    for got, want in zip(parsed, expected, strict=True):
        assert got[:2] == want[:2] and got[3] == want[3]
        assert got[2].keys() == want[2].keys()
        for key, value in want[2].items():
            if isinstance(value, float):
                assert struct.pack("<d", got[2][key]) == struct.pack("<d", value)
            else:
                assert got[2][key] == value
    assert report.rows_in == report.lines_out + report.rows_dropped
    # The seed must reach every kind of loss, or the test proves less than it claims.
    assert report.rows_without_time and report.rows_with_time_out_of_range
    assert report.rows_with_unusable_measurement and report.rows_without_fields
    assert report.rows_with_newline_in_tag and report.rows_with_unwritable_backslash
    assert report.rows_with_misread_line_end and report.empty_tags and report.non_finite_values


def _client_line(row: dict) -> str:
    point = Point(row["measure"])
    for key in TAG_KEYS:
        if row[key] is not None:
            point.tag(key, row[key])
    for key in FIELD_KEYS:
        if key != "u" and row[key] is not None:
            point.field(key, row[key])
    point.time(row["time"], WritePrecision.NS)
    return point.to_line_protocol()


def test_same_points_as_influxdb_client_where_both_are_defined():
    table = _random_rows(seed=7, n=2000)
    # influxdb-client's Point writes uint64 only through from_dict(field_types=...); leave it out.
    field_keys = tuple(key for key in FIELD_KEYS if key != "u")
    mapping = PointMapping(
        measurement_column="measure",
        tags=TAG_KEYS,
        fields=tuple(FieldSpec(key) for key in field_keys),
        time_column="time",
    )
    ours = iter(parse_line_protocol(encode_batch(table, mapping)[0]))
    compared = 0
    for row in _rows(table):
        if _expected_point(row, field_keys) is None:
            continue
        mine = next(ours)
        series = [row["measure"]] + [row[key] or "" for key in TAG_KEYS]
        if any(ch in s for s in series for ch in "\t\x00\n\r"):
            continue  # the client escapes these as text (a tab as "\t"), or leaves a leading NUL
        # One line, read as a line: the client sorts the tags, which can change where the line
        # splitter would end it among others (our line was checked for that above).
        theirs = _parse_line(_client_line(row) + "\n")
        # The client sorts tags and fields by key; InfluxDB does the same on its side.
        assert (mine[0], sorted(mine[1]), mine[2], mine[3]) == theirs
        compared += 1
    assert next(ours, None) is None
    assert compared > 150


def test_where_influxdb_client_deviates_from_the_spec():
    def client(tag_value: str) -> str:
        return Point("m").tag("t", tag_value).field("v", 1.0).time(1, WritePrecision.NS).to_line_protocol()

    # A trailing backslash: the client appends a space, so InfluxDB stores "a " instead of "a\".
    assert client("a\\") == "m,t=a\\  v=1 1"
    assert parse_line_protocol(b"m,t=a\\  v=1 1\n")[0][1] == [("t", "a ")]
    # Tabs and newlines: the client writes a backslash and a letter, which InfluxDB keeps as
    # those two characters, so a tab becomes "\t" text. The spec needs no escape for a tab,
    # and has none for a newline (the encoder drops such rows instead).
    assert client("a\tb") == "m,t=a\\tb v=1 1"
    assert parse_line_protocol(b"m,t=a\\tb v=1 1\n")[0][1] == [("t", "a\\tb")]
    batch = pa.table({"time": _ts([1]), "t": ["a\tb"], "v": [1.0]})
    mapping = PointMapping(measurement="m", tags=("t",), fields=(FieldSpec("v"),), time_column="time")
    assert encode_batch(batch, mapping)[0] == b"m,t=a\tb v=1 1\n"
