"""What an evaluation and a send decide, as pure functions over plain data.

Nothing here reads the warehouse, the clock or the settings: email_jobs.evaluate,
email_jobs.drips and email_jobs.ledger fetch what these functions need, call them, and store
what they decide. So every rule of the contract's "Emails: only to newly entered members",
"Guards" (holds) and the frequency cap is decided here, and tested here directly
(tests/email/test_decisions.py).

- who is an entry: `who_entered` (the diff against the previous evaluation; a baseline enters
  no one);
- why an entry is skipped, in the contract's order: `skip_reason`, `SKIP_ORDER`;
- the control group (`holdout`, the stable hash of email_jobs.holdout) and one email per address
  per instant (`duplicate_address`): `decide_entries`;
- holds (broken export, blast radius): `decide_holds`;
- which drip step is due: `due_step`, whether the campaign's goal stops it: `goal_met`, and its
  skip or hold: `decide_step`;
- the frequency cap's partition of claimed candidates into take and defer: `cap_partition`;
- the suppression list's cut of claimed rows: `screen_rows`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from email_jobs.addresses import normalize_address
from email_jobs.guards import blast_radius_reason
from email_jobs.holdout import HOLDOUT_REASON, in_holdout
from email_jobs.recipients import Recipients, drop_suppressed, dropped_json

# The contract's order: the first that applies is the entry's reason. `holdout` and then
# `duplicate_address` are decided last, among the entries that would otherwise go out.
SKIP_ORDER = (
    "stale",
    "no_email",
    "invalid_email",
    "suppressed",
    "cooldown",
    HOLDOUT_REASON,
    "duplicate_address",
)
SENT = "sent"  # email_jobs.ledger.State.SENT (a StrEnum): a drip step follows a sent one


# -- who is an entry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Diff:
    entered: frozenset[str]
    exited: frozenset[str]


def diff_members(previous: Iterable[str], now: Iterable[str]) -> Diff:
    prev, cur = frozenset(previous), frozenset(now)
    return Diff(entered=cur - prev, exited=prev - cur)


@dataclass(frozen=True)
class Entries:
    diff: Diff  # against the previous evaluation (everyone entered when there is none)
    baseline: bool  # the first evaluation sets a baseline: no entry becomes a ledger row
    entries: tuple[str, ...]  # the entities that become ledger rows, by id


def who_entered(
    previous: Iterable[str] | None, now: Iterable[str], *, baseline_first_run: bool
) -> Entries:
    """`previous`: the members at the campaign's previous evaluation, None when it has none."""
    diff = diff_members(previous or (), now)
    baseline = previous is None and baseline_first_run
    return Entries(diff, baseline, () if baseline else tuple(sorted(diff.entered)))


# -- skips and duplicates ------------------------------------------------------------------------


def skip_reason(
    email: Any,
    *,
    stale: bool,
    suppressed: Collection[str],
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


@dataclass(frozen=True)
class Entered:
    """An entry to decide: the member, its ledger key, its `email` and its message's recipients."""

    entity_id: str
    key: str
    email: Any
    recipients: Recipients


@dataclass(frozen=True)
class Decision:
    """One entry's decision: skipped (`skip`), held (`held`, by a guard), or else pending."""

    entity_id: str
    key: str
    skip: str | None
    recipient: str | None  # the first To address the message still reaches
    dropped: tuple[Mapping[str, str], ...] = ()  # suppressed recipients left out of it
    held: str | None = None

    @property
    def goes_out(self) -> bool:
        return self.skip is None and self.held is None

    def suppressed_json(self) -> str | None:
        return dropped_json(self.dropped)


def _recipient(first: str | None, email: Any) -> str | None:
    return first or normalize_address(email) or (str(email).strip() if email else None)


def decide_entries(
    entered: Sequence[Entered],
    *,
    recorded: Collection[str],
    stale: bool,
    suppressed: Collection[str],
    cooling: Collection[str],
    addressed: Collection[str],
    campaign: str = "",
    holdout_share: float = 0,
) -> list[Decision]:
    """One decision per entry whose key is not in `recorded` (decided by an earlier evaluation
    of this instant), in the given order.

    `suppressed`: lower-cased suppressed addresses; `cooling`: entities in their re-entry
    cooldown; `addressed`: lower-cased addresses that already have an entry at this instant that
    went or will go out. One address on several profiles that enter together gets one email:
    the first entry (callers pass them by entity id) keeps it, the others are
    skipped(duplicate_address).

    The holdout (`holdout_share` of the campaign's members, by email_jobs.holdout's stable hash
    of `campaign` and entity) is drawn only from entries that would otherwise go out (after
    every other skip reason), so treatment and holdout come from the same population and a
    member who could not be mailed anyway is no control. A held-out entry claims no address."""
    taken = set(addressed)
    decisions: list[Decision] = []
    for e in entered:
        if e.key in recorded:
            continue
        kept, dropped = drop_suppressed(e.recipients, suppressed)
        reason = skip_reason(
            e.email,
            stale=stale,
            suppressed=suppressed,
            in_cooldown=e.entity_id in cooling,
            to=e.recipients.to,
        )
        first = kept.to[0] if kept.to else None
        address = (first or normalize_address(e.email) or "").lower()
        if reason is None and in_holdout(campaign, e.entity_id, holdout_share):
            reason = HOLDOUT_REASON
        elif reason is None and address in taken:
            reason = "duplicate_address"
        elif reason is None:
            taken.add(address)
        decisions.append(
            Decision(
                e.entity_id,
                e.key,
                reason,
                _recipient(first, e.email),
                tuple(dropped) if reason in (None, "suppressed") else (),
            )
        )
    return decisions


# -- holds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldLimits:
    """A campaign's blast-radius limits (its yml's, else NUDGE_MAX_SENDS_PER_EVALUATION and
    NUDGE_MAX_ENTRY_SHARE)."""

    max_sends: int
    max_entry_share: float


def decide_holds(
    decisions: Sequence[Decision],
    *,
    campaign: str,
    already_sendable: int,
    entered: int,
    members: int,
    limits: HoldLimits,
    broken_export: str | None,
) -> tuple[list[Decision], dict[str, str]]:
    """(the decisions with the entries that would go out held, {guard: sentence} of the holding
    guards that fire). `already_sendable`: entries of this instant that earlier evaluations left
    going out, so that a re-evaluation decides like the first one."""
    sendable = already_sendable + sum(1 for d in decisions if d.skip is None)
    fired: dict[str, str] = {}
    if broken_export:
        fired["broken_export"] = broken_export
    blast = blast_radius_reason(
        campaign,
        sendable=sendable,
        entered=entered,
        members=members,
        max_sends=limits.max_sends,
        max_entry_share=limits.max_entry_share,
    )
    if blast:
        fired["blast_radius"] = blast
    held = next(iter(fired), None)
    if held is None:
        return list(decisions), fired
    return [replace(d, held=held) if d.skip is None else d for d in decisions], fired


# -- drip steps --------------------------------------------------------------------------------


def due_step(
    steps: Mapping[int, tuple[str, str]],
    *,
    entry_as_of: datetime,
    delays_days: Sequence[float],
    end: datetime,
    evaluation_id: str,
    late_limit: timedelta,
) -> int | None:
    """The drip step of one entry that evaluation `evaluation_id` at `end` finds due, if any.

    `steps`: the entry's recorded steps, step -> (state, evaluation id that recorded it). The
    next step is due at `entry_as_of + delays_days[step]`, not later than `late_limit` after
    that, once the step before was sent and recorded by an earlier evaluation (one step per
    entry per evaluation instant)."""
    if 0 not in steps:
        return None
    step = max(steps) + 1
    if step >= len(delays_days):
        return None
    due = entry_as_of + timedelta(days=delays_days[step])
    if due > end or end - due > late_limit:
        return None
    previous_state, previous_eval = steps[step - 1]
    if previous_state != SENT or previous_eval == evaluation_id:
        return None
    return step


def goal_met(conversions: Iterable[datetime], *, entry_as_of: datetime, end: datetime) -> bool:
    """Did the member meet the campaign's goal after its entry (a conversion instant in
    (entry_as_of, end])? Then its drip has done its work and stops. A held-out entry is never
    sent, so its drip never starts."""
    return any(entry_as_of < t <= end for t in conversions)


def decide_step(
    entity_id: str,
    key: str,
    email: Any,
    recipients: Recipients,
    *,
    suppressed: Collection[str],
    broken_export: bool,
) -> Decision:
    """A due drip step's decision: skipped for want of an address or when every To address is
    suppressed, held when the broken-export guard fires, else pending."""
    address = normalize_address(email)
    kept, dropped = drop_suppressed(recipients, suppressed)
    skip: str | None = None
    held: str | None = None
    if email is None or str(email).strip() == "":
        skip = "no_email"
    elif address is None:
        skip = "invalid_email"
    elif not kept.to:
        skip = "suppressed"
    elif broken_export:
        held = "broken_export"
    return Decision(
        entity_id,
        key,
        skip,
        _recipient(kept.to[0] if kept.to else None, email),
        tuple(dropped) if skip in (None, "suppressed") else (),
        held,
    )


# -- the claim ---------------------------------------------------------------------------------


def cap_partition(
    candidates: Sequence[tuple[str, str | None]], used: Mapping[str, int], cap: int
) -> tuple[list[str], list[str]]:
    """(keys to take, keys to defer) of claim candidates (key, recipient), in their order: a
    recipient who already has `used[recipient]` (lower-cased) sends within the cap's window
    gets at most `cap` in all; the rest are deferred. A row without a recipient is never
    deferred; `cap` <= 0 turns the cap off."""
    if cap <= 0:
        return [k for k, _ in candidates], []
    counts = dict(used)
    take: list[str] = []
    defer: list[str] = []
    for key, recipient in candidates:
        who = recipient.lower() if recipient else None
        if who is not None and counts.get(who, 0) >= cap:
            defer.append(key)
            continue
        if who is not None:
            counts[who] = counts.get(who, 0) + 1
        take.append(key)
    return take, defer


@dataclass(frozen=True)
class Screen:
    """The suppression list's cut of a claimed batch."""

    drops: dict[str, str | None]  # ledger_key -> its `suppressed_recipients` (JSON or None)
    skip: frozenset[str]  # rows left without a To address: skipped(suppressed)
    leave_out: dict[str, frozenset[str]]  # ledger_key -> addresses its message must not reach


def screen_rows(
    rows: Mapping[str, Recipients], suppressed: Collection[str], recorded_drops: Collection[str]
) -> Screen:
    """`rows`: ledger_key -> its message's recipients. A row's drops are (re)written when some
    address is suppressed now, or when its evaluation recorded drops (the record then names who
    is left out of the message that goes now: an address lifted since then is mailed)."""
    drops: dict[str, str | None] = {}
    skip: set[str] = set()
    leave_out: dict[str, frozenset[str]] = {}
    for key, recipients in rows.items():
        kept, dropped = drop_suppressed(recipients, suppressed)
        if dropped or key in recorded_drops:
            drops[key] = dropped_json(dropped)
        if dropped and not kept.to:
            skip.add(key)
        elif dropped:
            leave_out[key] = frozenset(d["address"].lower() for d in dropped)
    return Screen(drops, frozenset(skip), leave_out)
