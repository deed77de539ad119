"""What writing a table's points would do, said without writing (a dry run): InfluxDB runs no
DDL, and where each column goes (the time, the measurement, a tag, a field of which kind)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from blocks.columns import Column, LogicalType, TargetTable
from blocks.influxdb.line_protocol import field_kind
from blocks.influxdb.mapping import PointsPlan
from blocks.preview import ColumnMapping, GuardDecision, TablePreview

_INEXACT_FLOAT = {
    LogicalType.INTEGER: "integers beyond 2**53 are written as the nearest double",
    LogicalType.DECIMAL: "decimals with more than 15 significant digits are written as the nearest double "
    "(reported as inexact); kind string keeps every digit",
}


class PointPreview:
    """The dry-run methods of `InfluxDBTarget` (`PointTarget.preview_points`, `Target.type_mapping`)."""

    def preview_points(self, points: PointsPlan) -> TablePreview:
        """No DDL: a measurement is created by its first point. Reads nothing."""
        where = f"measurement {points.measurement}" if points.measurement else "each row's measurement"
        reason = f"no DDL: {where} is created by its first point in {self.describe_target()}"
        return TablePreview(
            decisions=[GuardDecision(guard="create measurement", outcome="note", reason=reason)]
        )

    def type_mapping(
        self, table: TargetTable, source_columns: tuple[Column, ...], staged: pa.Schema, points: Any = None
    ) -> list[ColumnMapping]:
        """Each staged column as the point time, the measurement, a tag (text) or a field of
        its kind. Flagged `lossy` where a float field cannot hold every value (an integer or
        decimal column), `refused` where the writer refuses values (a decimal as an integer
        field, negative values as an unsigned one)."""
        fields = {f.column: f for f in points.fields}
        mappings = []
        for column, field in zip(source_columns, staged, strict=True):
            flag, reason = "", ""
            if column.name == points.time_column:
                target, kind = "time", "point time (ns)"
            elif column.name == points.measurement_column:
                target, kind = "measurement", "measurement name"
            elif column.name in points.tags:
                target, kind = column.name, "tag (text)"
            else:
                spec = fields[column.name]
                target, kind = spec.key, spec.kind or field_kind(field.type, points.timestamp_fields)
                flag, reason = _field_loss(column, kind)
                kind = f"field {kind}"
            mappings.append(
                ColumnMapping(
                    source_name=column.name,
                    source_type=column.source_type or str(column.logical),
                    staged_type=str(field.type),
                    target_name=target,
                    target_type=kind,
                    flag=flag,
                    reason=reason,
                )
            )
        return mappings


def _field_loss(column: Column, kind: str) -> tuple[str, str]:
    if kind == "float" and column.logical in _INEXACT_FLOAT:
        return "lossy", _INEXACT_FLOAT[column.logical]
    if kind in ("integer", "unsigned") and column.logical is LogicalType.DECIMAL:
        return "refused", f"a decimal column cannot be written as kind {kind}: its chunks fail at load"
    if kind == "unsigned" and column.logical is LogicalType.INTEGER:
        return "refused", "negative values do not fit kind unsigned: a chunk holding one fails at load"
    return "", ""
