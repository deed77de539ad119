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
so a fault in the encoder's text shows. `points_from_results` builds the same table from the
answers of ``SELECT *::field ... GROUP BY *``, typed by ``SHOW FIELD KEYS``. `compare_points`
diffs two such tables keyed by measurement, tag set and time, and names the first difference:
the field or tag, one point, and both values.
"""

from __future__ import annotations

from collections.abc import Iterable
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
_TEXT = pa.large_string()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NULL = pa.scalar(None, _TEXT)
_NOTHING = pa.scalar("", _TEXT)
_QUOTE = pa.scalar('"', _TEXT)
_TRUE, _FALSE = pa.scalar("true", _TEXT), pa.scalar("false", _TEXT)
# Rows read back gathered as Python values before they become Arrow.
_ARROW_ROWS = 65_536
_SUFFIX = {"integer": pa.scalar("i", _TEXT), "unsigned": pa.scalar("u", _TEXT)}


def _field(name: str, role: str) -> pa.Field:
    return pa.field(name, pa.int64() if role == "time" else _TEXT, metadata={ROLE: role.encode()})


def role(field: pa.Field) -> str:
    """A canonical column's role: "measurement", "tag", "time" or "field"."""
    return (field.metadata or {}).get(ROLE, b"field").decode()


def _table(columns: dict[str, pa.Array | pa.ChunkedArray], roles: dict[str, str]) -> pa.Table:
    """The canonical table of `columns`, in canonical column order (see `_ordered`)."""
    names = _ordered(roles)
    return pa.table([columns[n] for n in names], schema=pa.schema([_field(n, roles[n]) for n in names]))


def _ordered(roles: dict[str, str]) -> list[str]:
    """Measurement, tags by name, time, fields by name."""
    rank = {"measurement": 0, "tag": 1, "time": 2, "field": 3}
    return sorted(roles, key=lambda n: (rank[roles[n]], n))


def empty_points() -> pa.Table:
    return _table(
        {MEASUREMENT: pa.array([], _TEXT), TIME: pa.array([], pa.int64())},
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
        values = table.column(name)
        values = values.chunk(0) if values.num_chunks == 1 else pa.concat_arrays(values.chunks)
        return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values

    columns: dict[str, pa.Array] = {}
    roles: dict[str, str] = {MEASUREMENT: "measurement", TIME: "time"}
    if mapping.measurement is not None:
        columns[MEASUREMENT] = pa.nulls(n, _TEXT).fill_null(pa.scalar(mapping.measurement, _TEXT))
    else:
        columns[MEASUREMENT] = pc.cast(column(mapping.measurement_column), _TEXT)
    for tag in mapping.tags:
        text = pc.cast(column(tag), _TEXT)
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
    return _table(columns, roles)


def field_texts(values: pa.Array, kind: str) -> pa.Array:
    """Each value as the canonical text of a field of `kind` (see the module docstring), NULL
    where the encoder leaves the value out."""
    t = values.type
    valid = np.asarray(values.is_valid())
    if pa.types.is_null(t):
        return pa.nulls(len(values), _TEXT)
    if kind == "float":
        if pa.types.is_decimal(t):  # the double nearest the exact decimal
            doubles = pc.cast(pc.cast(values, _TEXT), pa.float64())
        elif pa.types.is_float64(t):
            doubles = values
        elif pa.types.is_floating(t):  # the double InfluxDB reads from the float32's shortest text
            doubles = pc.cast(pc.cast(values.cast(pa.float32()), _TEXT), pa.float64())
        else:  # an integer, correctly rounded as InfluxDB's parser rounds it
            doubles = pc.cast(values, pa.float64(), safe=False)
        finite = pc.is_finite(doubles)
        return pc.if_else(finite, pc.cast(doubles, _TEXT), _NULL)
    if kind in ("integer", "unsigned"):
        if pa.types.is_timestamp(t):
            ns, out = to_nanoseconds(values, _INT64_MIN, _INT64_MAX)
            numbers = pa.array(ns, mask=out | ~valid)
        else:
            numbers = pc.cast(values, pa.int64() if kind == "integer" else pa.uint64())
        return pc.binary_join_element_wise(pc.cast(numbers, _TEXT), _SUFFIX[kind], _NOTHING)
    if kind == "boolean":
        return pc.if_else(values, _TRUE, _FALSE)
    if pa.types.is_timestamp(t):
        text = rfc3339_texts(values, "", EncodeReport())
    elif pa.types.is_date(t):
        days = np.asarray(values.cast(pa.date32()).cast(pa.int32()).fill_null(0))
        out = (days < RFC3339_MIN_DAY) | (days > RFC3339_MAX_DAY)
        text = pc.if_else(pa.array(out), _NULL, pc.cast(values, _TEXT))
    else:
        text = pc.cast(values, _TEXT)
    text = pc.if_else(pc.greater(pc.binary_length(text), MAX_STRING_BYTES), _NULL, text)
    return pc.binary_join_element_wise(_QUOTE, text, _QUOTE, _NOTHING)


# --- the InfluxDB side ----------------------------------------------------------------------


def field_kinds(results: Iterable[dict]) -> dict[str, set[str]]:
    """Field key -> the types ``SHOW FIELD KEYS FROM "m"`` lists for it (1.x keeps a field's type
    per shard, so a key can have more than one)."""
    kinds: dict[str, set[str]] = {}
    for result in results:
        for series in result.get("series", []):
            for key, kind in series.get("values") or []:
                kinds.setdefault(key, set()).add(kind)
    return kinds


def _stored_texts(values: list[Any], kind: str) -> pa.Array:
    """Canonical texts of one field's JSON values (None: no value) stored as `kind`."""
    if kind == "float":
        try:
            doubles = pa.array(values, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # whole numbers beyond 2**53 arrive as ints
            doubles = pa.array([None if v is None else float(v) for v in values], pa.float64())
        return pc.cast(doubles, _TEXT)
    if kind in ("integer", "unsigned"):
        numbers = pa.array(values, pa.int64() if kind == "integer" else pa.uint64())
        return pc.binary_join_element_wise(pc.cast(numbers, _TEXT), _SUFFIX[kind], _NOTHING)
    if kind == "boolean":
        return pc.if_else(pa.array(values, pa.bool_()), _TRUE, _FALSE)
    return pc.binary_join_element_wise(_QUOTE, pa.array(values, _TEXT), _QUOTE, _NOTHING)


_JSON_KINDS = ((bool, "boolean"), (str, "string"), (int, "integer"), (float, "float"))


def stored_texts(values: list[Any], kinds: set[str]) -> pa.Array:
    """Canonical texts of one field's JSON values, given the types InfluxDB lists for the field.

    With one type, every value is read as that type. Values that do not fit it, or a field
    listed with several types, are read by their JSON type (a number with no fraction as an
    integer when the field has an integer type, else as a float), so no value is lost."""
    if len(kinds) == 1:
        try:
            return _stored_texts(values, next(iter(kinds)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
    out = pa.nulls(len(values), _TEXT)
    for python_type, kind in _JSON_KINDS:
        picked = [v if type(v) is python_type else None for v in values]
        if python_type is int and "integer" not in kinds and "unsigned" not in kinds:
            kind = "float"
        elif python_type is int and "integer" not in kinds:
            kind = "unsigned"
        if any(v is not None for v in picked):
            out = pc.coalesce(out, _stored_texts(picked, kind))
    return out


def points_from_results(
    measurement: str, results: Iterable[dict], kinds: dict[str, set[str]], where: str
) -> pa.Table:
    """The canonical points of one measurement from the statement results of
    ``SELECT *::field FROM "m" WHERE <time range> GROUP BY *`` (one result per response chunk,
    a series possibly split across chunks), field values typed by `kinds` (`field_kinds`).

    Rows are gathered as Python values and turned into Arrow every `_ARROW_ROWS` rows (InfluxDB
    1.x sends each series in a chunk of its own, so chunks can be tiny). Raises
    `ValidationFailed` when a key is both a tag and a field of the measurement."""
    parts = []
    roles: dict[str, str] = {MEASUREMENT: "measurement", TIME: "time"}
    columns: dict[str, list[Any]] = {TIME: []}
    rows = 0
    for result in results:
        for series in result.get("series", []):
            values = series.get("values") or []
            n = len(values)
            if not n:
                continue
            names = series["columns"]
            transposed = list(zip(*values, strict=True))
            here = {name: transposed[i] for i, name in enumerate(names)}
            for key, value in (series.get("tags") or {}).items():
                if key in here:
                    raise ValidationFailed(
                        f"{where}: {key!r} is both a tag and a field of measurement {measurement!r} in "
                        "InfluxDB, so its points cannot be compared with the staged chunk"
                    )
                here[key] = (value or None,) * n
                roles[key] = "tag"
            for name in names:
                roles.setdefault(name, "field")
            for name, values_here in here.items():
                if name not in columns:
                    columns[name] = [None] * rows
                columns[name].extend(values_here)
            rows += n
            for column in columns.values():
                if len(column) < rows:
                    column.extend([None] * (rows - len(column)))
            if rows >= _ARROW_ROWS:
                parts.append(_stored_points(measurement, columns, roles, kinds))
                columns, rows = {name: [] for name in columns}, 0
    if rows:
        parts.append(_stored_points(measurement, columns, roles, kinds))
    return concat_points(parts)


def _stored_points(
    measurement: str, columns: dict[str, list[Any]], roles: dict[str, str], kinds: dict[str, set[str]]
) -> pa.Table:
    rows = len(columns[TIME])
    arrays: dict[str, pa.Array] = {
        MEASUREMENT: pa.nulls(rows, _TEXT).fill_null(pa.scalar(measurement, _TEXT)),
        TIME: pa.array(columns[TIME], pa.int64()),
    }
    for name, values in columns.items():
        if roles[name] == "tag":
            arrays[name] = pa.array(values, _TEXT)
        elif roles[name] == "field":
            arrays[name] = stored_texts(values, kinds.get(name, set()))
    return _table(arrays, {name: roles[name] for name in arrays})


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
    return _table(
        {name: pa.chunked_array([_column(t, name, roles[name]) for t in tables]) for name in roles}, roles
    )


def _column(table: pa.Table, name: str, column_role: str) -> pa.ChunkedArray:
    if name in table.column_names:
        return table[name].combine_chunks()
    return pa.nulls(table.num_rows, pa.int64() if column_role == "time" else _TEXT)


# --- the comparison -------------------------------------------------------------------------


def aligned(expected: pa.Table, actual: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Both tables with the same columns, in canonical order: a column only one side has is
    NULL on the other (a tag no point has, a field no point carries)."""
    roles = {f.name: role(f) for t in (expected, actual) for f in t.schema}

    def widened(table: pa.Table) -> pa.Table:
        return _table({n: _column(table, n, roles[n]) for n in roles}, roles)

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
