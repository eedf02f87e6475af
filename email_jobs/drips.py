"""Drip sequences: later steps of a campaign, sent only while the member stays in the cohort.

A campaign with `steps: [{template: a, delay_days: 0}, {template: b, delay_days: 3}, ...]` sends
step 0 at entry (the ordinary entry email). Step k of an entry at instant E becomes due at
`E + delay_days(k)`; the first evaluation at an instant >= that finds it due and records a ledger
row for it (key `campaign|entity|E|k`) when all of these hold:

- the member is in the cohort now and was in it at every evaluation of the campaign since E
  (a user who activates leaves `not_activated`, and the rest of its drip is never sent);
- step k - 1 was sent (skipped or failed ends the drip; pending, held or unknown wait), and was
  recorded by an earlier evaluation: one step per entry per evaluation instant;
- the campaign's goal was not met since the entry: with a goal model, no `converted_at` of the
  entity in (E, now] (a held-out entry is never sent, so its drip never starts).

Everything is decided from evaluation instants and the ledger, never the wall clock, so a replay
decides the same way. A stale evaluation (a backfill) records no drip steps: the evaluations at the
data's own time decide them. A step found due more than LATE_LIMIT after its time (evaluations
stopped for weeks) is dropped: a follow-up that late no longer follows anything. Suppressed or
address-less members are recorded as skipped, like entries; when the broken-export guard fires
the steps are held.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from email_jobs.addresses import normalize_address
from email_jobs.campaigns import Campaign
from email_jobs.guards import GuardInputs
from email_jobs.ledger import NewEntry, State, ledger_key, payload_json, suppressed_emails
from email_jobs.recipients import drop_suppressed, dropped_json, message_recipients
from nudge.warehouse import Warehouse

log = logging.getLogger(__name__)

LATE_LIMIT = timedelta(days=30)


def step_campaign(campaign: Campaign, step: int) -> Campaign:
    """The campaign as it renders step `step` (its template); itself when it has no steps."""
    if not campaign.steps or step <= 0 or step >= len(campaign.steps):
        return campaign
    return replace(campaign, template=campaign.steps[step].template)


def step_due_at(campaign: Campaign, entry_as_of: datetime, step: int) -> datetime:
    return entry_as_of + timedelta(days=campaign.steps[step].delay_days)


def _stayed_in(
    wh: Warehouse, campaign: str, entity_id: str, since: datetime, end: datetime
) -> bool:
    """Was the entity a member at every evaluation of the campaign in (since, end)?"""
    row = wh.fetchone(
        """
        select count(*) from nudge.evaluations ev
        where ev.campaign = ? and ev.as_of > ? and ev.as_of < ?
          and not exists (
            select 1 from nudge.cohort_membership m
            where m.campaign = ev.campaign and m.as_of = ev.as_of and m.entity_id = ?
          )
        """,
        [campaign, since, end, entity_id],
    )
    return not row or int(row[0]) == 0


def _conversions(
    wh: Warehouse, campaign: Campaign, since: datetime, end: datetime
) -> dict[str, list[datetime]]:
    """Per entity, the goal model's conversion instants in (since, end]; {} for the default
    goal (leaving the cohort, which `_stayed_in` already stops the drip on)."""
    if not campaign.goal.relation:
        return {}
    # The relation comes from dbt's manifest (a quoted relation name), never from a person.
    relation = wh.relation(campaign.goal.relation)
    rows = wh.fetchall(
        f"select cast(entity_id as varchar), converted_at from {relation} "
        "where converted_at > ? and converted_at <= ?",
        [since, end],
    )
    out: dict[str, list[datetime]] = defaultdict(list)
    for entity_id, converted_at in rows:
        out[entity_id].append(converted_at)
    return out


def due_step_entries(
    wh: Warehouse,
    campaign: Campaign,
    members: dict[str, dict[str, Any]],
    end: datetime,
    evaluation_id: str,
    guard_inputs: GuardInputs,
) -> list[NewEntry]:
    """Ledger rows for the drip steps this evaluation finds due (see the module docstring)."""
    if len(campaign.steps) < 2 or guard_inputs.stale_reason:
        return []
    since = end - timedelta(days=campaign.steps[-1].delay_days) - LATE_LIMIT
    rows = wh.fetchall(
        "select entity_id, entry_as_of, step, state, evaluation_id from nudge.send_ledger "
        "where campaign = ? and entry_as_of >= ? and entry_as_of < ?",
        [campaign.name, since, end],
    )
    entries: dict[tuple[str, datetime], dict[int, tuple[str, str]]] = defaultdict(dict)
    for entity_id, entry_as_of, step, state, eval_id in rows:
        entries[(entity_id, entry_as_of)][int(step)] = (state, eval_id)

    conversions = _conversions(wh, campaign, since, end)
    suppressed: set[str] | None = None
    result: list[NewEntry] = []
    for (entity_id, entry_as_of), steps in sorted(entries.items()):
        if 0 not in steps:
            continue
        step = max(steps) + 1
        if step >= len(campaign.steps):
            continue
        due = step_due_at(campaign, entry_as_of, step)
        if due > end or end - due > LATE_LIMIT:
            continue
        previous_state, previous_eval = steps[step - 1]
        if previous_state != State.SENT or previous_eval == evaluation_id:
            continue
        if entity_id not in members or not _stayed_in(
            wh, campaign.name, entity_id, entry_as_of, end
        ):
            continue  # left the cohort: the drip stops here
        if any(entry_as_of < t <= end for t in conversions.get(entity_id, ())):
            continue  # the goal was met after the entry: the drip has done its work
        if suppressed is None:
            suppressed = suppressed_emails(wh)
        row = members[entity_id]
        email = row.get("email")
        address = normalize_address(email)
        kept, dropped = drop_suppressed(message_recipients(campaign, row), suppressed)
        state, reason = State.PENDING, None
        if email is None or str(email).strip() == "":
            state, reason = State.SKIPPED, "no_email"
        elif address is None:
            state, reason = State.SKIPPED, "invalid_email"
        elif not kept.to:  # a suppressed address is dropped; no To left: nothing to send
            state, reason = State.SKIPPED, "suppressed"
        elif guard_inputs.broken_export_reason:
            state, reason = State.HELD, "broken_export"
        if kept.to:
            address = kept.to[0]
        result.append(
            NewEntry(
                ledger_key=ledger_key(campaign.name, entity_id, entry_as_of, step),
                campaign=campaign.name,
                entity_id=entity_id,
                entry_as_of=entry_as_of,
                step=step,
                evaluation_id=evaluation_id,
                state=state,
                reason=reason,
                recipient=address or (str(email).strip() if email else None),
                payload=payload_json(row),
                suppressed_recipients=dropped_json(dropped) if reason in (None, "suppressed")
                or state == State.HELD else None,
            )
        )
    if result:
        log.info("campaign %s: %d drip step(s) due at %s", campaign.name, len(result), end)
    return result
