"""Where a profiled flow run's time went: py-spy's collapsed stacks (every thread, idle ones too),
summed per function, in seconds of thread time.

    .venv/bin/python -m bench.profile_summary bench/out/<job_id>-<time>.txt [TOP]

Lists this project's functions (blocks/, tasks/, flows/) by time on the stack, then the leaf
functions (where a thread actually was: computing, or waiting on a socket or lock) of stacks
that pass through this project's code.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

RATE = 100  # samples per second per thread, as bench.migrate_runs records them
OURS = re.compile(r"\((?:.*/)?(blocks|tasks|flows)/(?:[^/]+/)?[^/]+\.py[:)]")


def summarize(path: str, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        ours = {f for f in frames if OURS.search(f)}
        for frame in ours:
            inclusive[frame] += n
        if ours:
            leaves[frames[-1]] += n
    lines = ["seconds on the stack, this project's code:"]
    lines += [f"  {n / RATE:8.2f}  {f}" for f, n in inclusive.most_common(top)]
    lines += ["", "seconds at the leaf, under this project's code:"]
    lines += [f"  {n / RATE:8.2f}  {f}" for f, n in leaves.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1], *(int(a) for a in sys.argv[2:3])))
