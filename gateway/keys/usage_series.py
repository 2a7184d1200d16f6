"""A key's usage over time: the bounded window a query asks for, and its dense series of
hourly or daily points from the stored hourly rows (shared by the admin API and the CLI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.store.base import UsageHour

HOUR = 3600  # seconds
DAY = 86_400  # seconds
Step = Literal["hour", "day"]
STEPS: tuple[Step, ...] = ("hour", "day")
STEP_SECONDS: dict[Step, int] = {"hour": HOUR, "day": DAY}
# Points one query may answer (100 days of hours; longer windows take step=day).
MAX_USAGE_POINTS = 2400
# The window when `from` is not given: the 24 hours before `to`.
DEFAULT_WINDOW = DAY
# How far ahead of now `to` may reach (clock skew, a caller's time zone slip).
MAX_AHEAD = DAY

M_STEP = "step must be hour or day"
M_ORDER = "to must be after from"
M_AHEAD = "to must be at most a day after now"
M_POINTS = f"the window holds more than {MAX_USAGE_POINTS} points: narrow it or use step=day"


class UsageWindowError(ValueError):
    """A usage query out of its bounds: the message and the parameter at fault."""

    def __init__(self, message: str, field: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """A checked query: whole steps `first`..`last` (unix seconds // step seconds)."""

    step: Step
    first: int
    last: int

    @property
    def size(self) -> int:
        """Seconds per point."""
        return STEP_SECONDS[self.step]

    @property
    def first_hour(self) -> int:
        """The first stored hour the window covers."""
        return self.first * self.size // HOUR

    @property
    def last_hour(self) -> int:
        """The last stored hour the window covers."""
        return (self.last + 1) * self.size // HOUR - 1

    @property
    def start(self) -> float:
        """The window's start, unix seconds (a whole step)."""
        return float(self.first * self.size)

    @property
    def end(self) -> float:
        """The window's end, unix seconds (a whole step, exclusive)."""
        return float((self.last + 1) * self.size)


@dataclass(frozen=True, slots=True)
class UsagePointData:
    """One point of a series: its start and the counts of its hour or day."""

    start: float
    forwarded: int = 0
    denied: int = 0
    limited: int = 0
    upstream_errors: int = 0
    addresses: int = 0
    addresses_capped: bool = False


def usage_window(
    start: float | None, end: float | None, step: str, now: float, keep_days: int
) -> UsageWindow:
    """Check a query (from, to, step) against the retention and the bounds; return it in
    whole steps (from rounded down, to up). Raise UsageWindowError."""
    chosen = next((s for s in STEPS if s == step), None)
    if chosen is None:
        raise UsageWindowError(M_STEP, "step")
    end = now if end is None else end
    start = end - DEFAULT_WINDOW if start is None else start
    if end <= start:
        raise UsageWindowError(M_ORDER, "to")
    if end > now + MAX_AHEAD:
        raise UsageWindowError(M_AHEAD, "to")
    oldest = (int(now) // HOUR - keep_days * 24) * HOUR
    if start < oldest:
        raise UsageWindowError(
            f"from must be within usage.keep_days ({keep_days} days) before now", "from"
        )
    size = STEP_SECONDS[chosen]
    first = int(start // size)
    last = math.ceil(end / size) - 1
    if last - first + 1 > MAX_USAGE_POINTS:
        raise UsageWindowError(M_POINTS, "from")
    return UsageWindow(chosen, first, last)


def usage_series(rows: Sequence[UsageHour], window: UsageWindow) -> list[UsagePointData]:
    """Return one point per step of `window` (zeros where nothing was counted).

    A day's counts are its hours' sums; its addresses are its busiest hour's (an address
    calling every hour is one address, not 24), and it is capped when any hour was.
    """
    size = window.size
    merged: dict[int, list[int]] = {}
    for row in rows:
        slot = row.hour * HOUR // size
        if not window.first <= slot <= window.last:
            continue
        counts = merged.setdefault(slot, [0, 0, 0, 0, 0, 0])
        counts[0] += row.forwarded
        counts[1] += row.denied
        counts[2] += row.limited
        counts[3] += row.upstream_errors
        counts[4] = max(counts[4], row.addresses)
        counts[5] = max(counts[5], int(row.addresses_capped))
    points = []
    for slot in range(window.first, window.last + 1):
        c = merged.get(slot)
        if c is None:
            points.append(UsagePointData(float(slot * size)))
        else:
            points.append(
                UsagePointData(float(slot * size), c[0], c[1], c[2], c[3], c[4], bool(c[5]))
            )
    return points
