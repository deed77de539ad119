"""Which PostgreSQL column types cannot hold every value of a source column exactly.

A `type_overrides` entry goes into CREATE TABLE as written, and an existing table keeps the
types it has; a narrower type changes or refuses values at load. Content verification
(`verify: content`) refuses a chunk holding a value the target changed, so such a type fails
the run at that chunk; with `verify: counts` the value would be kept changed.
"""

from __future__ import annotations

import re

from blocks.columns import Column, LogicalType

_INTEGERS = {"bigint": 18, "int8": 18, "integer": 9, "int": 9, "int4": 9, "smallint": 4, "int2": 4}
_INTEGER_LIMITS = {18: "bigint", 9: "±2,147,483,647", 4: "±32,767"}
_REALS = {"real", "float4"}
_DOUBLES = {"double precision", "float8", "float"}
_NUMERICS = {"numeric", "decimal"}
_BOUNDED_TEXT = {"varchar", "character varying", "char", "character", "bpchar"}
_ZONELESS = {"timestamp", "timestamp without time zone"}
_TIMES = (LogicalType.TIMESTAMP, LogicalType.TIMESTAMP_TZ, LogicalType.TIME)
_TYPE = re.compile(r"^(?P<name>[a-z_][a-z0-9_ ]*)\s*(\(\s*(?P<args>[\d\s,-]+)\))?(?P<rest>[a-z ]*)$")


def split_type(type_name: str) -> tuple[str, list[int]]:
    """("numeric", [12, 2]) for "numeric(12,2)", ("timestamp with time zone", [3]) for
    "timestamp(3) with time zone"; unknown shapes come back whole, with no arguments."""
    text = " ".join(type_name.lower().split())
    match = _TYPE.match(text)
    if not match:
        return text, []
    name = " ".join(f"{match['name']} {match['rest']}".split())
    args = [int(a) for a in (match["args"] or "").replace(" ", "").split(",") if a]
    return name, args


def type_loss(column: Column, type_name: str) -> str | None:
    """Why `type_name` cannot hold every value `column` may hold exactly, or None when it can
    (or when the type is one this check does not know)."""
    name, args = split_type(type_name)
    logical = column.logical
    source = column.source_type or str(logical)
    if logical is LogicalType.FLOAT:
        if name in _REALS:
            return f"{type_name} keeps about 6 significant digits; a {source} value needing more is changed"
        if name in _INTEGERS or name in _NUMERICS:
            return f"{type_name} cannot hold NaN, infinities or every {source} value exactly"
    if logical is LogicalType.DECIMAL:
        return _decimal_loss(column, name, args, type_name)
    if logical is LogicalType.INTEGER:
        if name in _INTEGERS and _INTEGERS[name] < 18:
            return f"{type_name} holds {_INTEGER_LIMITS[_INTEGERS[name]]} only; larger {source} values are refused"
        if name in _REALS or name in _DOUBLES:
            digits = 6 if name in _REALS else 15
            return f"{type_name} keeps about {digits} significant digits; larger {source} values are changed"
        if name in _NUMERICS and len(args) >= 1 and args[0] - (args[1] if len(args) > 1 else 0) < 19:
            return f"{type_name} holds fewer integer digits than a 64-bit {source}; larger values are refused"
    if logical in (LogicalType.STRING, LogicalType.JSON) and name in _BOUNDED_TEXT:
        n = args[0] if args else 1
        padded = "" if "var" in name else ", shorter ones padded with spaces"
        return f"{type_name} holds {n} characters; longer values are refused{padded}"
    if logical is LogicalType.TIMESTAMP_TZ and name in _ZONELESS:
        return (
            f"{type_name} drops the zone of a {source}: instants are kept as wall times in the session's "
            "TimeZone (content verification refuses them unless it is UTC)"
        )
    if logical in _TIMES and args and args[0] < 6 and name.startswith(("timestamp", "time")):
        return f"{type_name} keeps {args[0]} fractional digits of a second; finer values are rounded"
    return None


def _decimal_loss(column: Column, name: str, args: list[int], type_name: str) -> str | None:
    precision, scale = column.precision or 38, column.scale or 0
    source = column.source_type or f"numeric({precision},{scale})"
    if name in _NUMERICS and args:
        p, s = args[0], args[1] if len(args) > 1 else 0
        if s < scale:
            return f"{type_name} keeps {s} decimal places, {source} has {scale}: values are rounded"
        if p - s < precision - scale:
            return f"{type_name} holds {p - s} integer digits, {source} up to {precision - scale}: larger values are refused"
        return None
    if name in _REALS or (name in _DOUBLES and precision > 15):
        return f"{type_name} keeps fewer significant digits than {source}; values are changed"
    if name in _INTEGERS and (scale > 0 or precision > _INTEGERS[name]):
        return f"{type_name} holds whole numbers of at most {_INTEGERS[name]} digits; {source} values are refused or rounded"
    return None
