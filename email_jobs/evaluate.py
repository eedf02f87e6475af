"""Evaluate one campaign at one instant: membership, entries, and a ledger row per entry.

Contract sections "Emails: only to newly entered members", "Guards" and "Warehouses". The
cohort, its contacts, goal conversions and the guards' inputs are read from the warehouse;
everything an evaluation writes (membership, ledger rows, the evaluation row) lands in the state
store in one transaction, so an evaluation is either completed or absent; "the previous
evaluation" is always a completed one.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from email_jobs import store
from email_jobs.campaigns import Campaign
from email_jobs.decisions import (
    Decision,
    Entered,
    Entries,
    HoldLimits,
    decide_entries,
    decide_holds,
    skip_reason,
    who_entered,
)
from email_jobs.drips import due_step_entries
from email_jobs.guards import (
    EvaluationDeferred,
    GuardInputs,
    GuardLimits,
    compute_guard_inputs,
)
from email_jobs.ledger import (
    NO_COOLDOWN_STATES,
    NewEntry,
    State,
    addresses_at,
    cooldown_blockers,
    ensure_schema,
    entry_row,
    evaluation_id,
    insert_entries,
    ledger_key,
)
from email_jobs.membership import read_cohort
from email_jobs.recipients import add_contacts, message_recipients
from nudge.core.instant import to_iso
from nudge.core.warehouse import Warehouse

__all__ = [
    "EvaluationDeferred",
    "EvaluationResult",
    "GuardInputs",
    "GuardLimits",
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


def hold_limits(campaign: Campaign, limits: GuardLimits) -> HoldLimits:
    """The campaign's blast-radius limits: its yml's, else the knobs'."""
    return HoldLimits(
        max_sends=(
            campaign.max_sends_per_evaluation
            if campaign.max_sends_per_evaluation is not None
            else limits.max_sends_per_evaluation
        ),
        max_entry_share=(
            campaign.max_entry_share
            if campaign.max_entry_share is not None
            else limits.max_entry_share
        ),
    )


def evaluate_campaign(
    wh: Warehouse,
    campaign: Campaign,
    end: datetime,
    limits: GuardLimits,
    run_id: str,
    *,
    rejected_share: float | None = None,
    guard_inputs: GuardInputs | None = None,
    state: Warehouse | None = None,
) -> EvaluationResult:
    """Evaluate `campaign` at `end` (naive UTC); raises EvaluationDeferred when the freshness
    guard fires (then nothing is recorded). Pass `guard_inputs` from `compute_guard_inputs` to
    share one computation across the campaigns of a run; otherwise they are computed here, with
    `rejected_share` (or the ingest of `run_id`) for the broken-export guard.

    Reads what the decisions need (email_jobs.decisions), decides, and records membership,
    ledger rows and the evaluation in one transaction. `wh` is the warehouse; `state` the state
    store (the nudge.* tables), `wh` itself when omitted."""
    state = wh if state is None else state
    if end.tzinfo is not None:
        raise ValueError(f"evaluation instant {end!r} must be naive UTC")
    if not campaign.enabled:  # callers skip disabled campaigns; nothing may record one
        raise ValueError(f"campaign {campaign.name} is disabled: it is not evaluated")
    if guard_inputs is None:
        guard_inputs = compute_guard_inputs(
            wh, end, limits, run_id=run_id, rejected_share=rejected_share
        )
    elif guard_inputs.end != end:
        raise ValueError(f"guard inputs were computed for {guard_inputs.end}, not {end}")
    if guard_inputs.deferred_reason:
        raise EvaluationDeferred(guard_inputs.deferred_reason)

    ensure_schema(state)
    name = campaign.name
    cohort = read_cohort(wh, campaign)
    members = add_contacts(wh, campaign, cohort)
    previous = store.previous_evaluation(state, name, end)
    who = who_entered(
        store.members_at(state, name, previous) if previous else None,
        members,
        baseline_first_run=campaign.baseline_first_run,
    )
    eval_id = evaluation_id(name, end)
    entry_keys = [ledger_key(name, e, end, STEP) for e in who.entries]

    guards: dict[str, str] = {}
    if guard_inputs.stale_reason:
        guards["stale"] = guard_inputs.stale_reason
    new_entries: list[NewEntry] = []
    if not who.baseline:
        decisions, held_guards = _decide(
            state, campaign, end, members, who, entry_keys, guard_inputs, limits
        )
        guards.update(held_guards)
        new_entries = [
            entry_row(d, name, end, STEP, eval_id, members[d.entity_id]) for d in decisions
        ]
    elif guard_inputs.broken_export_reason:
        guards["broken_export"] = guard_inputs.broken_export_reason
    new_entries += due_step_entries(
        wh, campaign, members, end, eval_id, guard_inputs, state_db=state
    )

    kind: Literal["baseline", "diff"] = "baseline" if who.baseline else "diff"
    evaluation = store.EvaluationRow(
        evaluation_id=eval_id,
        campaign=name,
        cohort=campaign.cohort,
        as_of=end,
        run_id=run_id,
        kind=kind,
        previous_as_of=previous,
        members=len(members),
        entered=len(who.diff.entered),
        exited=len(who.diff.exited),
        sendable=0,  # counted from the ledger rows, once written
        skipped=0,
        held=0,
        guard_reasons=list(guards.values()),
    )
    inserted, states = _record(wh, state, campaign, evaluation, new_entries, entry_keys, cohort)
    counts = Counter(s for s, _ in states.values())
    result = EvaluationResult(
        campaign=name,
        cohort=campaign.cohort,
        as_of=end,
        evaluation_id=eval_id,
        kind=kind,
        previous_as_of=previous,
        members=len(members),
        entered=len(who.diff.entered),
        exited=len(who.diff.exited),
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


def _record(
    wh: Warehouse,
    state: Warehouse,
    campaign: Campaign,
    evaluation: store.EvaluationRow,
    new_entries: list[NewEntry],
    entry_keys: list[str],
    cohort: dict[str, dict[str, Any]],
) -> tuple[int, dict[str, tuple[str, str | None]]]:
    """Record the membership, the new ledger rows and the evaluation in the state store, in one
    transaction: (rows inserted, {entry key: (state, reason)} of this instant's entries)."""
    with state.transaction():
        if state is wh:  # one database: the membership is copied in SQL, rows never leave it
            relation = wh.relation(campaign.relation_name)
            store.record_membership(wh, campaign.name, campaign.cohort, relation, evaluation.as_of)
        else:  # the cohort as read from the warehouse (read_cohort keeps the same row per member)
            store.record_membership_rows(
                state,
                campaign.name,
                campaign.cohort,
                evaluation.as_of,
                [(e, row.get("email")) for e, row in cohort.items()],
            )
        inserted = insert_entries(state, new_entries)
        states = store.ledger_states(state, entry_keys)
        counts = Counter(s for s, _ in states.values())
        store.upsert_evaluation(
            state,
            replace(
                evaluation,
                sendable=counts.get(State.PENDING, 0),
                skipped=counts.get(State.SKIPPED, 0),
                held=counts.get(State.HELD, 0),
            ),
        )
    return inserted, states


def _decide(
    wh: Warehouse,
    campaign: Campaign,
    end: datetime,
    members: dict[str, dict[str, Any]],
    who: Entries,
    keys: list[str],
    guard_inputs: GuardInputs,
    limits: GuardLimits,
) -> tuple[list[Decision], dict[str, str]]:
    """Read what deciding this instant's entries needs, and decide them (email_jobs.decisions):
    ({the entries' decisions}, {holding guard: sentence})."""
    name = campaign.name
    existing = store.existing_keys(wh, name, end)
    cooldown = timedelta(days=campaign.cooldown_days)
    entered = [
        Entered(e, k, members[e].get("email"), message_recipients(campaign, members[e]))
        for e, k in zip(who.entries, keys, strict=True)
        if k not in existing
    ]
    decisions = decide_entries(
        entered,
        recorded=existing,
        stale=guard_inputs.stale_reason is not None,
        suppressed=store.suppressed_emails(wh),
        cooling=cooldown_blockers(wh, name, end - cooldown, end + cooldown, exclude_as_of=end),
        addressed=addresses_at(wh, name, end, STEP),
        campaign=name,
        holdout_share=campaign.holdout_share,
    )
    return decide_holds(
        decisions,
        campaign=name,
        # Entries of this instant that earlier evaluations of it left going out.
        already_sendable=sum(
            1 for k in keys if k in existing and existing[k][0] not in NO_COOLDOWN_STATES
        ),
        entered=len(who.entries),
        members=len(members),
        limits=hold_limits(campaign, limits),
        broken_export=guard_inputs.broken_export_reason,
    )
