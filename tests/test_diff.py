"""blocks.diff: the quick equality check never calls different tables equal, whatever the order."""

from __future__ import annotations

import math

import pyarrow as pa

from blocks.diff import diff_tables, same_rows

ROWS = {
    "id": [3, 1, 2, 5, 4],
    "price": [1.5, -0.0, math.nan, 2.25, None],
    "name": ["c", "a", None, "e", "d"],
}


def table(**changes) -> pa.Table:
    columns = {name: list(values) for name, values in ROWS.items()}
    for name, (at, value) in changes.items():
        columns[name][at] = value
    return pa.table(
        columns, schema=pa.schema([("id", pa.int64()), ("price", pa.float64()), ("name", pa.string())])
    )


def reordered(t: pa.Table) -> pa.Table:
    return t.take(pa.array([4, 2, 0, 3, 1]))


def test_the_same_rows_in_another_order_are_the_same_by_key():
    assert same_rows(table(), reordered(table()), ["id"])
    assert diff_tables(table(), reordered(table()), ["id"]).same


def test_a_changed_value_in_another_order_is_a_difference_naming_the_column():
    for changed in (
        table(name=(4, "D")),
        table(name=(0, None)),
        table(price=(1, 0.0)),  # -0.0 became 0.0: compared by bits
        table(price=(2, 1.0)),  # NaN became a number
        table(price=(4, 0.0)),  # NULL became 0.0
    ):
        assert not same_rows(table(), reordered(changed), ["id"])
        diff = diff_tables(table(), reordered(changed), ["id"])
        assert not diff.same and diff.changed == 1, diff
        assert [c.column for c in diff.sample_changed] in (["name"], ["price"]), diff


def test_a_repeated_key_is_left_to_the_diff():
    doubled = table(id=(1, 3))  # two rows with key 3
    assert not same_rows(doubled, reordered(doubled), ["id"])
    assert same_rows(doubled, doubled, ["id"])  # in the same order: row for row equal


def test_without_a_key_another_order_is_not_shown_equal_but_the_multiset_diff_finds_no_difference():
    assert not same_rows(table(), reordered(table()))
    assert diff_tables(table(), reordered(table())).same


def test_a_missing_row_is_a_difference():
    fewer = table().slice(0, 4)
    assert not same_rows(table(), fewer, ["id"])
    assert diff_tables(table(), fewer, ["id"]).missing == 1


def test_decimals_of_any_scale_and_nulls_compare_by_key_and_as_multisets():
    from decimal import Decimal

    wide = pa.decimal128(38, 37)
    expected = pa.table({"id": [1, 2, 3], "d": pa.array([Decimal("0.1"), None, Decimal("-0.5")], wide)})
    same = expected.take([2, 0, 1])
    changed = expected.set_column(1, "d", pa.array([Decimal("0.1"), Decimal("0"), Decimal("-0.5")], wide))
    assert diff_tables(expected, same, ["id"]).same and diff_tables(expected, same).same
    by_key = diff_tables(expected, changed, ["id"])
    assert (by_key.changed, by_key.changed_columns) == (1, {"d": 1})
    assert (by_key.sample_changed[0].expected, by_key.sample_changed[0].actual) == (None, Decimal("0"))
    as_multisets = diff_tables(expected, changed)
    assert (as_multisets.missing, as_multisets.extra) == (1, 1)
