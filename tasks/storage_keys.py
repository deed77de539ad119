"""Names that become file paths and object keys: staged files and persisted task results.

A job id is checked before a run starts; a table name, which comes from the source, is
percent-encoded where a path would read it as structure, so every file stays in its job's
folder.
"""

from __future__ import annotations

import re

from blocks.errors import ConfigError

_UNSAFE = re.compile(r"[%/\\\x00-\x1f\x7f]|^\.\.?$")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


def path_segment(name: str) -> str:
    """`name` with "/", "\\", "%" and control characters percent-encoded, and "." or ".."
    encoded whole: one path segment, whatever the name."""
    return _UNSAFE.sub(lambda m: "".join(f"%{ord(ch):02X}" for ch in m.group()), name)


def check_job_id(job_id: str | None) -> None:
    """Raise `ConfigError` unless `job_id` (when given) is 1-128 letters, digits and `._:@+-`,
    starting with a letter or digit: it names folders, object keys and Prefect tags."""
    if job_id is not None and not _JOB_ID.fullmatch(job_id):
        raise ConfigError(
            f"job_id {job_id!r} is not a valid job id: use 1-128 letters, digits and . _ : @ + -, "
            "starting with a letter or digit"
        )
