"""CPU seconds the bench's servers have used so far, read from /proc: a cost that other
processes on the machine do not inflate the way they inflate wall time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bench.stack import Stack

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[int]:
    """utime, stime, cutime, cstime of `pid` in clock ticks ([] once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces
    return [int(x) for x in fields[11:15]]


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def postgres_seconds(stack: Stack) -> float:
    """The PostgreSQL cluster's CPU: the postmaster, its live processes, and (in cutime and
    cstime) every backend it has reaped, so a flow's connections count once they closed."""
    postmaster = int((stack.pg.data / "postmaster.pid").read_text().split()[0])
    ticks = sum(_stat(postmaster))
    ticks += sum(sum(_stat(child)[:2]) for child in _children(postmaster))
    return ticks / TICK


def influxdb_seconds(stack: Stack) -> float:
    return sum(_stat(stack.influx.proc.pid)[:2]) / TICK


def seconds(stack: Stack, *servers: Callable[[Stack], float]) -> float:
    return sum(server(stack) for server in servers)
