"""The send ledger's state machine, and the operations that move its rows (claim, record, lease).

The SQL and the DDL are email_jobs.store's; the frequency cap's and the suppression screen's
decisions are email_jobs.decisions'. This module says which moves are allowed and makes them.

A ledger row is one entry of one member into one campaign's cohort (plus a step, 0 for now). Its
key is `campaign|entity_id|entry instant (ISO)|step`, so evaluating the same instant again finds
the same keys and inserts nothing new. States:

    pending --claim--> claimed --> sent | failed | pending (retry later) | unknown
    claimed --> skipped (every To address suppressed after the evaluation, found at the claim)
    held --release--> pending         unknown --release/resend--> pending
    skipped, sent, failed: final

The claim is committed before the provider is called, so a crash leaves `claimed` rows behind;
a later send run turns them into `unknown` (we cannot tell whether the provider got them).

A claim carries its run (`claimed_by`) and a lease (`lease_expires_at`, NUDGE_SEND_LEASE_SECONDS
from the claim) that the live run's heartbeat keeps extending. Only a claim whose lease expired
was left by a dead run (`claimed --lease expired--> unknown | pending`); a live run's claims are
never taken. Outcomes are recorded only where `claimed_by` is still the recording run, so a run
whose lease was taken over never writes over the new owner's state. Expiry is compared with one
clock: the Postgres server's, or this machine's on DuckDB (where the warehouse's writer lock
already proves that no other sender is alive). A rejected credential or a cancelled run puts
its claimed rows back to `pending` without counting an attempt.

The frequency cap across campaigns is decided at the claim, from data: the claim stamps the row
with the send run's evaluation instant (`sent_as_of`), and a recipient with as many rows
claimed, sent or unknown within a day of that instant keeps the rest `pending`
(reason `frequency_cap`) for a later evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from email_jobs import store
from email_jobs.campaigns import Campaign
from email_jobs.decisions import Decision, cap_partition, screen_rows
from email_jobs.holdout import HOLDOUT_REASON
from email_jobs.recipients import message_recipients
from email_jobs.store import (
    ClaimedRow,
    NewEntry,
    active_suppressions,
    count_pending,
    db_utcnow,
    ensure_schema,
    payload_json,
    state_counts,
    suppressed_emails,
)
from nudge.core.instant import to_iso
from nudge.core.warehouse import Warehouse

# Re-exported: the rows the ledger moves, and the store functions its callers read it with.
__all__ = [
    "ClaimedRow",
    "NewEntry",
    "count_pending",
    "db_utcnow",
    "ensure_schema",
    "payload_json",
    "state_counts",
    "suppressed_emails",
]

log = logging.getLogger(__name__)


class State(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"
    UNKNOWN = "unknown"


INITIAL_STATES = frozenset({State.PENDING, State.SKIPPED, State.HELD})
FINAL_STATES = frozenset({State.SENT, State.FAILED, State.SKIPPED})
# States that do not start a re-entry cooldown: nothing went out and nothing will.
NO_COOLDOWN_STATES = frozenset({State.SKIPPED, State.FAILED})
# Skipped entries that start one all the same: a held-out entry starts a cooldown as a send
# would, so that the holdout and the emailed group re-enter on one rhythm.
COOLDOWN_SKIP_REASONS = frozenset({HOLDOUT_REASON})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.CLAIMED, State.SKIPPED}),
    # claimed -> skipped: every To address was suppressed by the time the row was claimed.
    State.CLAIMED: frozenset(
        {State.SENT, State.FAILED, State.PENDING, State.UNKNOWN, State.SKIPPED}
    ),
    State.HELD: frozenset({State.PENDING}),
    State.UNKNOWN: frozenset({State.PENDING}),
    State.SENT: frozenset(),
    State.FAILED: frozenset(),
    State.SKIPPED: frozenset(),
}


class LedgerError(Exception):
    """A ledger transition that the state machine does not allow."""


def can_transition(old: str, new: str) -> bool:
    return State(new) in TRANSITIONS[State(old)]


def check_transition(old: str, new: str) -> None:
    if not can_transition(old, new):
        raise LedgerError(f"send ledger: a row cannot go from {old!r} to {new!r}")


def instant_iso(instant: datetime) -> str:
    """ISO 8601 UTC with Z; whole seconds unless the instant has a fraction (`--as-of` omitted
    evaluates at now), so that two instants never share a key."""
    if instant.microsecond:
        return instant.isoformat(timespec="microseconds") + "Z"
    return to_iso(instant)


def ledger_key(campaign: str, entity_id: str, entry_as_of: datetime, step: int = 0) -> str:
    return f"{campaign}|{entity_id}|{instant_iso(entry_as_of)}|{step}"


def evaluation_id(campaign: str, as_of: datetime) -> str:
    """Deterministic: re-evaluating the same instant updates the same evaluation."""
    return f"{campaign}@{instant_iso(as_of)}"


@dataclass(frozen=True)
class Outcome:
    """Where a claimed row goes after this run's delivery attempts."""

    state: State
    reason: str | None = None
    error: str | None = None


def outcome_after_delivery(
    status: str, error: str | None, attempts_total: int, max_total_attempts: int
) -> Outcome:
    """A claimed row's next state from the last attempt's status ("sent", "failed",
    "retryable", or "unknown" when the backend raised) and the row's attempts so far."""
    if status == "sent":
        return Outcome(State.SENT)
    if status == "failed":
        return Outcome(State.FAILED, "permanent_error", error)
    if status == "unknown":
        return Outcome(State.UNKNOWN, "delivery_unknown", error)
    if status == "credential":  # our credential, not this row: back to pending, not counted
        return Outcome(State.PENDING, "credential_rejected", error)
    if status == "cancelled":  # the run stopped before this row's delivery started
        return Outcome(State.PENDING, "cancelled", error)
    if status != "retryable":
        raise ValueError(f"unknown delivery status {status!r}")
    if attempts_total >= max_total_attempts:
        return Outcome(State.FAILED, "gave_up", error)
    return Outcome(State.PENDING, "retry_later", error)


def recovered_state(on_unknown: str) -> State:
    """What a row left `claimed` by a dead run becomes."""
    return State.PENDING if on_unknown == "resend" else State.UNKNOWN


# -- writing entries ---------------------------------------------------------------------------


def entry_row(
    decision: Decision,
    campaign: str,
    entry_as_of: datetime,
    step: int,
    evaluation_id: str,
    row: dict[str, Any],
) -> NewEntry:
    """The ledger row that records a decision: skipped(reason), held(guard), or pending."""
    if decision.skip:
        state, reason = State.SKIPPED, decision.skip
    elif decision.held:
        state, reason = State.HELD, decision.held
    else:
        state, reason = State.PENDING, None
    return NewEntry(
        ledger_key=decision.key,
        campaign=campaign,
        entity_id=decision.entity_id,
        entry_as_of=entry_as_of,
        step=step,
        evaluation_id=evaluation_id,
        state=state,
        reason=reason,
        recipient=decision.recipient,
        payload=payload_json(row),
        suppressed_recipients=decision.suppressed_json(),
    )


def insert_entries(wh: Warehouse, entries: Iterable[NewEntry], chunk: int = 200) -> int:
    """Insert-if-absent on ledger_key; a row starts pending, skipped or held. Returns how many
    rows were new."""
    rows = list(entries)
    for e in rows:
        if e.state not in INITIAL_STATES:
            raise LedgerError(f"send ledger: {e.ledger_key} cannot start as {e.state!r}")
    return store.insert_ledger_rows(wh, rows, chunk)


def cooldown_blockers(
    wh: Warehouse, campaign: str, low: datetime, high: datetime, exclude_as_of: datetime
) -> set[str]:
    """Entities with a row that started a cooldown (not skipped/failed, but a held-out entry
    starts one as a send would, so both groups re-enter on one rhythm) and an entry instant
    strictly inside (low, high), other than entries at `exclude_as_of` itself."""
    return store.cooldown_blockers(
        wh,
        campaign,
        low,
        high,
        exclude_as_of,
        NO_COOLDOWN_STATES,
        skipped_reasons=COOLDOWN_SKIP_REASONS,
    )


def addresses_at(wh: Warehouse, campaign: str, entry_as_of: datetime, step: int) -> set[str]:
    """Lower-cased recipients of the campaign's entries at this instant and step that went or
    will go out (not skipped or failed)."""
    return store.addresses_at(wh, campaign, entry_as_of, step, NO_COOLDOWN_STATES)


# -- the send side ---------------------------------------------------------------------------


def recover_claims(wh: Warehouse, campaign: str, run_id: str, on_unknown: str) -> int:
    """Rows left `claimed` by a run that died mid-send become `unknown`, or go back to `pending`
    when the campaign says `on_unknown: resend`. Returns how many.

    A claim belongs to a dead run only when its lease has expired (a live run's heartbeat keeps
    extending it, email_jobs.send). On DuckDB the caller holds the warehouse file's writer lock,
    which no other live process can hold at the same time: every other run's claim is then a
    dead run's, whatever its lease says (a crashed run's lease has not expired yet).
    """
    target = recovered_state(on_unknown)
    check_transition(State.CLAIMED, target)
    reason = "resend_after_crash" if target == State.PENDING else "claimed_by_dead_run"
    with wh.transaction():
        return store.release_claims_of_dead_runs(wh, campaign, run_id, str(target), reason)


def extend_leases(wh: Warehouse, run_id: str, lease_s: float) -> int:
    """The heartbeat: this run's claimed rows stay its own for `lease_s` more seconds. Returns
    how many rows it still holds."""
    with wh.transaction():
        return store.extend_leases(wh, run_id, lease_s)


DAY = timedelta(days=1)


@dataclass(frozen=True)
class Claim:
    """One claim's result: the rows to send now, and how many the frequency cap deferred."""

    rows: list[ClaimedRow]
    deferred: int = 0


def claim_for_send(
    wh: Warehouse,
    campaign: str,
    run_id: str,
    limit: int,
    *,
    as_of: datetime | None = None,
    max_per_recipient_per_day: int = 0,
    recorded: Sequence[Recorded] = (),
    lease_s: float = 120.0,
) -> Claim:
    """Claim up to `limit` pending rows for this run, in one committed transaction (which also
    records `recorded`, a finished batch's outcomes: one commit per batch instead of two).

    Rows this run already looked at (tried and put back, or deferred) are not taken again: their
    `claimed_by` is this run. The update is guarded by `state = 'pending'`, so two runs never
    both claim a row. With `as_of` and a cap > 0, a recipient who already has that many sends
    (claimed, sent or unknown) within a day of `as_of`, either side, across every campaign,
    keeps the rest pending (reason `frequency_cap`); oldest entries go first, so the deferred
    ones lead the next evaluation's claim.
    """
    cap = max_per_recipient_per_day if as_of is not None else 0
    for r in recorded:
        check_transition(State.CLAIMED, r.outcome.state)
    with wh.transaction():
        if recorded:
            _record_rows(wh, run_id, recorded)
        store.lock_claims(wh)
        rows = store.pending_rows(wh, campaign, run_id, limit)
        if not rows:
            return Claim([])
        candidates = [(r.ledger_key, r.recipient) for r in rows]
        used: dict[str, int] = {}
        if cap > 0 and as_of is not None:
            who = sorted({r.lower() for _, r in candidates if r})
            used = store.recent_sends(wh, who, as_of - DAY, as_of + DAY)
        take, defer = cap_partition(candidates, used, cap)
        taken = 0
        if take:
            lease_until = db_utcnow(wh) + timedelta(seconds=lease_s)
            taken = store.mark_claimed(wh, take, run_id, as_of, lease_until)
        if defer:
            assert as_of is not None  # the cap defers only with an instant
            store.mark_deferred(
                wh,
                defer,
                run_id,
                f"deferred by the frequency cap: the recipient already has {cap} email(s) "
                f"within a day of {instant_iso(as_of)} "
                "(NUDGE_MAX_EMAILS_PER_RECIPIENT_PER_DAY); a later evaluation sends it",
            )
    if not take:
        return Claim([], len(defer))
    if taken == len(take):  # every candidate was still pending: they are ours as read
        chosen = set(take)
        return Claim([r for r in rows if r.ledger_key in chosen], len(defer))
    # Another writer changed a candidate meanwhile: read back what this run holds.
    return Claim(store.claimed_by(wh, take, run_id), len(defer))


def claim_batch(wh: Warehouse, campaign: str, run_id: str, limit: int) -> list[ClaimedRow]:
    """Claim up to `limit` pending rows for this run, without a frequency cap."""
    return claim_for_send(wh, campaign, run_id, limit).rows


@dataclass(frozen=True)
class Recorded:
    ledger_key: str
    outcome: Outcome
    attempts_total: int
    provider_message_id: str | None = None


def record_outcomes(wh: Warehouse, run_id: str, results: Sequence[Recorded]) -> None:
    """Record a batch's outcomes in one transaction (claimed -> sent|failed|pending|unknown),
    with one statement per chunk of rows. A row that goes back to pending or fails loses its
    `sent_as_of`: it no longer counts against the frequency cap."""
    for r in results:
        check_transition(State.CLAIMED, r.outcome.state)
    if not results:
        return
    with wh.transaction():
        _record_rows(wh, run_id, results)


def _record_rows(wh: Warehouse, run_id: str, results: Sequence[Recorded]) -> None:
    touched = store.write_outcomes(
        wh,
        run_id,
        [
            store.OutcomeRow(
                r.ledger_key,
                str(r.outcome.state),
                r.outcome.reason,
                r.attempts_total,
                r.outcome.error,
                r.provider_message_id,
            )
            for r in results
        ],
    )
    if touched < len(results):
        # Someone recovered our claim (we were thought dead): say so, change nothing.
        log.warning(
            "send ledger: %d of %d row(s) were no longer claimed by run %s; their outcomes "
            "were not recorded",
            len(results) - touched,
            len(results),
            run_id,
        )


@dataclass(frozen=True)
class Screened:
    """A claimed batch after the suppression list's cut at the claim."""

    rows: list[ClaimedRow]  # to render and send
    suppressed: dict[str, frozenset[str]]  # ledger_key -> addresses to leave out of its message
    skipped: int = 0  # rows skipped(suppressed): no To address left


def screen_claimed(
    wh: Warehouse, campaign: Campaign, run_id: str, rows: Sequence[ClaimedRow]
) -> Screened:
    """Read the suppression list for every address the claimed rows would reach (now, not at
    their evaluation: an unsubscribe while a row waited for a retry, a release or its drip step
    counts), record each row's drops, skip the rows with no To address left, and say which
    addresses each remaining message must leave out (contract "Suppression")."""
    per_row = {r.ledger_key: message_recipients(campaign, r.payload) for r in rows}
    suppressed = active_suppressions(
        wh, (a.lower() for rec in per_row.values() for a, _ in rec.by_role())
    )
    screen = screen_rows(per_row, suppressed, store.rows_with_drops(wh, list(per_row)))
    skipped = 0
    if screen.drops:
        skipped = record_suppressed_at_claim(wh, run_id, screen.drops, screen.skip)
    if dropped_any := sum(1 for v in screen.drops.values() if v):
        log.info(
            "campaign %s: the suppression list changed %d claimed message(s); %d skipped",
            campaign.name,
            dropped_any,
            skipped,
        )
    return Screened([r for r in rows if r.ledger_key not in screen.skip], screen.leave_out, skipped)


def record_suppressed_at_claim(
    wh: Warehouse, run_id: str, drops: dict[str, str | None], skip: Iterable[str]
) -> int:
    """At the claim, what the suppression list took from this run's claimed rows: each row's
    `suppressed_recipients` (JSON, None for none), and claimed -> skipped(suppressed) for the
    rows in `skip` (no To address left). Only rows still claimed by this run. Returns how many
    were skipped."""
    check_transition(State.CLAIMED, State.SKIPPED)
    skipping = set(skip)
    with wh.transaction():
        return sum(
            store.write_drops_at_claim(wh, run_id, key, dropped, key in skipping)
            for key, dropped in drops.items()
        )


def release_rows(wh: Warehouse, campaign: str, include_unknown: bool = False) -> int:
    """held (and unknown) -> pending; returns how many rows were released."""
    states = [State.HELD, State.UNKNOWN] if include_unknown else [State.HELD]
    for s in states:
        check_transition(s, State.PENDING)
    with wh.transaction():
        return store.set_pending(wh, campaign, states)
