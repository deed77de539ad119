"""The statuses a job and its chunks go through in the ledger, whichever database keeps it."""

from __future__ import annotations

# A job that stopped before it finished; a run with its job_id resumes it.
UNFINISHED = ("running", "failed", "crashed", "cancelled")
# Job statuses a later job can cause: `incomplete` (a forced rollback of another job removed
# some of its data; a run with its job_id loads those chunks again) and `superseded` (another
# job's `replace` truncated its rows away; it never loads again).
# Chunk statuses beyond planned/loaded/rolled_back: `removed` (its data was deleted by another
# job's forced rollback; a resume loads it again) and `superseded` (truncated by another job's
# `replace`; never loaded again).
RELOADABLE = "removed"
SUPERSEDED = "superseded"
# A job a run can still pick up again with its job_id.
RESUMABLE = (*UNFINISHED, "incomplete")
