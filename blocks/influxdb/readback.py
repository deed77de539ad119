"""What InfluxDB holds, in the canonical point form of `verify`: the answers of
``SHOW FIELD KEYS`` and ``SELECT *::field ... GROUP BY *`` (InfluxQL on ``/query``, JSON with
``epoch=ns``) turned into Arrow, a response chunk's worth of Python values at a time.

JSON numbers do not say whether a field is a float or an integer, so each value is typed by
the field's type in ``SHOW FIELD KEYS``; `access` reads the number ``-0`` as the float -0.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from blocks.errors import ValidationFailed
from blocks.influxdb.verify import (
    MEASUREMENT,
    TEXT,
    TIME,
    VALUE_TYPES,
    canonical_table,
    concat_points,
    typed_texts,
)

# Rows read back gathered as Python values before they become Arrow.
_ARROW_ROWS = 65_536


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
    try:
        typed = pa.array(values, VALUE_TYPES.get(kind, TEXT))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if kind != "float":
            raise
        # Whole floats arrive as JSON integers, which Arrow will not take as doubles beyond 2**53.
        typed = pa.array([None if v is None else float(v) for v in values], pa.float64())
    return typed_texts(typed, kind if kind in VALUE_TYPES else "string")


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
    out = pa.nulls(len(values), TEXT)
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
        MEASUREMENT: pa.nulls(rows, TEXT).fill_null(pa.scalar(measurement, TEXT)),
        TIME: pa.array(columns[TIME], pa.int64()),
    }
    for name, values in columns.items():
        if roles[name] == "tag":
            arrays[name] = pa.array(values, TEXT)
        elif roles[name] == "field":
            arrays[name] = stored_texts(values, kinds.get(name, set()))
    return canonical_table(arrays, {name: roles[name] for name in arrays})
