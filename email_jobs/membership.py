"""Cohort membership history and the diff between two evaluations.

Membership is recorded per campaign and evaluation instant in `nudge.cohort_membership`, so that
"who entered" is always now minus the campaign's previous evaluation, whatever the gap between
them and in whatever order instants are evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from email_jobs.campaigns import Campaign, CampaignError
from nudge.warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Diff:
    entered: frozenset[str]
    exited: frozenset[str]


def diff_members(previous: Iterable[str], now: Iterable[str]) -> Diff:
    prev, cur = frozenset(previous), frozenset(now)
    return Diff(entered=cur - prev, exited=prev - cur)


def _email_rank(row: dict[str, Any]) -> tuple[int, str]:
    email = row.get("email")
    blank = email is None or str(email).strip() == ""
    return (1, "") if blank else (0, str(email))


def read_cohort(wh: Warehouse, campaign: Campaign) -> dict[str, dict[str, Any]]:
    """entity_id -> the cohort row, read from the campaign's cohort relation.

    A cohort has one row per member; when a model breaks that, the row with the smallest
    non-blank email wins (deterministic) and a warning says so.
    """
    relation = wh.relation(campaign.relation_name)
    try:
        rows = wh.fetchdicts(f"select * from {relation}")
    except Exception as exc:
        wh.rollback()  # Postgres: the failed statement aborted the transaction
        raise CampaignError(
            f"campaign {campaign.name!r}: cannot read cohort {campaign.cohort!r} at {relation} "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
            "has dbt built it?"
        ) from exc
    if rows:
        missing = [c for c in ("entity_id", "email") if c not in rows[0]]
        if missing:
            raise CampaignError(
                f"campaign {campaign.name!r}: cohort {campaign.cohort!r} ({relation}) has no "
                f"column {', '.join(missing)}"
            )
    members: dict[str, dict[str, Any]] = {}
    duplicates = 0
    nulls = 0
    for row in rows:
        if row["entity_id"] is None:
            nulls += 1
            continue
        entity_id = str(row["entity_id"])
        row = {**row, "entity_id": entity_id}
        if entity_id in members:
            duplicates += 1
            if _email_rank(row) >= _email_rank(members[entity_id]):
                continue
        members[entity_id] = row
    if duplicates or nulls:
        log.warning(
            "cohort %s: %d duplicate and %d null entity_id row(s) ignored; a cohort has one row "
            "per member",
            campaign.cohort,
            duplicates,
            nulls,
        )
    return members


def previous_evaluation(wh: Warehouse, campaign: str, end: datetime) -> datetime | None:
    """The campaign's latest completed evaluation at an instant before `end`."""
    row = wh.fetchone(
        "select max(as_of) from nudge.evaluations where campaign = ? and as_of < ?",
        [campaign, end],
    )
    return row[0] if row and row[0] is not None else None


def members_at(wh: Warehouse, campaign: str, as_of: datetime) -> set[str]:
    rows = wh.fetchall(
        "select entity_id from nudge.cohort_membership where campaign = ? and as_of = ?",
        [campaign, as_of],
    )
    return {r[0] for r in rows}


def record_membership(wh: Warehouse, campaign: Campaign, as_of: datetime) -> None:
    """Replace the campaign's membership at `as_of` with the cohort relation's rows (call inside
    the evaluation's transaction). Done in SQL: a cohort may have many members.

    One row per entity, chosen as `read_cohort` does (the smallest non-blank email).
    """
    relation = wh.relation(campaign.relation_name)
    wh.execute(
        "delete from nudge.cohort_membership where campaign = ? and as_of = ?",
        [campaign.name, as_of],
    )
    wh.execute(
        f"""
        insert into nudge.cohort_membership (campaign, cohort, as_of, entity_id, email)
        select ?, ?, ?, entity_id, email from (
            select entity_id, email, row_number() over (
                partition by entity_id
                order by case when email is null or trim(email) = '' then 1 else 0 end, email
            ) as rn
            from (
                select cast(entity_id as varchar) as entity_id, cast(email as varchar) as email
                from {relation} where entity_id is not null
            ) typed
        ) ranked
        where rn = 1
        """,
        [campaign.name, campaign.cohort, as_of],
    )
