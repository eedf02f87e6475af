"""The `nudge` schema: evaluations, membership history, the send ledger and its state machine.

Portable DDL and SQL (DuckDB and Postgres). Times are naive UTC `timestamp`s.

A ledger row is one entry of one member into one campaign's cohort (plus a step, 0 for now). Its
key is `campaign|entity_id|entry instant (ISO)|step`, so evaluating the same instant again finds
the same keys and inserts nothing new. States:

    pending --claim--> claimed --> sent | failed | pending (retry later) | unknown
    held --release--> pending         unknown --release/resend--> pending
    skipped, sent, failed: final

The claim is committed before the provider is called, so a crash leaves `claimed` rows behind;
the next send run turns them into `unknown` (we cannot tell whether the provider got them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from nudge.asof import to_iso
from nudge.warehouse import Warehouse

log = logging.getLogger(__name__)

SCHEMA = "nudge"


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

TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.CLAIMED}),
    State.CLAIMED: frozenset({State.SENT, State.FAILED, State.PENDING, State.UNKNOWN}),
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
    if status != "retryable":
        raise ValueError(f"unknown delivery status {status!r}")
    if attempts_total >= max_total_attempts:
        return Outcome(State.FAILED, "gave_up", error)
    return Outcome(State.PENDING, "retry_later", error)


def recovered_state(on_unknown: str) -> State:
    """What a row left `claimed` by a dead run becomes."""
    return State.PENDING if on_unknown == "resend" else State.UNKNOWN


# -- DDL -----------------------------------------------------------------------------------

DDL: tuple[str, ...] = (
    "create schema if not exists nudge",
    # One row per completed evaluation of a campaign at an instant; re-evaluating updates it.
    """
    create table if not exists nudge.evaluations (
        evaluation_id  varchar not null primary key,
        campaign       varchar not null,
        cohort         varchar not null,
        as_of          timestamp not null,
        run_id         varchar,
        kind           varchar not null,      -- baseline | diff
        previous_as_of timestamp,
        members        bigint not null,
        entered        bigint not null,
        exited         bigint not null,
        sendable       bigint not null,       -- entries left pending
        skipped        bigint not null,
        held           bigint not null,
        guard_reasons  text,                  -- JSON array of sentences
        evaluated_at   timestamp not null,
        unique (campaign, as_of)
    )
    """,
    # Who was in which campaign's cohort at which evaluation instant.
    """
    create table if not exists nudge.cohort_membership (
        campaign   varchar not null,
        cohort     varchar not null,
        as_of      timestamp not null,
        entity_id  varchar not null,
        email      varchar
    )
    """,
    """
    create table if not exists nudge.send_ledger (
        ledger_key           varchar not null primary key,
        campaign             varchar not null,
        entity_id            varchar not null,
        entry_as_of          timestamp not null,
        step                 integer not null,
        evaluation_id        varchar not null,
        state                varchar not null,
        reason               varchar,
        recipient            varchar,
        payload              text,          -- the cohort row at entry, JSON
        provider_message_id  varchar,
        attempts             integer not null,
        last_error           text,
        claimed_by           varchar,       -- the run that last claimed the row
        claimed_at           timestamp,
        sent_at              timestamp,
        created_at           timestamp not null,
        updated_at           timestamp not null
    )
    """,
    """
    create table if not exists nudge.suppressions (
        email       varchar not null,
        reason      varchar,
        source      varchar
    )
    """,
)


def ensure_schema(wh: Warehouse) -> None:
    with wh.transaction():
        for stmt in DDL:
            wh.execute(stmt)


def utcnow() -> datetime:
    """Wall-clock time, for bookkeeping columns only (never for decisions)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


def payload_json(row: dict[str, Any]) -> str:
    return json.dumps(row, default=_json_default, sort_keys=True)


def affected_rows(wh: Warehouse, sql: str, params: Sequence[Any]) -> int:
    """Run an insert/update/delete and return how many rows it touched."""
    cur = wh.execute(sql, params)
    if wh.kind == "duckdb":
        row = cur.fetchone()
        return int(row[0]) if row else 0
    return int(cur.rowcount)


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


# -- writing entries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewEntry:
    ledger_key: str
    campaign: str
    entity_id: str
    entry_as_of: datetime
    step: int
    evaluation_id: str
    state: State
    reason: str | None
    recipient: str | None
    payload: str


def insert_entries(wh: Warehouse, entries: Iterable[NewEntry], chunk: int = 200) -> int:
    """Insert-if-absent on ledger_key; returns how many rows were new."""
    now = utcnow()
    rows: list[list[Any]] = []
    for e in entries:
        if e.state not in INITIAL_STATES:
            raise LedgerError(f"send ledger: {e.ledger_key} cannot start as {e.state!r}")
        rows.append(
            [
                e.ledger_key,
                e.campaign,
                e.entity_id,
                e.entry_as_of,
                e.step,
                e.evaluation_id,
                str(e.state),
                e.reason,
                e.recipient,
                e.payload,
                0,
                now,
                now,
            ]
        )
    inserted = 0
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        values = ", ".join(f"({placeholders(13)})" for _ in part)
        inserted += affected_rows(
            wh,
            f"""
            insert into nudge.send_ledger (ledger_key, campaign, entity_id, entry_as_of, step,
                evaluation_id, state, reason, recipient, payload, attempts, created_at, updated_at)
            values {values}
            on conflict (ledger_key) do nothing
            """,
            [v for row in part for v in row],
        )
    return inserted


def existing_keys(
    wh: Warehouse, campaign: str, entry_as_of: datetime
) -> dict[str, tuple[str, str]]:
    """ledger_key -> (state, reason) of the campaign's rows for entries at this instant."""
    rows = wh.fetchall(
        "select ledger_key, state, reason from nudge.send_ledger "
        "where campaign = ? and entry_as_of = ?",
        [campaign, entry_as_of],
    )
    return {k: (s, r) for k, s, r in rows}


def cooldown_blockers(
    wh: Warehouse, campaign: str, low: datetime, high: datetime, exclude_as_of: datetime
) -> set[str]:
    """Entities with a row that started a cooldown (not skipped/failed) and an entry instant
    strictly inside (low, high), other than entries at `exclude_as_of` itself."""
    rows = wh.fetchall(
        f"""
        select distinct entity_id from nudge.send_ledger
        where campaign = ? and entry_as_of > ? and entry_as_of < ? and entry_as_of <> ?
          and state not in ({placeholders(len(NO_COOLDOWN_STATES))})
        """,
        [campaign, low, high, exclude_as_of, *sorted(NO_COOLDOWN_STATES)],
    )
    return {r[0] for r in rows}


def suppressed_emails(wh: Warehouse) -> set[str]:
    rows = wh.fetchall("select email from nudge.suppressions where email is not null")
    return {r[0].strip().lower() for r in rows}


# -- the send side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedRow:
    ledger_key: str
    campaign: str
    entity_id: str
    entry_as_of: datetime
    step: int
    recipient: str | None
    payload: dict[str, Any]
    attempts: int


def recover_claims(wh: Warehouse, campaign: str, run_id: str, on_unknown: str) -> int:
    """Rows left `claimed` by another run (one that died mid-send) become `unknown`, or go back
    to `pending` when the campaign says `on_unknown: resend`. Returns how many."""
    target = recovered_state(on_unknown)
    check_transition(State.CLAIMED, target)
    reason = "resend_after_crash" if target == State.PENDING else "claimed_by_dead_run"
    with wh.transaction():
        return affected_rows(
            wh,
            """
            update nudge.send_ledger set state = ?, reason = ?, updated_at = ?
            where campaign = ? and state = 'claimed' and (claimed_by is null or claimed_by <> ?)
            """,
            [str(target), reason, utcnow(), campaign, run_id],
        )


def count_pending(wh: Warehouse, campaign: str, run_id: str) -> int:
    row = wh.fetchone(
        "select count(*) from nudge.send_ledger where campaign = ? and state = 'pending' "
        "and (claimed_by is null or claimed_by <> ?)",
        [campaign, run_id],
    )
    return int(row[0]) if row else 0


def claim_batch(wh: Warehouse, campaign: str, run_id: str, limit: int) -> list[ClaimedRow]:
    """Claim up to `limit` pending rows for this run and commit the claim.

    Rows this run already tried (and put back to pending) are not claimed again: their
    `claimed_by` is this run. The claim is guarded by `state = 'pending'`, so two runs never
    both claim a row.
    """
    keys = [
        r[0]
        for r in wh.fetchall(
            """
            select ledger_key from nudge.send_ledger
            where campaign = ? and state = 'pending' and (claimed_by is null or claimed_by <> ?)
            order by entry_as_of, ledger_key
            limit ?
            """,
            [campaign, run_id, limit],
        )
    ]
    if not keys:
        return []
    now = utcnow()
    with wh.transaction():
        claimed = [
            key
            for key in keys
            if affected_rows(
                wh,
                "update nudge.send_ledger set state = 'claimed', claimed_by = ?, claimed_at = ?, "
                "updated_at = ? where ledger_key = ? and state = 'pending'",
                [run_id, now, now, key],
            )
        ]
    if not claimed:
        return []
    rows = wh.fetchall(
        f"""
        select ledger_key, campaign, entity_id, entry_as_of, step, recipient, payload, attempts
        from nudge.send_ledger
        where ledger_key in ({placeholders(len(claimed))}) and state = 'claimed' and claimed_by = ?
        order by entry_as_of, ledger_key
        """,
        [*claimed, run_id],
    )
    return [
        ClaimedRow(k, c, e, a, s, rcpt, json.loads(p) if p else {}, int(n or 0))
        for k, c, e, a, s, rcpt, p, n in rows
    ]


@dataclass(frozen=True)
class Recorded:
    ledger_key: str
    outcome: Outcome
    attempts_total: int
    provider_message_id: str | None = None


def record_outcomes(wh: Warehouse, run_id: str, results: Sequence[Recorded]) -> None:
    """Record a batch's outcomes in one transaction (claimed -> sent|failed|pending|unknown)."""
    now = utcnow()
    with wh.transaction():
        for r in results:
            check_transition(State.CLAIMED, r.outcome.state)
            touched = affected_rows(
                wh,
                """
                update nudge.send_ledger set state = ?, reason = ?, attempts = ?,
                    last_error = coalesce(?, last_error),
                    provider_message_id = coalesce(?, provider_message_id),
                    sent_at = ?, updated_at = ?
                where ledger_key = ? and state = 'claimed' and claimed_by = ?
                """,
                [
                    str(r.outcome.state),
                    r.outcome.reason,
                    r.attempts_total,
                    r.outcome.error,
                    r.provider_message_id,
                    now if r.outcome.state == State.SENT else None,
                    now,
                    r.ledger_key,
                    run_id,
                ],
            )
            if not touched:
                # Someone recovered our claim (we were thought dead): say so, change nothing.
                log.warning(
                    "send ledger: %s was no longer claimed by run %s; outcome %s not recorded",
                    r.ledger_key,
                    run_id,
                    r.outcome.state,
                )


def release_rows(wh: Warehouse, campaign: str, include_unknown: bool = False) -> int:
    """held (and unknown) -> pending; returns how many rows were released."""
    states = [State.HELD, State.UNKNOWN] if include_unknown else [State.HELD]
    for s in states:
        check_transition(s, State.PENDING)
    with wh.transaction():
        return affected_rows(
            wh,
            f"""
            update nudge.send_ledger
            set state = 'pending', reason = 'released', claimed_by = null, updated_at = ?
            where campaign = ? and state in ({placeholders(len(states))})
            """,
            [utcnow(), campaign, *(str(s) for s in states)],
        )


def state_counts(wh: Warehouse, campaign: str) -> dict[str, int]:
    rows = wh.fetchall(
        "select state, count(*) from nudge.send_ledger where campaign = ? group by state",
        [campaign],
    )
    return {s: int(n) for s, n in rows}
