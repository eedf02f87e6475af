"""Evaluate one campaign at one instant: membership, entries, and a ledger row per entry.

Contract sections "Emails: only to newly entered members" and "Guards". Everything an
evaluation writes (membership, ledger rows, the evaluation row) lands in one transaction, so an
evaluation is either completed or absent; "the previous evaluation" is always a completed one.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from email_jobs.addresses import normalize_address
from email_jobs.campaigns import Campaign
from email_jobs.drips import due_step_entries
from email_jobs.guards import (
    EvaluationDeferred,
    GuardInputs,
    blast_radius_reason,
    compute_guard_inputs,
)
from email_jobs.holdout import HOLDOUT_REASON, in_holdout
from email_jobs.ledger import (
    NO_COOLDOWN_STATES,
    NewEntry,
    State,
    addresses_at,
    cooldown_blockers,
    ensure_schema,
    evaluation_id,
    existing_keys,
    insert_entries,
    ledger_key,
    payload_json,
    suppressed_emails,
    utcnow,
)
from email_jobs.membership import (
    diff_members,
    members_at,
    previous_evaluation,
    read_cohort,
    record_membership,
)
from email_jobs.recipients import add_contacts, drop_suppressed, dropped_json, message_recipients
from nudge.asof import to_iso
from nudge.settings import Settings
from nudge.warehouse import Warehouse

__all__ = [
    "EvaluationDeferred",
    "EvaluationResult",
    "GuardInputs",
    "compute_guard_inputs",
    "evaluate_campaign",
    "skip_reason",
]

log = logging.getLogger(__name__)

STEP = 0  # drips will add steps


@dataclass(frozen=True)
class EvaluationResult:
    campaign: str
    cohort: str
    as_of: datetime
    evaluation_id: str
    kind: Literal["baseline", "diff"]
    previous_as_of: datetime | None
    members: int
    entered: int
    exited: int
    counts: dict[str, int]  # this evaluation's entries by ledger state
    skip_reasons: dict[str, int]  # skipped entries by reason
    guard_reasons: list[str]  # human sentences, one per guard that fired
    guards: dict[str, str]  # guard name (stale, broken_export, blast_radius) -> its sentence
    ledger_keys: list[str]
    new_ledger_rows: int = 0
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs."""
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "no entries"
        guards = "".join(f"; {r}" for r in self.guard_reasons)
        previous = to_iso(self.previous_as_of) if self.previous_as_of else "none"
        return (
            f"campaign {self.campaign} at {to_iso(self.as_of)} ({self.kind}, previous {previous}): "
            f"{self.members} members, {self.entered} entered, {self.exited} exited; "
            f"{states}{guards}"
        )

    def metadata(self) -> dict[str, Any]:
        """Flat, JSON-friendly values for Dagster metadata."""
        return {
            "campaign": self.campaign,
            "as_of": to_iso(self.as_of),
            "kind": self.kind,
            "previous_as_of": to_iso(self.previous_as_of) if self.previous_as_of else None,
            "members": self.members,
            "entered": self.entered,
            "exited": self.exited,
            **{f"ledger_{state}": n for state, n in sorted(self.counts.items())},
            "guard_reasons": "\n".join(self.guard_reasons),
        }


def skip_reason(
    email: Any,
    *,
    stale: bool,
    suppressed: set[str],
    in_cooldown: bool,
    to: Sequence[str] | None = None,
) -> str | None:
    """Why an entry is recorded as skipped, checked in the contract's order; None: not skipped.

    `to`: every To address of the message (a company email's contacts; default `email` alone).
    A suppressed address is dropped from the message; the entry is suppressed only when no To
    address is left."""
    if stale:
        return "stale"
    if email is None or str(email).strip() == "":
        return "no_email"
    address = normalize_address(str(email))
    if address is None:
        return "invalid_email"
    addresses = [a.lower() for a in to] if to else [address.lower()]
    if all(a in suppressed for a in addresses):
        return "suppressed"
    if in_cooldown:
        return "cooldown"
    return None


def _held_reason(
    campaign: Campaign,
    guard: GuardInputs,
    settings: Settings,
    sendable: int,
    entered: int,
    members: int,
) -> tuple[str | None, dict[str, str]]:
    """(the ledger reason for held rows, {guard: sentence}) for the holding guards that fire."""
    fired: dict[str, str] = {}
    if guard.broken_export_reason:
        fired["broken_export"] = guard.broken_export_reason
    blast = blast_radius_reason(
        campaign.name,
        sendable=sendable,
        entered=entered,
        members=members,
        max_sends=(
            campaign.max_sends_per_evaluation
            if campaign.max_sends_per_evaluation is not None
            else settings.max_sends_per_evaluation
        ),
        max_entry_share=(
            campaign.max_entry_share
            if campaign.max_entry_share is not None
            else settings.max_entry_share
        ),
    )
    if blast:
        fired["blast_radius"] = blast
    return (next(iter(fired), None), fired)


def evaluate_campaign(
    wh: Warehouse,
    campaign: Campaign,
    end: datetime,
    settings: Settings,
    run_id: str,
    *,
    rejected_share: float | None = None,
    guard_inputs: GuardInputs | None = None,
) -> EvaluationResult:
    """Evaluate `campaign` at `end` (naive UTC); raises EvaluationDeferred when the freshness
    guard fires (then nothing is recorded). Pass `guard_inputs` from `compute_guard_inputs` to
    share one computation across the campaigns of a run; otherwise they are computed here, with
    `rejected_share` (or the ingest of `run_id`) for the broken-export guard."""
    if end.tzinfo is not None:
        raise ValueError(f"evaluation instant {end!r} must be naive UTC")
    if not campaign.enabled:  # callers skip disabled campaigns; nothing may record one
        raise ValueError(f"campaign {campaign.name} is disabled: it is not evaluated")
    if guard_inputs is None:
        guard_inputs = compute_guard_inputs(
            wh, end, settings, run_id=run_id, rejected_share=rejected_share
        )
    elif guard_inputs.end != end:
        raise ValueError(f"guard inputs were computed for {guard_inputs.end}, not {end}")
    if guard_inputs.deferred_reason:
        raise EvaluationDeferred(guard_inputs.deferred_reason)

    ensure_schema(wh)
    name = campaign.name
    members = add_contacts(wh, campaign, read_cohort(wh, campaign))
    previous = previous_evaluation(wh, name, end)
    diff = diff_members(members_at(wh, name, previous) if previous else set(), members)
    baseline = previous is None and campaign.baseline_first_run
    eval_id = evaluation_id(name, end)

    guards: dict[str, str] = {}
    if guard_inputs.stale_reason:
        guards["stale"] = guard_inputs.stale_reason
    new_entries: list[NewEntry] = []
    entry_keys: list[str] = []
    if not baseline:
        entered = sorted(diff.entered)
        entry_keys = [ledger_key(name, e, end, STEP) for e in entered]
        existing = existing_keys(wh, name, end)
        cd = timedelta(days=campaign.cooldown_days)
        blockers = cooldown_blockers(wh, name, end - cd, end + cd, exclude_as_of=end)
        suppressed = suppressed_emails(wh)
        # One address on several profiles that enter together gets one email: the first
        # entity (by id) keeps it, the others are skipped(duplicate_address).
        addressed = addresses_at(wh, name, end, STEP)
        # (entity, state, reason, first To address left, suppressed recipients as JSON)
        decided: list[tuple[str, str, str | None, str | None, str | None]] = []
        for entity_id, key in zip(entered, entry_keys, strict=True):
            if key in existing:
                continue  # decided by an earlier evaluation of this instant
            email = members[entity_id].get("email")
            recipients = message_recipients(campaign, members[entity_id])
            kept, dropped = drop_suppressed(recipients, suppressed)
            reason = skip_reason(
                email,
                stale=guard_inputs.stale_reason is not None,
                suppressed=suppressed,
                in_cooldown=entity_id in blockers,
                to=recipients.to,
            )
            first = kept.to[0] if kept.to else None
            address = (first or normalize_address(email) or "").lower()
            # The holdout is drawn only from entries that would otherwise go out (after every
            # other skip reason), so treatment and holdout come from the same population and a
            # member who could not be mailed anyway is no control. It claims no address.
            if reason is None and in_holdout(name, entity_id, campaign.holdout_share):
                reason = HOLDOUT_REASON
            elif reason is None and address in addressed:
                reason = "duplicate_address"
            elif reason is None:
                addressed.add(address)
            drops = dropped_json(dropped) if reason in (None, "suppressed") else None
            decided.append(
                (entity_id, State.SKIPPED if reason else State.PENDING, reason, first, drops)
            )
        # Entries of this instant that will (or did) go out, counting earlier evaluations of
        # the same instant, so that a re-evaluation decides like the first one.
        sendable = sum(1 for _, s, *_ in decided if s == State.PENDING) + sum(
            1 for k in entry_keys if k in existing and existing[k][0] not in NO_COOLDOWN_STATES
        )
        held_reason, held_guards = _held_reason(
            campaign, guard_inputs, settings, sendable, len(entered), len(members)
        )
        guards.update(held_guards)
        for entity_id, state, reason, first, drops in decided:
            if state == State.PENDING and held_reason:
                state, reason = State.HELD, held_reason
            row = members[entity_id]
            email = row.get("email")
            # The recipient (frequency cap, shared-address rule) is the first To address the
            # message still reaches: a company email's first contact may be suppressed.
            new_entries.append(
                NewEntry(
                    ledger_key=ledger_key(name, entity_id, end, STEP),
                    campaign=name,
                    entity_id=entity_id,
                    entry_as_of=end,
                    step=STEP,
                    evaluation_id=eval_id,
                    state=state,
                    reason=reason,
                    recipient=first
                    or normalize_address(email)
                    or (str(email).strip() if email else None),
                    payload=payload_json(row),
                    suppressed_recipients=drops,
                )
            )
    elif guard_inputs.broken_export_reason:
        guards["broken_export"] = guard_inputs.broken_export_reason

    new_entries += due_step_entries(wh, campaign, members, end, eval_id, guard_inputs)
    with wh.transaction():
        record_membership(wh, campaign, end)
        inserted = insert_entries(wh, new_entries)
        states = _states_of(wh, entry_keys)
        counts = Counter(s for s, _ in states.values())
        _upsert_evaluation(
            wh,
            campaign,
            end,
            run_id,
            eval_id,
            kind="baseline" if baseline else "diff",
            previous=previous,
            members=len(members),
            entered=len(diff.entered),
            exited=len(diff.exited),
            counts=counts,
            guard_reasons=list(guards.values()),
        )
    result = EvaluationResult(
        campaign=name,
        cohort=campaign.cohort,
        as_of=end,
        evaluation_id=eval_id,
        kind="baseline" if baseline else "diff",
        previous_as_of=previous,
        members=len(members),
        entered=len(diff.entered),
        exited=len(diff.exited),
        counts=dict(counts),
        skip_reasons=dict(Counter(r for s, r in states.values() if s == State.SKIPPED and r)),
        guard_reasons=list(guards.values()),
        guards=guards,
        ledger_keys=entry_keys,
        new_ledger_rows=inserted,
        run_id=run_id,
    )
    log.info("%s", result.summary())
    return result


def _states_of(wh: Warehouse, keys: list[str]) -> dict[str, tuple[str, str | None]]:
    states: dict[str, tuple[str, str | None]] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        rows = wh.fetchall(
            "select ledger_key, state, reason from nudge.send_ledger "
            f"where ledger_key in ({', '.join('?' * len(chunk))})",
            chunk,
        )
        states.update({k: (s, r) for k, s, r in rows})
    return states


def _upsert_evaluation(
    wh: Warehouse,
    campaign: Campaign,
    end: datetime,
    run_id: str,
    eval_id: str,
    *,
    kind: str,
    previous: datetime | None,
    members: int,
    entered: int,
    exited: int,
    counts: Counter[str],
    guard_reasons: list[str],
) -> None:
    wh.execute(
        """
        insert into nudge.evaluations (evaluation_id, campaign, cohort, as_of, run_id, kind,
            previous_as_of, members, entered, exited, sendable, skipped, held, guard_reasons,
            evaluated_at)
        values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        on conflict (evaluation_id) do update set
            run_id = excluded.run_id, kind = excluded.kind,
            previous_as_of = excluded.previous_as_of,
            members = excluded.members, entered = excluded.entered, exited = excluded.exited,
            sendable = excluded.sendable, skipped = excluded.skipped, held = excluded.held,
            guard_reasons = excluded.guard_reasons, evaluated_at = excluded.evaluated_at
        """,
        [
            eval_id,
            campaign.name,
            campaign.cohort,
            end,
            run_id,
            kind,
            previous,
            members,
            entered,
            exited,
            counts.get(State.PENDING, 0),
            counts.get(State.SKIPPED, 0),
            counts.get(State.HELD, 0),
            json.dumps(guard_reasons),
            utcnow(),
        ],
    )
