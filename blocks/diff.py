"""Diff two Arrow tables value by value: rows missing, extra, and changed (by key or as multisets).

Both the content verification inside a chunk's load and the `verify` flow use it, so "equal"
means one thing everywhere. Values are compared in a canonical form:

- floats by their bits, so NaN equals NaN and -0.0 differs from 0.0, as stored;
- everything else by Arrow equality after the caller cast both sides to one type (timestamps
  as instants, decimals by value, JSON as the target's canonical text);
- NULL equals only NULL.

With a key, a row is "changed" when its key is on both sides and some other column differs;
without one, the tables are compared as multisets of whole rows (a changed row then shows as
one missing and one extra). Memory: both tables plus a join of them, so one chunk's worth.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_LEFT, _RIGHT = "__expected", "__actual"
_ROWS_LEFT, _ROWS_RIGHT = "__n_expected", "__n_actual"


@dataclass
class Change:
    """One changed value: the row's key, the column, and both values."""

    key: dict[str, Any]
    column: str
    expected: Any
    actual: Any


@dataclass
class Diff:
    """How `actual` differs from `expected`; samples hold at most `samples` rows each."""

    key: list[str]
    expected_rows: int
    actual_rows: int
    missing: int = 0
    extra: int = 0
    changed: int = 0
    changed_columns: dict[str, int] = field(default_factory=dict)
    sample_missing: list[dict[str, Any]] = field(default_factory=list)
    sample_extra: list[dict[str, Any]] = field(default_factory=list)
    sample_changed: list[Change] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def describe(self, where: str) -> str:
        """One sentence naming the first difference: the column, a key and both values."""
        if self.sample_changed and self.key:
            c = self.sample_changed[0]
            return (
                f"{where}: column {c.column} holds {shown(c.actual)} where the source has {shown(c.expected)} "
                f"(key {c.key}); {self.changed} row(s) differ in {sorted(self.changed_columns)}"
            )
        if self.sample_changed:
            c = self.sample_changed[0]
            return (
                f"{where}: column {c.column} holds {shown(c.actual)} where the source has {shown(c.expected)} "
                f"(in the row {c.key}; no primary key, so compared as multisets: {self.missing} source "
                f"row(s) not in the target, {self.extra} not in the source)"
            )
        parts = []
        if self.missing:
            parts.append(f"{self.missing} source row(s) not in the target, e.g. {self.sample_missing[0]}")
        if self.extra:
            parts.append(f"{self.extra} row(s) in the target not in the source, e.g. {self.sample_extra[0]}")
        return f"{where}: " + ("; ".join(parts) or "no difference")


def shown(value: Any) -> str:
    """A value for a message: times in ISO 8601, decimals as digits, anything else as its repr."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return repr(value)


def _zero(arrow_type: pa.DataType) -> pa.Scalar:
    """A stand-in for NULL in join keys, which never match NULL (a flag column tells them apart)."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pa.scalar("", arrow_type)
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return pa.scalar(b"", arrow_type)
    if pa.types.is_boolean(arrow_type):
        return pa.scalar(False)
    if pa.types.is_time(arrow_type):
        return pa.scalar(0, pa.int64() if arrow_type.bit_width == 64 else pa.int32()).cast(arrow_type)
    if pa.types.is_decimal(arrow_type):
        return pa.scalar(
            Decimal(0), arrow_type
        )  # a cast from an integer overflows a scale near the precision
    if pa.types.is_date32(arrow_type):
        return pa.scalar(0, pa.int32()).cast(arrow_type)
    return pa.scalar(0, pa.int64()).cast(arrow_type)


def comparable(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """The column in the form equality is decided on: floats as their bit patterns."""
    column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    if pa.types.is_floating(column.type):
        bits = pa.int64() if column.type.bit_width == 64 else pa.int32()
        if pa.types.is_float16(column.type):
            column, bits = column.cast(pa.float32()), pa.int32()
        return pa.chunked_array([c.view(bits) for c in column.chunks], bits)
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _join_keys(table: pa.Table, names: list[str], side: str) -> pa.Table:
    """`table` with each column in comparable form as `__<side>:<name>`, and for each of `names`
    a join key `__k:<name>` (NULLs filled) with a null flag `__k?:<name>` beside it."""
    columns = {}
    for name in table.column_names:
        values = comparable(table[name])
        columns[f"__{side}:{name}"] = values
        if name in names:
            columns[f"__k:{name}"] = pc.fill_null(values, _zero(values.type))
            columns[f"__k?:{name}"] = values.is_null()
    return pa.table(columns)


def _key_columns(table: pa.Table) -> list[str]:
    return [n for n in table.column_names if n.startswith(("__k:", "__k?:"))]


def _rows(table: pa.Table, indices: pa.Array, columns: list[str], limit: int) -> list[dict[str, Any]]:
    taken = table.select(columns).take(indices.slice(0, limit))
    return taken.to_pylist()


def diff_tables(expected: pa.Table, actual: pa.Table, key: list[str] | None = None, samples: int = 5) -> Diff:
    """How `actual` differs from `expected` (same column names; `actual`'s columns decide which
    are compared). With `key`, by key; without, as multisets of rows."""
    names = [n for n in actual.column_names if n in expected.column_names]
    expected, actual = expected.select(names), actual.select(names)
    key = [k for k in (key or []) if k in names]
    result = Diff(key=key, expected_rows=expected.num_rows, actual_rows=actual.num_rows)
    if same_rows(expected, actual, key):
        return result
    if key:
        _diff_by_key(expected, actual, key, names, result, samples)
    else:
        _diff_multisets(expected, actual, names, result, samples)
    return result


def same_rows(expected: pa.Table, actual: pa.Table, key: list[str] | None = None) -> bool:
    """True when `actual` holds exactly `expected`'s rows (equality as in `diff_tables`, over
    `actual`'s columns): row for row in the order given, or, with a `key` that is unique in
    `actual`, row for row once both are sorted by it. False only means "not shown equal":
    `diff_tables` then decides, and says how they differ.

    The common case, vectorised: a join of the two (the diff) costs several times more."""
    if expected.num_rows != actual.num_rows:
        return False
    if _equal_in_order(expected, actual):
        return True
    key = [k for k in (key or []) if k in actual.column_names]
    if not key:
        return False
    in_actual = _key_order(actual, key)
    if _repeats_a_key(pa.table({k: comparable(actual[k]).take(in_actual) for k in key}), key):
        return False  # ties sort in no set order, and the keyed diff pairs duplicates its own way
    # Row i of `expected` pairs with row aligned[i] of `actual`: one permutation, applied to one
    # side, one column at a time (a reordered copy of a whole table costs more than the compare).
    aligned = np.empty(actual.num_rows, np.int64)
    aligned[_key_order(expected, key).to_numpy()] = in_actual.to_numpy()
    return _equal_in_order(expected, actual, pa.array(aligned))


def _key_order(table: pa.Table, key: list[str]) -> pa.Array:
    by_key = pa.table({k: comparable(table[k]) for k in key})
    return pc.sort_indices(by_key, sort_keys=[(k, "ascending") for k in key])


def _equal_in_order(expected: pa.Table, actual: pa.Table, rows: pa.Array | None = None) -> bool:
    """Row i of `expected` equals row i of `actual` (row rows[i], given `rows`) in each of
    `actual`'s columns, by `comparable`; NULL equals only NULL."""
    for name in actual.column_names:
        x, y = comparable(expected[name]), comparable(actual[name])
        if rows is not None:
            y = y.take(rows)
        if not x.is_null().equals(y.is_null()):
            return False
        if not pc.all(pc.fill_null(pc.equal(x, y), True)).as_py():
            return False
    return True


def _repeats_a_key(table: pa.Table, key: list[str]) -> bool:
    """Two neighbouring rows of `table` (sorted by `key`) hold the same key, NULL as a value."""
    if table.num_rows < 2:
        return False
    repeated = None
    for name in key:
        column = table[name]
        before, after = column.slice(0, len(column) - 1), column.slice(1)
        same = pc.fill_null(
            pc.or_kleene(pc.equal(before, after), pc.and_(before.is_null(), after.is_null())), False
        )
        repeated = same if repeated is None else pc.and_(repeated, same)
    return pc.any(repeated).as_py()


def _diff_by_key(
    expected: pa.Table, actual: pa.Table, key: list[str], names: list[str], result: Diff, samples: int
) -> None:
    left = _join_keys(expected, key, "e").append_column(_LEFT, pa.array(range(expected.num_rows), pa.int64()))
    right = _join_keys(actual, key, "a").append_column(_RIGHT, pa.array(range(actual.num_rows), pa.int64()))
    joined = left.join(right, keys=_key_columns(left), join_type="full outer", coalesce_keys=True)
    missing = joined.filter(pc.is_null(joined[_RIGHT]))
    extra = joined.filter(pc.is_null(joined[_LEFT]))
    result.missing, result.extra = missing.num_rows, extra.num_rows
    result.sample_missing = _rows(expected, missing[_LEFT].combine_chunks(), key, samples)
    result.sample_extra = _rows(actual, extra[_RIGHT].combine_chunks(), key, samples)
    both = joined.filter(pc.and_(pc.is_valid(joined[_LEFT]), pc.is_valid(joined[_RIGHT])))
    differs_any = pa.chunked_array([pa.array([False] * both.num_rows, pa.bool_())])
    for name in names:
        if name in key:
            continue
        a, b = both[f"__e:{name}"], both[f"__a:{name}"]
        same = pc.or_kleene(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b)))
        differs = pc.invert(pc.fill_null(same, False))
        count = pc.sum(differs).as_py() or 0
        if not count:
            continue
        result.changed_columns[name] = count
        differs_any = pc.or_(differs_any, differs)
        if len(result.sample_changed) < samples:
            at = pc.indices_nonzero(differs).slice(0, samples - len(result.sample_changed))
            lefts, rights = both[_LEFT].take(at), both[_RIGHT].take(at)
            for i, j in zip(lefts.to_pylist(), rights.to_pylist(), strict=True):
                row = {k: expected[k][i].as_py() for k in key}
                result.sample_changed.append(
                    Change(row, name, expected[name][i].as_py(), actual[name][j].as_py())
                )
    result.changed = pc.sum(differs_any).as_py() or 0


def _counts(table: pa.Table, names: list[str], side: str) -> pa.Table:
    keyed = _join_keys(table, names, side)
    keys = _key_columns(keyed)
    first = f"__first_{side}"
    keyed = keyed.append_column(first, pa.array(range(table.num_rows), pa.int64()))
    grouped = keyed.group_by(keys, use_threads=False).aggregate([(first, "count"), (first, "min")])
    return grouped.rename_columns(
        [
            {f"{first}_count": f"__n_{side}", f"{first}_min": f"__at_{side}"}.get(n, n)
            for n in grouped.column_names
        ]
    )


def _diff_multisets(
    expected: pa.Table, actual: pa.Table, names: list[str], result: Diff, samples: int
) -> None:
    left, right = _counts(expected, names, "e"), _counts(actual, names, "a")
    joined = left.join(right, keys=_key_columns(left), join_type="full outer", coalesce_keys=True)
    n_e = pc.fill_null(joined["__n_e"], 0)
    n_a = pc.fill_null(joined["__n_a"], 0)
    short = pc.subtract(n_e, n_a)
    result.missing = pc.sum(pc.max_element_wise(short, 0)).as_py() or 0
    result.extra = pc.sum(pc.max_element_wise(pc.negate(short), 0)).as_py() or 0
    lacking = joined.filter(pc.greater(short, 0))["__at_e"].combine_chunks()
    surplus = joined.filter(pc.less(short, 0))["__at_a"].combine_chunks()
    result.sample_missing = _rows(expected, lacking, names, samples)
    result.sample_extra = _rows(actual, surplus, names, samples)
    result.sample_changed = _paired(expected.take(lacking), actual.take(surplus), names, samples)


def _paired(lacking: pa.Table, surplus: pa.Table, names: list[str], samples: int) -> list[Change]:
    """Without a key, a changed row is one missing and one extra: pair them in sorted order
    and name the columns that differ, so a report can say which column changed."""
    n = min(lacking.num_rows, surplus.num_rows, samples)
    order = [(c, "ascending") for c in names]
    left, right = (
        lacking.sort_by(order).slice(0, n).to_pylist(),
        surplus.sort_by(order).slice(0, n).to_pylist(),
    )
    changes = []
    for a, b in zip(left, right, strict=True):
        differing = [c for c in names if not _same_value(a[c], b[c])]
        row = {c: a[c] for c in names if c not in differing}
        changes += [Change(row, c, a[c], b[c]) for c in differing[:1]]
    return changes


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # by bits, as `comparable`
    return a == b
