"""Arrow record batches to InfluxDB line protocol, exactly, without a per-row Python loop.

One line per row: ``measurement[,tag=value...] field=value[,field=value...] time_ns``, lines
joined by ``\\n`` and the output ending with ``\\n`` when it is not empty. Every step is a
pyarrow compute kernel or a numpy operation on a whole column, but for the rare lines whose
end InfluxDB's line splitter could misread, which are checked one by one (see "The line
splitter" below).

Escaping follows the line-protocol reference: measurement names escape comma and space; tag
keys, tag values and field keys escape comma, equals sign and space (field keys also a double
quote after a backslash, see the table below); string field values are double-quoted with
backslash and double quote escaped (backslash first). Any other backslash is written as it
is. Newlines and carriage returns inside a string FIELD are kept: InfluxDB
reads a quoted string up to its closing quote.

What cannot be written exactly is left out and counted in an `EncodeReport`, never changed:

- A row is dropped when its time is NULL or outside InfluxDB's range; when its per-row
  measurement is NULL, empty, starts with ``#`` (InfluxDB would read a comment) or with a
  tab or NUL (InfluxDB skips those at the start of a line), or holds ``\\r`` (stored, but
  InfluxQL cannot name it, so the load could not be counted or deleted); when its
  measurement or a tag value holds a newline that is not right after an odd run of
  backslashes (InfluxDB ends the line there); when its measurement or a tag value has a
  backslash InfluxDB cannot store (below); when InfluxDB's line splitter would end its line
  in the wrong place (below); when its series key is too long (below); or when no field of
  the row is left.
- Series keys too long. InfluxDB refuses a line ("max key length exceeded") when its series
  key, the measurement and tags exactly as written (escaped), plus 4 bytes plus a field key
  as written, is longer than 65,535 bytes: it stores each field under that key. Such a row
  is dropped, never cut short; one long tag value would otherwise fail the whole write
  request after InfluxDB had stored the request's other lines.
- Backslashes. Found by writing each pattern to InfluxDB 1.6.7 and reading it back (SHOW
  MEASUREMENTS, SHOW TAG KEYS/VALUES, SHOW FIELD KEYS, SELECT; the proof is kept in
  tests/test_line_protocol_influxdb.py). ``k\\`` is a run of k >= 1 backslashes in the
  original text, "sent k" the run as written, "never" that no spelling reads back the same:

    original                       | tag key, tag value | measurement   | field key
    -------------------------------+--------------------+---------------+-----------------------
    ``k\\`` then ``,``, ``=``, space | sent k+1           | never (a)     | k even: k+1; odd: never
    ``k\\`` then ``"``               | sent k             | never (a)     | sent k+1 (b)
    ``k\\`` then another character   | sent k             | sent k        | sent k
    ``k\\`` at the end               | never (c)          | never (c)     | never (c)
    a newline                      | sent as it is: kept after an odd run of backslashes, else never (d)
    a carriage return or tab       | kept               | tab kept; CR stored but InfluxQL cannot name it

  (a) 1.6.7 unescapes measurement names a second time: each spelling, written alone, reads
  back with fewer backslashes, or is listed by SHOW MEASUREMENTS but found by no SELECT
  (until another spelling has been written, whose own point then reads back under no name).
  (b) It unescapes ``\\"`` in field keys, so a quote after a backslash is sent with one more.
  (c) The separator after the run counts as escaped. (d) The line splitter (``scanLine`` in
  ``models/points.go``) reads a backslash and the character after it as a pair, so only a
  newline paired with the last backslash of an odd run stays in its line. String field
  values read back exactly for every pattern, newlines included, with backslash and double
  quote escaped (``\\\\``, ``\\"``). So rows are dropped whose tag value ends in a
  backslash, or whose measurement ends in one or has one before ``,``, ``"``, space or
  ``=``, and a mapping is refused whose constant names have a backslash where the table
  says never. (influxdb-client's `Point` appends a space to a trailing backslash instead,
  which changes the value.)
- The line splitter. The tag scanner ends a value at a space or comma not right after a
  backslash, but the line splitter, reading backslash pairs, sees the space of ``c\\ d``
  (sent ``c\\\\ d``, stored exactly) as the start of the fields. From there it counts ``=``
  and ``,`` and toggles "in a string" at ``"`` while it has seen more ``=`` than ``,``, and
  it ends the line at the first newline outside a string. That is harmless when the space
  is in a tag value and the rest of the series key has no ``=`` or ``,`` for it to count
  besides each tag's own: none from a tag key or value whose odd run of backslashes before
  ``,`` or ``=`` leaves that character unpaired. Lines with such a space in a tag key, or
  with one in a value and an unpaired ``,`` or ``=`` in any tag, are rare; the encoder
  replays the splitter on each of them and drops the row when it would end the line
  anywhere but at its own newline (a string field's newline can cut it, or a stray quote
  can join it to the next line; InfluxDB then refuses both parts).
- A tag is left out of its line when its value is NULL or empty (InfluxDB rejects empty tag
  values). A field is left out when its value is NULL, NaN or ±Inf, a string longer than
  65,535 bytes, or a date or time outside what InfluxDB can hold.

Field values by Arrow type (or by `FieldSpec.kind` when set):

- float64: the shortest decimal that reads back as the same double (Arrow's cast, checked to
  round-trip), e.g. ``0.30000000000000004``, ``1e-310``, ``-0``; whole numbers have no
  ``.0`` (``3``), which line protocol reads as a float, as influxdb-client writes them.
  float32 values are written as their shortest float32 text (``0.1`` for 0.1f), the text
  the source shows; the double InfluxDB stores rounds back to the same float32.
- decimal128/decimal256: a float, the double nearest the exact decimal (Arrow's own
  decimal-to-double cast is not correctly rounded, so the conversion goes through the exact
  decimal text). Values whose float does not read back as the same decimal (more than 15
  significant digits) are written anyway and counted in `inexact_decimals`; use
  ``kind="string"`` to keep the exact digits as a string field instead.
- int8..int64, uint8..uint32: ``123i``; uint64: ``123u`` (InfluxDB 1.x rejects ``u``: use
  ``kind="integer"`` for it, which raises on values above 2**63-1).
- bool: ``true``/``false``. string: quoted as above.
- timestamp fields: integer nanoseconds ``…i`` (`PointMapping.timestamp_fields` =
  ``"integer"``) or an RFC3339 UTC string (``"string"``; naive timestamps are taken as UTC).
  date and time fields: their ISO text as a string field.

The time column is any Arrow timestamp (any unit, naive or tz-aware; naive is taken as UTC),
written as integer nanoseconds since the epoch. InfluxDB's range is -9223372036854775806 ..
9223372036854775806 ns (1677-09-21T00:12:43.145224194Z .. 2262-04-11T23:47:16.854775806Z);
coarser units are range-checked before they are scaled, so nothing overflows.

Tags are written in the order given; InfluxDB sorts them itself, and sorted input saves it
that work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blocks.influxdb import MAX_TIME_NS, MIN_TIME_NS
from blocks.timeunits import NS_PER_SECOND, NS_PER_UNIT

FieldKind = Literal["float", "integer", "unsigned", "string", "boolean"]

MAX_STRING_BYTES = 65535
# InfluxDB's limit on a stored key: series key + "#!~#" + field key, as written (models/points.go).
MAX_KEY_BYTES = 65535
_FIELD_KEY_SEPARATOR_BYTES = len("#!~#")

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# RFC3339 has four-digit years: 0000-01-01T00:00:00Z .. 9999-12-31T23:59:59Z, in seconds.
_RFC3339_MIN_S = -62167219200
_RFC3339_MAX_S = 253402300799
RFC3339_MIN_DAY = _RFC3339_MIN_S // 86400
RFC3339_MAX_DAY = _RFC3339_MAX_S // 86400
_RESERVED_KEYS = frozenset({"time", "_field", "_measurement"})
# At the start of a line InfluxDB reads "#" as a comment and skips tabs and NULs.
_LINE_START_SKIPPED = "#\t\x00"


_LS = pa.large_string()
_NULL_TEXT = pa.scalar(None, _LS)
_EMPTY = pa.scalar("", _LS)
_MEASUREMENT_SPECIALS = "[, ]"
_KEY_SPECIALS = "[,= ]"
_STRING_SPECIALS = r'["\\]'
# Patterns on the original text (RE2, as pyarrow runs them, and Python's re alike). An odd run
# of backslashes starts at the beginning or after a character that is not a backslash.
_ODD_RUN = r"(?:^|[^\\])(?:\\\\)*\\"
_TRAILING_BACKSLASH = r"\\$"
# Where the table in the module docstring says "never".
_UNWRITABLE_IN_MEASUREMENT = r'\\$|\\[, "=]'
_UNWRITABLE_IN_FIELD_KEY = r"\\$|" + _ODD_RUN + "[,= ]"
# A newline the line splitter ends the line at: one not paired with an odd run's last backslash.
_LINE_BREAK = r"(?:^|[^\\])(?:\\\\)*\n"
# Written with a backslash more, these leave the space, comma or equals sign unpaired for the
# line splitter (see "The line splitter" in the module docstring).
_UNPAIRED_SPACE = _ODD_RUN + " "
_UNPAIRED_SEPARATOR = _ODD_RUN + "[,=]"
# The line splitter's tokens: a backslash pair, or a character it acts on.
_SPLITTER_TOKENS = re.compile(r'\\.|[ =,"\n]', re.DOTALL)

_BACKSLASH_BEFORE_MATCH = "\\\\\\0"  # RE2 replacement: a literal backslash, then the match


def _lit(text: str) -> pa.Scalar:
    return pa.scalar(text, _LS)


def _escape_name(name: str, specials: str) -> str:
    for ch in specials.strip("[]"):
        name = name.replace(ch, "\\" + ch)
    return name


def _escape_field_key(key: str) -> str:
    # InfluxDB unescapes \" in field keys, so a double quote after a backslash takes one more.
    return re.sub(r'(?<=\\)"', r'\\"', _escape_name(key, _KEY_SPECIALS))


@dataclass(frozen=True)
class FieldSpec:
    """One field: a column, the field key it is written under, and optionally its kind."""

    column: str
    key: str | None = None
    kind: FieldKind | None = None

    @property
    def field_key(self) -> str:
        return self.column if self.key is None else self.key


@dataclass(frozen=True)
class PointMapping:
    """How columns become points. Raises ValueError at construction when no line could ever
    be valid: no or two measurement sources, no fields, an empty or reserved key (``time``,
    ``_field``, ``_measurement``), a name holding a carriage return or a newline that is not
    right after an odd run of backslashes, a name with a backslash where InfluxDB cannot
    store it (the table in the module docstring), a constant measurement starting with
    ``#``, a tab or NUL, or a key used twice among tags and fields."""

    fields: tuple[FieldSpec, ...]
    time_column: str
    tags: tuple[str, ...] = ()
    measurement: str | None = None
    measurement_column: str | None = None
    timestamp_fields: Literal["integer", "string"] = "integer"

    def __post_init__(self) -> None:
        if (self.measurement is None) == (self.measurement_column is None):
            raise ValueError("give exactly one of measurement and measurement_column")
        if self.measurement is not None:
            _check_name(self.measurement, "measurement", _UNWRITABLE_IN_MEASUREMENT)
            if self.measurement[0] in _LINE_START_SKIPPED:
                raise ValueError(
                    f"measurement {self.measurement!r} starts with {self.measurement[0]!r}, which InfluxDB "
                    "reads as a comment (#) or skips (tab, NUL)"
                )
        if not self.fields:
            raise ValueError("a point needs at least one field")
        if self.timestamp_fields not in ("integer", "string"):
            raise ValueError(f"timestamp_fields must be 'integer' or 'string', not {self.timestamp_fields!r}")
        for tag in self.tags:
            _check_name(tag, "tag key", _TRAILING_BACKSLASH)
        for spec in self.fields:
            _check_name(spec.field_key, "field key", _UNWRITABLE_IN_FIELD_KEY)
        keys = list(self.tags) + [spec.field_key for spec in self.fields]
        for key in keys:
            if key in _RESERVED_KEYS:
                raise ValueError(f"{key!r} is reserved by InfluxDB and cannot be a tag or field key")
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"keys used more than once among tags and fields: {duplicates}")
        for spec in self.fields:
            if spec.kind not in (None, "float", "integer", "unsigned", "string", "boolean"):
                raise ValueError(f"field {spec.field_key!r}: unknown kind {spec.kind!r}")


def _check_name(name: str, what: str, unwritable: str) -> None:
    if not name:
        raise ValueError(f"{what} must not be empty")
    if re.search(_LINE_BREAK, name):
        raise ValueError(f"{what} {name!r} holds a newline, which would end the line")
    if "\r" in name:
        raise ValueError(f"{what} {name!r} holds a carriage return, which InfluxQL cannot name")
    if re.search(unwritable, name):
        raise ValueError(
            f"{what} {name!r} has a backslash where InfluxDB cannot store it: at its end"
            + {
                "measurement": ', or before , " space or =',
                "field key": ", or an odd run of them before , = or space",
            }.get(what, "")
        )


@dataclass
class EncodeReport:
    """What one `encode_batch` call wrote and what it had to leave out.

    Each dropped row is counted once, under the first of these reasons that applies, in this
    order: no time, time out of range, unusable measurement (NULL, empty, starting with
    ``#``, a tab or NUL, or holding a carriage return), a newline InfluxDB would end the line
    at in the measurement or a tag value, a backslash InfluxDB cannot store in the
    measurement or a tag value, series key too long (with a field key the row carries, over
    `MAX_KEY_BYTES`), no fields left, a line InfluxDB's line splitter would end in the wrong
    place (the module docstring has the details). So
    ``rows_in == lines_out + rows_dropped``. The dicts map a tag or field key to a count and
    hold only keys with a count above zero.
    """

    rows_in: int = 0
    lines_out: int = 0
    rows_without_time: int = 0
    rows_with_time_out_of_range: int = 0
    rows_with_unusable_measurement: int = 0
    rows_with_newline_in_tag: int = 0
    rows_with_unwritable_backslash: int = 0
    rows_with_oversized_key: int = 0
    rows_without_fields: int = 0
    rows_with_misread_line_end: int = 0
    empty_tags: dict[str, int] = field(default_factory=dict)
    non_finite_values: dict[str, int] = field(default_factory=dict)
    oversized_strings: dict[str, int] = field(default_factory=dict)
    out_of_range_values: dict[str, int] = field(default_factory=dict)
    inexact_decimals: dict[str, int] = field(default_factory=dict)

    @property
    def rows_dropped(self) -> int:
        return (
            self.rows_without_time
            + self.rows_with_time_out_of_range
            + self.rows_with_unusable_measurement
            + self.rows_with_newline_in_tag
            + self.rows_with_unwritable_backslash
            + self.rows_with_oversized_key
            + self.rows_without_fields
            + self.rows_with_misread_line_end
        )

    def __add__(self, other: EncodeReport) -> EncodeReport:
        """The report of two batches together."""

        def added(a: int | dict[str, int], b: int | dict[str, int]) -> int | dict[str, int]:
            if isinstance(a, int):
                return a + b
            out = dict(a)
            for key, count in b.items():
                out[key] = out.get(key, 0) + count
            return out

        return EncodeReport(
            **{f.name: added(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)}
        )

    def problems(self) -> list[str]:
        """One human-readable line per kind of loss; empty when every value was written exactly."""
        lines = []
        row_reasons = [
            (self.rows_without_time, "the time is NULL"),
            (
                self.rows_with_time_out_of_range,
                "the time is outside InfluxDB's range "
                "(1677-09-21T00:12:43.145224194Z .. 2262-04-11T23:47:16.854775806Z)",
            ),
            (
                self.rows_with_unusable_measurement,
                "the measurement is NULL, empty, or starts with '#', a tab or NUL (InfluxDB would misread "
                "it), or holds a carriage return (InfluxQL cannot name it)",
            ),
            (
                self.rows_with_newline_in_tag,
                "the measurement or a tag value holds a newline, which ends the line unless it follows "
                "an odd run of backslashes",
            ),
            (
                self.rows_with_unwritable_backslash,
                "the measurement or a tag value has a backslash InfluxDB cannot store "
                '(at the end; in a measurement also before , " space or =)',
            ),
            (
                self.rows_with_oversized_key,
                "the series key (measurement and tags as written) with a field key is longer than "
                f"InfluxDB's {MAX_KEY_BYTES}-byte key limit",
            ),
            (self.rows_without_fields, "no field value is left (all NULL or left out)"),
            (
                self.rows_with_misread_line_end,
                "InfluxDB's line splitter would end the line in the wrong place (a tag with an odd run "
                "of backslashes before a space, then one before , or = later in the line)",
            ),
        ]
        for count, why in row_reasons:
            if count:
                lines.append(f"{count} row(s) dropped: {why}")
        value_reasons = [
            (self.empty_tags, "tag", "empty value(s) left out (InfluxDB rejects empty tag values)"),
            (self.non_finite_values, "field", "NaN/Inf value(s) left out (line protocol cannot carry them)"),
            (
                self.oversized_strings,
                "field",
                f"string value(s) longer than {MAX_STRING_BYTES} bytes left out",
            ),
            (self.out_of_range_values, "field", "date/time value(s) outside the writable range left out"),
            (
                self.inexact_decimals,
                "field",
                "decimal value(s) written as the nearest float, which reads back as a different number",
            ),
        ]
        for counts, what, why in value_reasons:
            for key, count in sorted(counts.items()):
                lines.append(f"{what} {key!r}: {count} {why}")
        return lines


def encode_batch(batch: pa.RecordBatch | pa.Table, mapping: PointMapping) -> tuple[bytes, EncodeReport]:
    """The batch as line protocol (one line per written row, in row order) and its report.

    Raises ValueError when a mapped column is missing or when a value cannot take the kind a
    `FieldSpec` asks for (a negative number as ``"unsigned"``, a uint64 above 2**63-1 as
    ``"integer"``), and TypeError when a column's Arrow type has no line-protocol form (the
    time column must be a timestamp; tags must be strings, integers or booleans; binary,
    nested and duration fields are refused).
    """
    lines, dropped, report = _encode(batch, mapping, text=True)
    if dropped.any():
        lines = lines.filter(pa.array(~dropped))
    report.lines_out = len(lines)
    return _concatenated(lines), report


def rows_written(batch: pa.RecordBatch | pa.Table, mapping: PointMapping) -> np.ndarray:
    """Which rows of the batch `encode_batch` writes as points (True) and which it leaves out
    (False), decided by the same code but without building the lines (but for the rare rows
    whose line end it replays). Raises as `encode_batch` does."""
    return ~_encode(batch, mapping, text=False)[1]


def _encode(
    batch: pa.RecordBatch | pa.Table, mapping: PointMapping, *, text: bool
) -> tuple[pa.Array | None, np.ndarray, EncodeReport]:
    """Each row's line (large_string, one per row; None unless `text`), the mask of rows left
    out, and the report but for `lines_out`."""
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks()
    missing = [
        name
        for name in (
            mapping.time_column,
            *([mapping.measurement_column] if mapping.measurement_column else []),
            *mapping.tags,
            *(spec.column for spec in mapping.fields),
        )
        if name not in batch.schema.names
    ]
    if missing:
        raise ValueError(f"columns missing from the batch: {sorted(set(missing))}")
    n = batch.num_rows
    report = EncodeReport(rows_in=n)
    if n == 0:
        return pa.array([], _LS), np.zeros(0, dtype=bool), report

    def column(name: str) -> pa.Array:
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = pa.concat_arrays(col.chunks) if col.num_chunks != 1 else col.chunk(0)
        return col

    dropped = np.zeros(n, dtype=bool)

    def drop(mask: np.ndarray) -> int:
        new = mask & ~dropped
        dropped[:] |= new
        return int(new.sum())

    time_text, time_null, time_out = _time_column(column(mapping.time_column))
    report.rows_without_time = drop(time_null)
    report.rows_with_time_out_of_range = drop(time_out)

    if mapping.measurement_column is not None:
        meas = _series_text(column(mapping.measurement_column), mapping.measurement_column, measurement=True)
        report.rows_with_unusable_measurement = drop(meas.null_or_empty | meas.unusable)
        line_break, backslash = meas.line_break, meas.unwritable_backslash
        measurement: pa.Array | pa.Scalar = meas.escaped
    else:
        line_break, backslash = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        measurement = _lit(_escape_name(mapping.measurement, _MEASUREMENT_SPECIALS))

    tag_pieces = []
    # Rows whose series key the line splitter reads differently from the tag scanner.
    unpaired_space = np.zeros(n, dtype=bool)
    unpaired_separator = np.zeros(n, dtype=bool)
    for tag in mapping.tags:
        values = _series_text(column(tag), tag, measurement=False)
        empties = int(values.empty.sum())
        if empties:
            report.empty_tags[tag] = empties
        line_break |= values.line_break
        backslash |= values.unwritable_backslash
        unpaired_space |= values.unpaired_space
        unpaired_separator |= values.unpaired_separator
        if re.search(_UNPAIRED_SPACE, tag):
            # Then the "=" after the key counts for the splitter like an unpaired one.
            unpaired_space |= ~values.null_or_empty
            unpaired_separator |= ~values.null_or_empty
        if re.search(_UNPAIRED_SEPARATOR, tag):
            unpaired_separator |= ~values.null_or_empty
        prefix = _lit("," + _escape_name(tag, _KEY_SPECIALS) + "=")
        tag_pieces.append(pc.binary_join_element_wise(prefix, values.escaped, _EMPTY))
    report.rows_with_newline_in_tag = drop(line_break)
    report.rows_with_unwritable_backslash = drop(backslash)

    field_pieces = []
    present = np.zeros(n, dtype=np.int64)
    longest_key = np.zeros(n, dtype=np.int64)  # bytes of the longest field key each row carries
    for spec in mapping.fields:
        piece = _field_piece(column(spec.column), spec, mapping.timestamp_fields, report)
        field_pieces.append(piece)
        valid = np.asarray(piece.is_valid())
        present += valid
        key_bytes = len(_escape_field_key(spec.field_key).encode())
        np.maximum(longest_key, np.where(valid, key_bytes, 0), out=longest_key)

    # Arrow's "skip" join leaves out rows whose inputs are all NULL instead of returning ""
    # (so the output is shorter than the input; narwhals issue #3965). Each join below gets
    # an input that is non-NULL wherever all the others are NULL, which adds nothing.
    tags_joined = (
        pc.binary_join_element_wise(_EMPTY, *tag_pieces, _EMPTY, null_handling="skip")
        if tag_pieces
        else _EMPTY
    )
    series_key_bytes = _series_key_bytes(measurement, tags_joined, n)
    oversized_key = (present > 0) & (
        series_key_bytes + _FIELD_KEY_SEPARATOR_BYTES + longest_key > MAX_KEY_BYTES
    )
    report.rows_with_oversized_key = drop(oversized_key)
    report.rows_without_fields = drop(present == 0)
    no_fields_guard = pc.if_else(pa.array(present == 0), _EMPTY, _NULL_TEXT)

    def joined_lines(rows: np.ndarray | None) -> pa.Array:
        """The lines of `rows` (a mask; None: every row), in row order."""

        def pick(values: pa.Array | pa.Scalar) -> pa.Array | pa.Scalar:
            return values if rows is None or isinstance(values, pa.Scalar) else values.filter(pa.array(rows))

        fields_joined = pc.binary_join_element_wise(
            *map(pick, field_pieces), pick(no_fields_guard), _lit(","), null_handling="skip"
        )
        lines = pc.binary_join_element_wise(
            pick(measurement),
            pick(tags_joined),
            _lit(" "),
            fields_joined,
            _lit(" "),
            pick(time_text),
            _lit("\n"),
            _EMPTY,
        )
        m = n if rows is None else int(rows.sum())
        if len(lines) != m or len(fields_joined) != m:
            raise RuntimeError("pyarrow's binary_join_element_wise changed the number of rows")
        return lines

    if tag_pieces and len(tags_joined) != n:
        raise RuntimeError("pyarrow's binary_join_element_wise changed the number of rows")
    lines = joined_lines(None) if text else None
    # Only lines with an unpaired space and an unpaired separator in their series key can be
    # split wrongly (module docstring, "The line splitter"); they are rare, so each is
    # replayed in Python, here and nowhere else.
    replay = unpaired_space & unpaired_separator & ~dropped
    if replay.any():
        replayed = lines.filter(pa.array(replay)) if lines is not None else joined_lines(replay)
        misread = np.zeros(n, dtype=bool)
        misread[replay] = [_splitter_misreads(line) for line in replayed.to_pylist()]
        report.rows_with_misread_line_end = drop(misread)
    return lines, dropped, report


def _series_key_bytes(
    measurement: pa.Array | pa.Scalar, tags_joined: pa.Array | pa.Scalar, n: int
) -> np.ndarray:
    """Bytes of each row's series key as written: the escaped measurement and its tags."""

    def lengths(text: pa.Array | pa.Scalar) -> np.ndarray:
        if isinstance(text, pa.Scalar):
            return np.full(n, len(text.as_py().encode()), dtype=np.int64)
        return np.asarray(pc.binary_length(text).fill_null(0), dtype=np.int64)

    return lengths(measurement) + lengths(tags_joined)


def _concatenated(lines: pa.Array) -> bytes:
    """The values of a large_string array back to back, straight from its data buffer."""
    if len(lines) == 0:
        return b""
    _, offsets_buf, data_buf = lines.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    return bytes(memoryview(data_buf)[int(offsets[0]) : int(offsets[-1])])


def _bools(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.fill_null(False), dtype=bool)


def _time_column(arr: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Integer-nanosecond text of a timestamp column, with its NULL and out-of-range masks."""
    if not pa.types.is_timestamp(arr.type):
        raise TypeError(f"the time column must be an Arrow timestamp, not {arr.type}")
    null = ~np.asarray(arr.is_valid())
    ns, out = to_nanoseconds(arr, MIN_TIME_NS, MAX_TIME_NS)
    return pc.cast(pa.array(ns), _LS), null, out & ~null


def to_nanoseconds(arr: pa.Array, lowest: int, highest: int) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds since the epoch (0 where NULL or out of range) and the out-of-range mask.

    The range is checked in the column's own unit, before scaling, so scaling cannot overflow.
    """
    per_unit = NS_PER_UNIT[arr.type.unit]
    raw = np.asarray(arr.cast(pa.int64()).fill_null(0))
    low, high = -((-lowest) // per_unit), highest // per_unit
    inside = (raw >= low) & (raw <= high)
    ns = np.where(inside, raw, 0) * np.int64(per_unit)
    return ns, ~inside & np.asarray(arr.is_valid())


@dataclass
class _SeriesText:
    escaped: pa.Array  # large_string, NULL where the value is NULL or empty
    null_or_empty: np.ndarray
    empty: np.ndarray
    line_break: np.ndarray  # a newline the line splitter would end the line at
    unwritable_backslash: np.ndarray
    unusable: np.ndarray  # measurements: starts with "#", a tab or NUL, or holds a CR
    unpaired_space: np.ndarray  # tags: see "The line splitter" in the module docstring
    unpaired_separator: np.ndarray


def _series_text(arr: pa.Array, name: str, *, measurement: bool) -> _SeriesText:
    """Escaped text and problem masks for a measurement or tag value column.

    The work is done once per distinct value (on the column's dictionary), then spread to the
    rows, since measurements and tag values repeat.
    """
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    values, indices = arr.dictionary, arr.indices
    if (
        pa.types.is_string(values.type)
        or pa.types.is_large_string(values.type)
        or pa.types.is_string_view(values.type)
    ):
        values = values.cast(_LS)
    elif pa.types.is_integer(values.type) or pa.types.is_boolean(values.type):
        values = pc.cast(values, _LS)
    else:
        raise TypeError(
            f"column {name!r} ({arr.type}) cannot be a tag or measurement: use strings, integers or booleans"
        )
    empty = pc.equal(pc.binary_length(values), 0)
    specials = _MEASUREMENT_SPECIALS if measurement else _KEY_SPECIALS
    escaped = pc.replace_substring_regex(values, specials, _BACKSLASH_BEFORE_MATCH)
    escaped = pc.if_else(empty, _NULL_TEXT, escaped)
    n = len(indices)

    def per_row(mask: pa.Array) -> np.ndarray:
        return _bools(mask.take(indices))

    def matching(pattern: str) -> np.ndarray:
        return per_row(pc.match_substring_regex(values, pattern))

    null = ~np.asarray(indices.is_valid())
    empty_rows = per_row(empty)
    nothing = np.zeros(n, dtype=bool)
    # Most columns hold no backslash at all; then only newlines need looking at.
    backslashes = pc.any(pc.match_substring(values, "\\")).as_py()
    if backslashes:
        line_break = matching(_LINE_BREAK)
        unwritable = matching(_UNWRITABLE_IN_MEASUREMENT if measurement else _TRAILING_BACKSLASH)
    else:
        line_break, unwritable = per_row(pc.match_substring(values, "\n")), nothing
    tag_backslashes = backslashes and not measurement
    return _SeriesText(
        escaped=escaped.take(indices),
        null_or_empty=null | empty_rows,
        empty=empty_rows,
        line_break=line_break,
        unwritable_backslash=unwritable,
        unusable=matching("^[#\t\x00]|\r") if measurement else nothing,
        unpaired_space=matching(_UNPAIRED_SPACE) if tag_backslashes else nothing,
        unpaired_separator=matching(_UNPAIRED_SEPARATOR) if tag_backslashes else nothing,
    )


def _splitter_misreads(line: str) -> bool:
    """True unless InfluxDB's line splitter, started at the beginning of `line` (one line as
    written, ending in its newline), ends the line exactly at that newline.

    A replay of ``scanLine`` in ``models/points.go`` (1.x and 2.x), on its tokens only.
    """
    fields_started = quoted = False
    equals = commas = 0
    for token in _SPLITTER_TOKENS.finditer(line):
        char = token.group()
        if char[0] == "\\":
            continue
        if char == " ":
            fields_started = True
        elif fields_started and not quoted and char == "=":
            equals += 1
        elif fields_started and not quoted and char == ",":
            commas += 1
        elif fields_started and char == '"' and equals > commas:
            quoted = not quoted
        elif char == "\n" and not quoted:
            return token.end() != len(line)
    return True


def field_kind(arr_type: pa.DataType, timestamp_fields: str) -> FieldKind:
    """The field type a column of `arr_type` is written as when its `FieldSpec` names no kind
    (the table in the module docstring); TypeError for a type line protocol cannot carry."""
    if pa.types.is_floating(arr_type) or pa.types.is_decimal(arr_type):
        return "float"
    if pa.types.is_uint64(arr_type):
        return "unsigned"
    if pa.types.is_integer(arr_type):
        return "integer"
    if pa.types.is_boolean(arr_type):
        return "boolean"
    if pa.types.is_timestamp(arr_type):
        return "integer" if timestamp_fields == "integer" else "string"
    if (
        pa.types.is_string(arr_type)
        or pa.types.is_large_string(arr_type)
        or pa.types.is_string_view(arr_type)
        or pa.types.is_date(arr_type)
        or pa.types.is_time(arr_type)
        or pa.types.is_null(arr_type)
    ):
        return "string"
    raise TypeError(f"no line-protocol field type for Arrow type {arr_type}")


def _field_piece(arr: pa.Array, spec: FieldSpec, timestamp_fields: str, report: EncodeReport) -> pa.Array:
    """``key=value`` text per row (large_string), NULL where the field is left out."""
    key = spec.field_key
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = spec.kind or field_kind(arr.type, timestamp_fields)
    prefix = _lit(_escape_field_key(key) + "=")
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), _LS)

    def count(counts: dict[str, int], mask: np.ndarray) -> None:
        hits = int(mask.sum())
        if hits:
            counts[key] = counts.get(key, 0) + hits

    def cast(target: pa.DataType) -> pa.Array:
        try:
            return pc.cast(arr, target)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"field {key!r}: a value does not fit kind {kind!r}: {exc}") from exc

    def refuse() -> None:
        raise TypeError(f"field {key!r}: Arrow type {t} cannot be written as kind {kind!r}")

    if kind == "float":
        if pa.types.is_decimal(t):
            text = _decimal_as_float_text(arr, key, report)
        elif pa.types.is_floating(t):
            values = arr.cast(pa.float32()) if pa.types.is_float16(t) else arr
            finite = pc.is_finite(values)
            count(report.non_finite_values, ~_bools(finite) & np.asarray(values.is_valid()))
            text = pc.if_else(finite, pc.cast(values, _LS), _NULL_TEXT)
        elif pa.types.is_integer(t):
            # int -> double is correctly rounded (round to nearest even), like InfluxDB's parser.
            text = pc.cast(pc.cast(arr, pa.float64(), safe=False), _LS)
        else:
            refuse()
        return pc.binary_join_element_wise(prefix, text, _EMPTY)
    if kind in ("integer", "unsigned"):
        suffix = _lit("i" if kind == "integer" else "u")
        if pa.types.is_timestamp(t):
            if kind == "unsigned":
                refuse()
            ns, out = to_nanoseconds(arr, _INT64_MIN, _INT64_MAX)
            count(report.out_of_range_values, out)
            text = pc.cast(pa.array(ns, mask=out | ~np.asarray(arr.is_valid())), _LS)
        elif pa.types.is_integer(t):
            text = pc.cast(cast(pa.int64() if kind == "integer" else pa.uint64()), _LS)
        else:
            refuse()
        return pc.binary_join_element_wise(prefix, text, suffix, _EMPTY)
    if kind == "boolean":
        if not pa.types.is_boolean(t):
            refuse()
        return pc.binary_join_element_wise(prefix, pc.if_else(arr, _lit("true"), _lit("false")), _EMPTY)
    # kind == "string"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        text = arr.cast(_LS)
    elif pa.types.is_timestamp(t):
        text = rfc3339_texts(arr, key, report)
    elif pa.types.is_date(t):
        days = np.asarray(arr.cast(pa.date32()).cast(pa.int32()).fill_null(0))
        out = ((days < RFC3339_MIN_DAY) | (days > RFC3339_MAX_DAY)) & np.asarray(arr.is_valid())
        count(report.out_of_range_values, out)
        text = pc.cast(pc.if_else(pa.array(out), pa.scalar(None, t), arr), _LS)
    elif (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_boolean(t)
        or pa.types.is_time(t)
    ):
        text = pc.cast(arr, _LS)
    else:
        refuse()
    oversized = pc.greater(pc.binary_length(text), MAX_STRING_BYTES)
    count(report.oversized_strings, _bools(oversized))
    if pc.any(pc.match_substring_regex(text, _STRING_SPECIALS)).as_py():
        text = pc.replace_substring_regex(text, _STRING_SPECIALS, _BACKSLASH_BEFORE_MATCH)
    text = pc.if_else(oversized, _NULL_TEXT, text)
    return pc.binary_join_element_wise(prefix, _lit('"'), text, _lit('"'), _EMPTY)


def rfc3339_texts(arr: pa.Array, key: str, report: EncodeReport) -> pa.Array:
    """RFC3339 UTC text (``2024-01-31T12:00:00.123456Z``, as many fraction digits as the unit),
    NULL for years outside 0000..9999, which RFC3339 cannot write."""
    per_unit = NS_PER_UNIT[arr.type.unit]
    per_second = NS_PER_SECOND // per_unit
    raw = np.asarray(arr.cast(pa.int64()).fill_null(0))
    out = ((raw < _RFC3339_MIN_S * per_second) | (raw > (_RFC3339_MAX_S + 1) * per_second - 1)) & np.asarray(
        arr.is_valid()
    )
    if out.any():
        report.out_of_range_values[key] = report.out_of_range_values.get(key, 0) + int(out.sum())
    utc = pa.array(np.where(out, 0, raw), pa.int64(), mask=~np.asarray(arr.is_valid()) | out).cast(
        pa.timestamp(arr.type.unit, "UTC")
    )
    return pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ").cast(_LS)


def _decimal_as_float_text(arr: pa.Array, key: str, report: EncodeReport) -> pa.Array:
    """Shortest text of the double nearest each decimal, counting those that read back changed.

    The exact decimal text is parsed to a double (correctly rounded, unlike Arrow's direct
    decimal-to-double cast). A decimal with at most 15 significant digits always reads back
    unchanged; for wider types the float's text is compared with the decimal as a decimal one
    digit finer than the column's scale, which holds every such text exactly.
    """
    t = arr.type
    if t.precision > 74:
        raise TypeError(
            f"field {key!r}: decimals wider than 74 digits cannot be checked as floats; use kind='string'"
        )
    shortest = pc.cast(pc.cast(pc.cast(arr, _LS), pa.float64()), _LS)
    if t.precision > 15:
        finer = pa.decimal256(t.precision + 2, t.scale + 1)
        changed = pc.not_equal(pc.cast(shortest, finer), pc.cast(arr, finer))
        hits = int(pc.sum(changed).as_py() or 0)
        if hits:
            report.inexact_decimals[key] = report.inexact_decimals.get(key, 0) + hits
    return shortest
