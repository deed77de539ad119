"""Time constants every system shares: the Unix epoch and how many nanoseconds each Arrow
time unit holds."""

from __future__ import annotations

from datetime import UTC, datetime

EPOCH = datetime(1970, 1, 1)  # naive, for timestamps without a time zone
EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
NS_PER_SECOND = 1_000_000_000
US_PER_SECOND = 1_000_000
NS_PER_UNIT = {"s": NS_PER_SECOND, "ms": 1_000_000, "us": 1_000, "ns": 1}
