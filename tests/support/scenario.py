"""A hand-built landing folder with users on each side of every cohort boundary.

The acceptance scenario of the spine (see tests/e2e/test_acceptance.py): evaluations at the end of
2026-03-10 (baseline), 03-11 (twice), 03-12, 03-19 and 03-20, with dump folders landing day by day
as they would in production.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

FIRST_DAY = date(2026, 2, 8)
SE = "se-jane@vendor.example"


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def event(
    user_id: str | None,
    t: datetime,
    status: int = 200,
    uri: str = "https://api.example.com/v1/widgets?limit=5",
    verb: str = "GET",
    company_id: str | None = None,
    transaction_id: str | None = None,
) -> dict[str, Any]:
    tid = transaction_id or str(uuid.uuid4())
    return {
        "request": {
            "time": _iso(t),
            "uri": uri,
            "verb": verb,
            "headers": {"Host": "api.example.com", "X-Moesif-Transaction-Id": str(uuid.uuid4())},
            "api_version": "1.4.0",
            "ip_address": "203.0.113.7",
            "body": None,
            "transfer_encoding": None,
        },
        "response": {
            "time": _iso(t + timedelta(milliseconds=12)),
            "status": status,
            "headers": {"Content-Type": "application/json"},
            "body": {"ok": status < 400},
            "transfer_encoding": "json",
        },
        "user_id": user_id,
        "company_id": company_id,
        "session_token": None,
        "tags": None,
        "metadata": {"service": "widgets-api"},
        "direction": "Incoming",
        "weight": 1,
        "blocked_by": None,
        "transaction_id": tid,
    }


def burst(
    user_id: str, day: date, n: int, statuses: Iterable[int], uri: str, verb: str = "GET"
) -> list[dict[str, Any]]:
    """n events spread over `day` (from 01:00), cycling through `statuses`."""
    statuses = list(statuses)
    start = datetime.combine(day, datetime.min.time()) + timedelta(hours=1)
    return [
        event(user_id, start + timedelta(seconds=20 * i), statuses[i % len(statuses)], uri, verb)
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def user(uid: str, signup: datetime, email: str | None, company: str, first: str) -> dict:
    meta: dict[str, Any] = {"first_name": first, "last_name": "Tester"}
    meta["created"] = signup.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if email:
        meta["email"] = email
    return {
        "user_id": uid,
        "company_id": company,
        "modified_time": "2026-01-01T00:00:00+00:00",
        "metadata": meta,
    }


def minute(d: date, hh: int = 0, mm: int = 0) -> datetime:
    return datetime.combine(d, datetime.min.time()) + timedelta(hours=hh, minutes=mm)


D = date  # short alias for the scenario tables below


def write_profiles(landing: Path) -> None:
    users = [
        # Background traffic: a long-active user, never in a cohort.
        user("u_bg", minute(D(2025, 6, 1)), "bg@acme.example", "c_acme", "Bea"),
        # Not activated: 1 minute inside the 7-day bound at the end of 03-11 -> enters then.
        user("ua_in", minute(D(2026, 3, 4), 23, 59), "ua.in@acme.example", "c_acme", "Ana"),
        # Exactly at end-7d at the end of 03-11 (out: strict), inside a day later -> enters 03-12.
        user("ua_edge", minute(D(2026, 3, 5)), "ua.edge@acme.example", "c_acme", "Eve"),
        # Signed up like ua_in but called the API once: never a member.
        user("ua_active", minute(D(2026, 3, 4), 23, 59), "ua.active@acme.example", "c_acme", "Al"),
        # Exactly end-28d at the end of 03-11: a member at the baseline, leaves on 03-11.
        user("ua_old", minute(D(2026, 2, 12)), "ua.old@acme.example", "c_acme", "Olga"),
        # Enters with ua_in but has no address: skipped, not sent.
        user("ua_noemail", minute(D(2026, 3, 4), 23, 59), None, "c_acme", "Nemo"),
        # 4xx storms.
        user("ux_1000", minute(D(2025, 1, 1)), "ux.1000@acme.example", "c_acme", "Max"),
        user("ux_999", minute(D(2025, 1, 1)), "ux.999@acme.example", "c_acme", "Nina"),
        user("ux_late", minute(D(2025, 1, 1)), "ux.late@beta.example", "c_beta", "Lea"),
        user("ux_dup", minute(D(2025, 1, 1)), "ux.dup@acme.example", "c_acme", "Dua"),
    ]
    write_jsonl(landing / "users" / "users.jsonl", users)
    companies = [
        {
            "company_id": "c_acme",
            "company_domain": "acme.example",
            "modified_time": "2026-01-01T00:00:00Z",
            "metadata": {"plan": "pro", "solutions_engineer_email": SE},
        },
        {
            "company_id": "c_beta",
            "company_domain": "beta.example",
            "modified_time": "2026-01-01T00:00:00",
            "metadata": {"plan": "free"},
        },
    ]
    write_jsonl(landing / "companies" / "companies.jsonl", companies)


def background(day: date) -> list[dict[str, Any]]:
    start = minute(day)
    return [event("u_bg", start + timedelta(minutes=29 * i)) for i in range(48)]


def land_day(landing: Path, day: date) -> None:
    """The dump folder of `day` as it arrives: background traffic plus the day's storms."""
    folder = landing / "events" / f"dt={day.isoformat()}"
    rows = background(day)
    extra: list[dict[str, Any]] = []
    if day == D(2026, 3, 8):
        rows.append(event("ua_active", minute(day, 10)))
    if day == D(2026, 3, 11):
        extra += burst("ux_1000", day, 1000, [404], "https://api.example.com/v1/widgets/105?x=1")
        # 999 counted errors, plus statuses that must not count.
        extra += burst("ux_999", day, 999, [400, 405], "https://api.example.com/v1/orders", "POST")
        extra += burst("ux_999", day, 300, [401, 403, 422], "https://api.example.com/v1/orders")
        extra += burst("ux_late", day, 600, [404], "https://api.example.com/v1/widgets/7")
        dup = burst("ux_dup", day, 1000, [404], "https://api.example.com/v1/things/1")
        extra += dup[:999]
        # The 1000th ux_dup event is a copy of one already sent: deduplicated, so 999 count.
        write_jsonl(folder / "part-2.jsonl.gz", [dup[0]], gz=True)
    if day == D(2026, 3, 12):
        # Late events: their time is 03-11, they arrive in the 03-12 dump.
        extra += burst(
            "ux_late", D(2026, 3, 11), 400, [404], "https://api.example.com/v1/widgets/8"
        )
    if day == D(2026, 3, 20):
        extra += burst("ux_1000", day, 1000, [404], "https://api.example.com/v1/widgets/9")
    write_jsonl(folder / "part-0.jsonl", rows)
    if extra:
        write_jsonl(folder / "part-1.jsonl", extra)
    if day == D(2026, 3, 11):
        # One malformed line among the good ones: quarantined, the rest of the file loads.
        with (folder / "part-0.jsonl").open("a") as f:
            f.write('{"request": {"time": "2026-03-11T05:00:00"}, "user_id": \n')


def land_until(landing: Path, last: date, first: date = FIRST_DAY) -> None:
    """Land every day's folder from `first` to `last` that is not there yet."""
    d = first
    while d <= last:
        if not (landing / "events" / f"dt={d.isoformat()}").exists():
            land_day(landing, d)
        d += timedelta(days=1)


# -- what the acceptance run sends ------------------------------------------------------------

Email = tuple[str, str, str, str]  # (to, cc, campaign, entity)

# Evaluation day -> the emails that evaluation sends (cumulative sets are compared).
EXPECTED: list[tuple[date, set[Email]]] = [
    (date(2026, 3, 10), set()),  # baseline of both campaigns: sends nothing
    (
        date(2026, 3, 11),
        {
            ("ua.in@acme.example", "", "not_activated_7d", "ua_in"),
            ("ux.1000@acme.example", SE, "too_many_4xx_7d", "ux_1000"),
        },
    ),
    (date(2026, 3, 11), set()),  # the same evaluation again: nothing twice
    (
        date(2026, 3, 12),
        {
            ("ua.edge@acme.example", "", "not_activated_7d", "ua_edge"),
            ("ux.late@beta.example", "", "too_many_4xx_7d", "ux_late"),
        },
    ),
    (date(2026, 3, 19), set()),  # a week later: ux_1000 and ux_late have left
    (date(2026, 3, 20), set()),  # ux_1000 re-enters 9 days after its email: cooldown
]
