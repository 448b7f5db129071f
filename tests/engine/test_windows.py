"""Budget windows: calendar-aligned in UTC, and the same span whichever order instants are asked in."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dispatch_core.windows import window_at

T = datetime(2026, 11, 24, 23, 59, 59, 999_999, tzinfo=UTC)


@pytest.mark.parametrize("kind,start,end", [
    ("minute", datetime(2026, 11, 24, 23, 59, tzinfo=UTC), datetime(2026, 11, 25, 0, 0, tzinfo=UTC)),
    ("hour", datetime(2026, 11, 24, 23, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC)),
    ("day", datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC)),
    ("month", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
])
def test_the_window_of_an_instant_and_the_next_one_across_its_end(kind, start, end):
    span = window_at(kind, T)
    assert (span.start, span.end) == (start, end)
    assert window_at(kind, start) == span  # the start belongs to it
    after = window_at(kind, end)  # the end belongs to the next one
    assert after.start == end and after.id != span.id
    assert window_at(kind, T) == span  # asked again after the next one: the same span


def test_an_instant_in_another_zone_falls_in_its_utc_window():
    berlin = timezone(timedelta(hours=1))
    span = window_at("day", datetime(2026, 11, 25, 0, 30, tzinfo=berlin))  # 23:30 UTC on the 24th
    assert span.start == datetime(2026, 11, 24, tzinfo=UTC) and span.id == "day:20261124T0000"
    assert window_at("month", datetime(2026, 12, 31, 23, 0, tzinfo=UTC)).end == datetime(2027, 1, 1, tzinfo=UTC)
