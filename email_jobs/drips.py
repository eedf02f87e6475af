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

from email_jobs import store
from email_jobs.campaigns import Campaign
from email_jobs.decisions import decide_step, due_step, goal_met
from email_jobs.guards import GuardInputs
from email_jobs.ledger import NewEntry, entry_row, ledger_key
from email_jobs.recipients import message_recipients
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

LATE_LIMIT = timedelta(days=30)


def step_campaign(campaign: Campaign, step: int) -> Campaign:
    """The campaign as it renders step `step` (its template); itself when it has no steps."""
    if not campaign.steps or step <= 0 or step >= len(campaign.steps):
        return campaign
    return replace(campaign, template=campaign.steps[step].template)


def due_step_entries(
    wh: Warehouse,
    campaign: Campaign,
    members: dict[str, dict[str, Any]],
    end: datetime,
    evaluation_id: str,
    guard_inputs: GuardInputs,
    *,
    state_db: Warehouse | None = None,
) -> list[NewEntry]:
    """Ledger rows for the drip steps this evaluation finds due (see the module docstring).
    The goal model is read from the warehouse `wh`, the ledger from `state_db` (default `wh`)."""
    state_db = wh if state_db is None else state_db
    if len(campaign.steps) < 2 or guard_inputs.stale_reason:
        return []
    since = end - timedelta(days=campaign.steps[-1].delay_days) - LATE_LIMIT
    entries: dict[tuple[str, datetime], dict[int, tuple[str, str]]] = defaultdict(dict)
    for entity_id, entry_as_of, step, state, eval_id in store.drip_rows(
        state_db, campaign.name, since, end
    ):
        entries[(entity_id, entry_as_of)][step] = (state, eval_id)
    delays = [s.delay_days for s in campaign.steps]
    # The goal model's conversions; none for the default goal (leaving the cohort, which the
    # membership check below already stops the drip on).
    conversions = (
        store.goal_conversions(wh, wh.relation(campaign.goal.relation), since, end)
        if campaign.goal.relation
        else {}
    )

    suppressed: set[str] | None = None
    result: list[NewEntry] = []
    for (entity_id, entry_as_of), steps in sorted(entries.items()):
        step = due_step(
            steps,
            entry_as_of=entry_as_of,
            delays_days=delays,
            end=end,
            evaluation_id=evaluation_id,
            late_limit=LATE_LIMIT,
        )
        if step is None:
            continue
        if entity_id not in members or store.absent_since(
            state_db, campaign.name, entity_id, entry_as_of, end
        ):
            continue  # left the cohort: the drip stops here
        if goal_met(conversions.get(entity_id, ()), entry_as_of=entry_as_of, end=end):
            continue  # the goal was met after the entry: the drip has done its work
        if suppressed is None:
            suppressed = store.suppressed_emails(state_db)
        row = members[entity_id]
        decision = decide_step(
            entity_id,
            ledger_key(campaign.name, entity_id, entry_as_of, step),
            row.get("email"),
            message_recipients(campaign, row),
            suppressed=suppressed,
            broken_export=bool(guard_inputs.broken_export_reason),
        )
        result.append(entry_row(decision, campaign.name, entry_as_of, step, evaluation_id, row))
    if result:
        log.info("campaign %s: %d drip step(s) due at %s", campaign.name, len(result), end)
    return result
