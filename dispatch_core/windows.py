"""UTC calendar-aligned budget windows: a day budget resets at 00:00 UTC, a month on the 1st."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dispatch_core.policy import Window


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """One concrete window, e.g. day 2026-11-24T00:00Z .. 2026-11-25T00:00Z."""

    kind: Window
    start: datetime
    end: datetime
    id: str = field(init=False)  # stable text id used in ledger keys, e.g. ``day:20261124T0000``

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.kind}:{self.start.strftime('%Y%m%dT%H%M')}")

    def elapsed_fraction(self, now: datetime) -> float:
        total = (self.end - self.start).total_seconds()
        return min(1.0, max(0.0, (now - self.start).total_seconds() / total))


_LAST: dict[str, WindowSpan] = {}  # the window of each kind last asked for: nearly every call asks for it again


def window_at(kind: Window, now: datetime) -> WindowSpan:
    """The window of ``kind`` that contains ``now`` (which must be timezone-aware)."""
    last = _LAST.get(kind)
    if last is not None and last.start <= now < last.end:
        return last
    _LAST[kind] = span = _window(kind, now)
    return span


def _window(kind: Window, now: datetime) -> WindowSpan:
    now = now.astimezone(UTC)
    if kind == "minute":
        start = now.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif kind == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif kind == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return WindowSpan(kind, start, end)
