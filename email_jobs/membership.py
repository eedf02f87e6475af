"""A campaign's cohort as the evaluation reads it: one row per member.

Membership is recorded per campaign and evaluation instant in `nudge.cohort_membership`
(email_jobs.store), so that "who entered" (email_jobs.decisions.who_entered) is always now minus
the campaign's previous evaluation, whatever the gap between them and in whatever order
instants are evaluated.
"""

from __future__ import annotations

import logging
from typing import Any

from email_jobs.campaigns import Campaign, CampaignError
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)


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
