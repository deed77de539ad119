"""One result row per measurement, the printed table, and the machine it ran on."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass
class Row:
    measure: str
    value: str
    anchor: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"  # "yes", "no", or "-" where no target was set


def met(ok: bool) -> str:
    return "yes" if ok else "no"


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or "?",
    )
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kb / 1024**2:.1f} GiB RAM, "
        f"load average at start {load}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def markdown(rows: list[Row]) -> str:
    head = ["measure", "value", "anchor", "ratio", "target", "met"]
    cells = [head, ["---"] * len(head)] + [
        [r.measure, r.value, r.anchor, r.ratio, r.target, r.met] for r in rows
    ]
    return "\n".join("| " + " | ".join(c) + " |" for c in cells)
