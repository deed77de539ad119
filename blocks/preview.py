"""What a target says a run would do to one table, without doing it (a dry run's parts).

Targets answer with these models from their read-only preview methods (`RowTarget.preview_table`,
`PointTarget.preview_points`, `Target.type_mapping`); `tasks.dry_run` puts them together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from blocks.errors import TargetGuardError

Outcome = Literal["pass", "refuse", "note"]
Flag = Literal["", "note", "lossy", "refused"]


class GuardDecision(BaseModel, frozen=True):
    """One check a run makes before it loads a table: `pass` (the run goes on), `refuse` (the
    run stops there, `reason` saying why and naming the table or job), or `note` (nothing to
    decide now, e.g. a check made as each chunk loads)."""

    guard: str
    outcome: Outcome
    reason: str


class TablePreview(BaseModel, frozen=True):
    """What preparing one table would do: the DDL it would run, and its guard decisions."""

    ddl: list[str] = []
    decisions: list[GuardDecision] = []


class ColumnMapping(BaseModel, frozen=True):
    """Where one source column lands and how: its staged Arrow type and the target's column
    (or tag, field, time) and type. `flag` is "lossy" when the target type cannot hold every
    source value exactly (content verification then refuses the chunk), "refused" when the
    column's values cannot be written as asked (its chunks fail at load), "note" when only
    some values could be refused (a time finer than the target keeps); `reason` says which
    values and what happens to them."""

    source_name: str
    source_type: str
    staged_type: str
    target_name: str
    target_type: str
    flag: Flag = ""
    reason: str = ""


def guard(name: str, check: Callable[[], object], passed: Callable[[object], str] | str) -> GuardDecision:
    """Run one guard that raises `TargetGuardError` to refuse: its refusal, or `passed` (text,
    or a function of what the guard returned) as the reason it passes."""
    try:
        result = check()
    except TargetGuardError as exc:
        return GuardDecision(guard=name, outcome="refuse", reason=str(exc))
    return GuardDecision(
        guard=name, outcome="pass", reason=passed if isinstance(passed, str) else passed(result)
    )
