"""The evaluation instant (contract: "The evaluation instant")."""

from __future__ import annotations

import re
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
