"""The evaluation instant (contract: "The evaluation instant"): parsed, written, and read
from a run. Every job, sensor and command resolves it here, from one run tag or a day partition."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_as_of(value: str | None, now: datetime | None = None) -> datetime:
    """`end` as a naive UTC datetime.

    A date means the end of that UTC day (the next midnight); a datetime is `end` itself;
    None means now.
    """
    if value is None or value == "":
        end = now or datetime.now(UTC)
    elif _DATE.match(value):
        end = datetime.combine(date.fromisoformat(value), datetime.min.time()) + timedelta(days=1)
    else:
        try:
            end = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--as-of {value!r}: use a date (2026-01-31) or an ISO 8601 datetime "
                "(2026-01-31T12:00:00Z)"
            ) from None
    if end.tzinfo is not None:
        end = end.astimezone(UTC).replace(tzinfo=None)
    return end


def to_iso(end: datetime) -> str:
    """The form dbt's `nudge_as_of` var and run tags carry: ISO 8601 UTC with Z."""
    return end.replace(microsecond=end.microsecond).isoformat(timespec="seconds") + "Z"


# The one run tag that carries an instant; a day partition carries one by its key.
AS_OF_TAG = "nudge/as_of"


def instant_of(tags: Mapping[str, str], partition_key: str | None = None) -> datetime | None:
    """A run's evaluation instant: its `nudge/as_of` tag, else the end of its day partition
    (a date means the end of that day), else None (no instant: `nudge release`, say)."""
    value = tags.get(AS_OF_TAG) or partition_key
    return parse_as_of(value) if value else None


def instant_tags(end: datetime) -> dict[str, str]:
    """The tags a run evaluating at `end` carries (and hands to the runs it starts)."""
    return {AS_OF_TAG: to_iso(end)}


def day_partition(end: datetime) -> str:
    """The day partition an instant closes: the end of 2026-03-11 is 2026-03-12T00:00."""
    return (end - timedelta(microseconds=1)).date().isoformat()
