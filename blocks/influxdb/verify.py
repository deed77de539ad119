"""Content verification of points: the staged rows and what InfluxDB holds, in one canonical
form, compared point by point (`blocks.diff`).

The canonical point table has one row per point and these columns (each Arrow field carries
its role in the metadata key ``point``):

- ``_measurement`` (large_string). InfluxDB reserves the key, so no tag or field has the name;
- one column per tag key, named as the key (large_string; NULL where the point has no such
  tag: InfluxDB stores no empty tag value, so empty and absent are the same);
- ``time`` (int64): nanoseconds since the epoch, the precision the target writes and reads;
- one column per field key, named as the key (large_string): the value in the form line
  protocol gives it, which carries the field type: ``1.5`` (float, the shortest text that
  reads back as the same double, so two texts are equal exactly when the doubles' bits are),
  ``12i`` (integer), ``12u`` (unsigned), ``true``/``false`` (boolean) and ``"text"`` (string,
  unescaped between the quotes). NULL where the point has no value for the field.

`expected_points` maps staged rows the way the encoder (`line_protocol`) does: the same
`PointMapping`, field kinds (`field_kind`) and rows left out (`rows_written`, the encoder's own
decision), but each value is computed from its column directly, never from line-protocol text,
so a fault in the encoder's text shows. `readback.points_from_results` builds the same table from the
answers of ``SELECT *::field ... GROUP BY *``, typed by ``SHOW FIELD KEYS`` (`readback`). `compare_points`
diffs two such tables keyed by measurement, tag set and time, and names the first difference:
the field or tag, one point, and both values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blocks.diff import Diff, diff_tables
from blocks.errors import ValidationFailed
from blocks.influxdb.influxql import rfc3339_ns
from blocks.influxdb.line_protocol import (
    MAX_STRING_BYTES,
    RFC3339_MAX_DAY,
    RFC3339_MIN_DAY,
    EncodeReport,
    field_kind,
    rfc3339_texts,
    rows_written,
    to_nanoseconds,
)
from blocks.timeunits import NS_PER_UNIT

if TYPE_CHECKING:  # the mapping module reads the config's models, which name this package
    from blocks.influxdb.mapping import PointsPlan

MEASUREMENT = "_measurement"
TIME = "time"
ROLE = b"point"  # the field metadata key holding a column's role
TEXT = pa.large_string()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NULL = pa.scalar(None, TEXT)
_NOTHING = pa.scalar("", TEXT)
_QUOTE = pa.scalar('"', TEXT)
_TRUE, _FALSE = pa.scalar("true", TEXT), pa.scalar("false", TEXT)
# The Arrow type of each field kind's values, before they become canonical texts.
VALUE_TYPES = {
    "float": pa.float64(),
    "integer": pa.int64(),
    "unsigned": pa.uint64(),
    "boolean": pa.bool_(),
    "string": pa.large_string(),
}
_SUFFIX = {"integer": pa.scalar("i", TEXT), "unsigned": pa.scalar("u", TEXT)}


def _field(name: str, role: str) -> pa.Field:
    return pa.field(name, pa.int64() if role == "time" else TEXT, metadata={ROLE: role.encode()})


def role(field: pa.Field) -> str:
    """A canonical column's role: "measurement", "tag", "time" or "field"."""
    return (field.metadata or {}).get(ROLE, b"field").decode()


def canonical_table(columns: dict[str, pa.Array | pa.ChunkedArray], roles: dict[str, str]) -> pa.Table:
    """The canonical table of `columns`, in canonical column order (see `_ordered`)."""
    names = _ordered(roles)
    return pa.table([columns[n] for n in names], schema=pa.schema([_field(n, roles[n]) for n in names]))


def _ordered(roles: dict[str, str]) -> list[str]:
    """Measurement, tags by name, time, fields by name."""
    rank = {"measurement": 0, "tag": 1, "time": 2, "field": 3}
    return sorted(roles, key=lambda n: (rank[roles[n]], n))


def empty_points() -> pa.Table:
    return canonical_table(
        {MEASUREMENT: pa.array([], TEXT), TIME: pa.array([], pa.int64())},
        {MEASUREMENT: "measurement", TIME: "time"},
    )


# --- the staged side ------------------------------------------------------------------------


def expected_points(table: pa.Table | pa.RecordBatch, points: PointsPlan) -> pa.Table:
    """The canonical points `table`'s rows map to under `points` (a `mapping.PointsPlan`): the
    rows the encoder leaves out are left out (the same decision, `rows_written`), values the
    encoder leaves out (NULL, NaN, ±Inf, oversized strings, times out of range) are NULL. One
    batch of vectorised kernels; raises as `encode_batch` does for a mapping the data cannot take."""
    mapping = points.point_mapping()
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    kept = rows_written(table, mapping)
    table = table.filter(pa.array(kept)).combine_chunks()
    n = table.num_rows

    def column(name: str) -> pa.Array:
        values = table.column(name).combine_chunks()
        return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values

    columns: dict[str, pa.Array] = {}
    roles: dict[str, str] = {MEASUREMENT: "measurement", TIME: "time"}
    if mapping.measurement is not None:
        columns[MEASUREMENT] = pa.nulls(n, TEXT).fill_null(pa.scalar(mapping.measurement, TEXT))
    else:
        columns[MEASUREMENT] = pc.cast(column(mapping.measurement_column), TEXT)
    for tag in mapping.tags:
        text = pc.cast(column(tag), TEXT)
        columns[tag] = pc.if_else(pc.equal(pc.binary_length(text), 0), _NULL, text)
        roles[tag] = "tag"
    time = column(mapping.time_column)
    # Rows whose time is out of InfluxDB's range are left out above, so no product overflows.
    columns[TIME] = pc.multiply(time.cast(pa.int64()), NS_PER_UNIT[time.type.unit])
    for spec in mapping.fields:
        values = column(spec.column)
        kind = spec.kind or field_kind(values.type, mapping.timestamp_fields)
        columns[spec.field_key] = field_texts(values, kind)
        roles[spec.field_key] = "field"
    return canonical_table(columns, roles)


def field_texts(values: pa.Array, kind: str) -> pa.Array:
    """Each staged value as the canonical text of a field of `kind` (see the module docstring),
    NULL where the encoder leaves the value out."""
    t = values.type
    valid = np.asarray(values.is_valid())
    if pa.types.is_null(t):
        return pa.nulls(len(values), TEXT)
    if kind == "float":
        if pa.types.is_decimal(t):  # the double nearest the exact decimal
            doubles = pc.cast(pc.cast(values, TEXT), pa.float64())
        elif pa.types.is_float64(t):
            doubles = values
        elif pa.types.is_floating(t):  # the double InfluxDB reads from the float32's shortest text
            doubles = pc.cast(pc.cast(values.cast(pa.float32()), TEXT), pa.float64())
        else:  # an integer, correctly rounded as InfluxDB's parser rounds it
            doubles = pc.cast(values, pa.float64(), safe=False)
        return typed_texts(pc.if_else(pc.is_finite(doubles), doubles, pa.scalar(None, pa.float64())), kind)
    if kind in ("integer", "unsigned"):
        if pa.types.is_timestamp(t):
            ns, out = to_nanoseconds(values, _INT64_MIN, _INT64_MAX)
            return typed_texts(pa.array(ns, mask=out | ~valid), kind)
        return typed_texts(pc.cast(values, VALUE_TYPES[kind]), kind)
    if kind == "boolean":
        return typed_texts(values, kind)
    if pa.types.is_timestamp(t):
        text = rfc3339_texts(values, "", EncodeReport())
    elif pa.types.is_date(t):
        days = np.asarray(values.cast(pa.date32()).cast(pa.int32()).fill_null(0))
        out = (days < RFC3339_MIN_DAY) | (days > RFC3339_MAX_DAY)
        text = pc.if_else(pa.array(out), _NULL, pc.cast(values, TEXT))
    else:
        text = pc.cast(values, TEXT)
    return typed_texts(pc.if_else(pc.greater(pc.binary_length(text), MAX_STRING_BYTES), _NULL, text), kind)


def typed_texts(values: pa.Array, kind: str) -> pa.Array:
    """Values of a field of `kind`, typed as `VALUE_TYPES[kind]` says, as canonical texts:
    ``1.5`` (Arrow's shortest round-trip text), ``12i``, ``12u``, ``true``, ``"text"``."""
    if kind == "float":
        return pc.cast(values, TEXT)
    if kind in ("integer", "unsigned"):
        return pc.binary_join_element_wise(pc.cast(values, TEXT), _SUFFIX[kind], _NOTHING)
    if kind == "boolean":
        return pc.if_else(values, _TRUE, _FALSE)
    return pc.binary_join_element_wise(_QUOTE, values, _QUOTE, _NOTHING)


def concat_points(tables: list[pa.Table]) -> pa.Table:
    """Canonical tables one after the other; a column one of them lacks is NULL in its rows."""
    if not tables:
        return empty_points()
    roles: dict[str, str] = {}
    for f in (f for t in tables for f in t.schema):
        if roles.setdefault(f.name, role(f)) != role(f):
            raise ValidationFailed(
                f"{f.name!r} is a tag of one measurement and a field of another in InfluxDB, so their "
                "points cannot be compared in one table"
            )
    return canonical_table(
        {name: pa.chunked_array([_column(t, name, roles[name]) for t in tables]) for name in roles}, roles
    )


def _column(table: pa.Table, name: str, column_role: str) -> pa.ChunkedArray:
    if name in table.column_names:
        return table[name].combine_chunks()
    return pa.nulls(table.num_rows, pa.int64() if column_role == "time" else TEXT)


# --- the comparison -------------------------------------------------------------------------


def aligned(expected: pa.Table, actual: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Both tables with the same columns, in canonical order: a column only one side has is
    NULL on the other (a tag no point has, a field no point carries)."""
    roles = {f.name: role(f) for t in (expected, actual) for f in t.schema}

    def widened(table: pa.Table) -> pa.Table:
        return canonical_table({n: _column(table, n, roles[n]) for n in roles}, roles)

    return widened(expected), widened(actual)


def point_key(table: pa.Table) -> list[str]:
    """The columns that identify a point: measurement, tag set and time."""
    return [f.name for f in table.schema if role(f) != "field"]


def compare_points(expected: pa.Table, actual: pa.Table, where: str) -> str | None:
    """None when the two canonical tables hold the same points, value for value; else one
    sentence starting with `where` that names the first difference: the field or tag, one
    point (measurement, tag set and time) and both values."""
    expected_roles = {f.name: role(f) for f in expected.schema}
    for f in actual.schema:
        if expected_roles.get(f.name, role(f)) != role(f):
            return (
                f"{where}: {f.name!r} is a {role(f)} in InfluxDB where the staged chunk maps it to a "
                f"{expected_roles[f.name]}"
            )
    expected, actual = aligned(expected, actual)
    key = point_key(expected)
    if _same_sorted(expected, actual, key):
        return None
    diff = diff_tables(expected, actual, key)
    if diff.same:
        return None
    return _describe(diff, expected, actual, key, where)


def _same_sorted(expected: pa.Table, actual: pa.Table, key: list[str]) -> bool:
    """The common case, checked first: sorted by point key, the tables are equal column by
    column (vectorised; only a difference pays for the diff)."""
    if expected.num_rows != actual.num_rows:
        return False
    order = [(name, "ascending") for name in key]
    a, b = expected.sort_by(order), actual.sort_by(order)
    return all(a[name].combine_chunks().equals(b[name].combine_chunks()) for name in a.column_names)


def _point(row: dict[str, Any], key: list[str], roles: dict[str, str]) -> str:
    """A point's key as ``(measurement, {tag: value}, RFC3339 time)``, values quoted."""
    tags = {k: row[k] for k in key if roles[k] == "tag" and row.get(k) is not None}
    at = row.get(TIME)
    return f"({row.get(MEASUREMENT)!r}, {tags}, {rfc3339_ns(at) if isinstance(at, int) else at})"


def kind_of(text: str | None) -> str:
    """The field type a canonical value text carries."""
    if text is None:
        return "no value"
    if text.startswith('"'):
        return "string"
    if text in ("true", "false"):
        return "boolean"
    return {"i": "integer", "u": "unsigned"}.get(text[-1:], "float")


def _shown(text: str | None) -> str:
    return "no value" if text is None else f"{text} ({kind_of(text)})"


def _describe(diff: Diff, expected: pa.Table, actual: pa.Table, key: list[str], where: str) -> str:
    roles = {f.name: role(f) for f in expected.schema}
    counts = []
    if diff.missing:
        counts.append(f"{diff.missing} staged point(s) not in InfluxDB")
    if diff.extra:
        counts.append(f"{diff.extra} point(s) in InfluxDB the chunk does not map to")
    if diff.changed:
        counts.append(
            f"{diff.changed} point(s) with different field values ({', '.join(sorted(diff.changed_columns))})"
        )
    tail = "; ".join(counts)
    if diff.sample_changed:
        c = diff.sample_changed[0]
        return (
            f"{where}: field {c.column!r} of point {_point(c.key, key, roles)} holds {_shown(c.actual)} "
            f"in InfluxDB where the staged chunk maps to {_shown(c.expected)}; {tail}"
        )
    if diff.missing and diff.extra:  # a point key changed: pair the rows to name the tag
        pairs = diff_tables(expected, actual, None, samples=1)
        if pairs.sample_changed:
            c = pairs.sample_changed[0]
            what = {"tag": "tag", "time": "time", "measurement": "measurement"}.get(roles[c.column], "field")
            row = {**c.key, c.column: c.expected}
            shown = (
                (lambda v: "no tag" if v is None else repr(v))
                if what == "tag"
                else (
                    lambda v: f"{v} ({rfc3339_ns(v)})" if what == "time" and isinstance(v, int) else repr(v)
                )
            )
            return (
                f"{where}: {what} {c.column!r} of point {_point(row, key, roles)} is {shown(c.actual)} in "
                f"InfluxDB where the staged chunk has {shown(c.expected)}; {tail}"
            )
    examples = []
    if diff.sample_missing:
        examples.append(f"not in InfluxDB: {_point(diff.sample_missing[0], key, roles)}")
    if diff.sample_extra:
        examples.append(f"not in the chunk: {_point(diff.sample_extra[0], key, roles)}")
    return f"{where}: {tail}, e.g. " + "; ".join(examples)
