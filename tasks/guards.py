"""The guards that keep jobs sharing a target from loading over each other's data.

Each refusal names the other job, its status, the overlapping ranges, and the real options:
never "resume" a job that has already completed.
"""

from __future__ import annotations

from blocks.errors import TargetGuardError
from blocks.job_status import RESUMABLE
from tasks.plan import Bound, TablePlan, parse_bound


def _overlaps(a_lo: Bound, a_hi: Bound, b_lo: Bound, b_hi: Bound) -> bool:
    """Half-open ranges overlap; None is unbounded on that side."""
    return (a_hi is None or b_lo is None or b_lo < a_hi) and (b_hi is None or a_lo is None or a_lo < b_hi)


def _some(ranges: list[str], shown: int = 3) -> str:
    more = f" and {len(ranges) - shown} more" if len(ranges) > shown else ""
    return "; ".join(ranges[:shown]) + more


def other_job_options(job_id: str, status: str) -> str:
    """What a user can do about another job's data in the way; never "resume" a completed job."""
    options = [f"roll job {job_id} back (rollback/by-job -p job_id={job_id})"]
    if status in RESUMABLE:
        options.insert(0, f"resume job {job_id} instead (-p job_id={job_id})")
    return "; ".join(options)


def refuse_overlap(plan: TablePlan, job_id: str, loaded: list[dict]) -> None:
    """Refuse an `append` job whose chunks overlap ranges other jobs loaded into its table."""
    found: dict[str, list[tuple[Bound, str]]] = {}
    status: dict[str, str] = {}
    for row in loaded:
        column = row.get("chunk_column") or plan.spec.chunk_column
        if column != plan.spec.chunk_column:
            # Ranges of another column (a catch-up follows its cursor) cannot be compared with
            # this job's: its rows may be any of the table's, so they count as overlapping.
            found.setdefault(row["job_id"], []).append(
                (None, f"{column} in [{row['lower_bound']}, {row['upper_bound']})")
            )
            status[row["job_id"]] = row.get("job_status", "")
            continue
        lo = parse_bound(plan.chunk_kind, row["lower_bound"])
        hi = parse_bound(plan.chunk_kind, row["upper_bound"])
        if any(_overlaps(c.lower, c.upper, lo, hi) for c in plan.chunks):
            found.setdefault(row["job_id"], []).append((lo, f"[{row['lower_bound']}, {row['upper_bound']})"))
            status[row["job_id"]] = row.get("job_status", "")
    # In key or time order (an unbounded start first), not text order.
    clashes = {
        job: [text for _, text in sorted(ranges, key=lambda r: (r[0] is not None, r[0] or 0))]
        for job, ranges in found.items()
    }
    if not clashes:
        return
    lines = [
        f"job {other} ({status[other]}) already loaded {plan.spec.chunk_column} in {_some(ranges)}; "
        f"to load those rows again, {other_job_options(other, status[other])}"
        for other, ranges in sorted(clashes.items())
    ]
    raise TargetGuardError(
        f"refusing to append to {plan.target.qualified}: this job's chunks overlap ranges other jobs "
        "loaded, and appending them again would duplicate rows.\n  "
        + "\n  ".join(lines)
        + "\nOr load with load_mode upsert or replace, or pick a start_time/end_time (or keys) that "
        "do not overlap. Nothing was written."
    )


def claims_in_the_way(plan: TablePlan, migration: str, claims: list[dict]) -> list[dict]:
    """The claims a table's points may not be written over. A catch-up writes again points its
    own migration's jobs loaded (its lookback overlaps their ranges, and points are
    idempotent), so only other migrations' claims are in its way; the ledger still records
    that the jobs share those ranges."""
    if not plan.catch_up:
        return claims
    return [c for c in claims if c.get("migration") != migration]


def refuse_point_overlap(
    plan: TablePlan, job_id: str, claims: list[dict], where: str = "this job's chunks"
) -> None:
    """Refuse InfluxDB points over measurement time ranges other live jobs loaded
    (`Ledger.point_claims`), naming each job, measurement and range."""
    if not claims:
        return
    by_job: dict[str, dict] = {}
    for c in claims:
        entry = by_job.setdefault(c["job_id"], {"status": c["job_status"], "ranges": []})
        entry["ranges"].append(
            f"{','.join(c['measurements'] or [])} [{c['lower_bound']}, {c['upper_bound']})"
        )
    lines = [
        f"job {other} ({e['status']}) loaded {_some(e['ranges'])}; {other_job_options(other, e['status'])}"
        for other, e in sorted(by_job.items())
    ]
    raise TargetGuardError(
        f"refusing to write points of {plan.spec.name} into {plan.target.schema_name}: {where} overlap "
        "measurement time ranges other jobs loaded and still claim (a rollback of either job would "
        "delete the other's points).\n  "
        + "\n  ".join(lines)
        + "\nOr pick a start_time/end_time that does not overlap, or set allow_rewrite_loaded_points: true "
        f"on table {plan.spec.name} to write them anyway: points with the same series and time are "
        "overwritten, and the ledger records that both jobs share those ranges."
    )
