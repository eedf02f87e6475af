"""The `nudge` schema: evaluations, membership history, the send ledger and its state machine.

Portable DDL and SQL (DuckDB and Postgres). Times are naive UTC `timestamp`s.

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

import json
import logging
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from email_jobs.faults import fault_point
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
        sent_as_of           timestamp,     -- evaluation instant of the run that claimed it
        created_at           timestamp not null,
        updated_at           timestamp not null
    )
    """,
    # Ledgers created before the frequency cap.
    "alter table nudge.send_ledger add column if not exists sent_as_of timestamp",
    # Ledgers created before leases: until when the claiming run is known to be alive.
    "alter table nudge.send_ledger add column if not exists lease_expires_at timestamp",
    # Who a message was not sent to because they are suppressed: JSON [{"address", "role"}].
    "alter table nudge.send_ledger add column if not exists suppressed_recipients text",
    # Normalized, lower-cased addresses; source: `csv:suppressions/<file>`, `sendgrid:<list>`
    # or `manual`. Append-only but for lifting (email_jobs.suppressions): a row is active while
    # `lifted_at` is null; every reader uses active rows only.
    """
    create table if not exists nudge.suppressions (
        email       varchar not null,
        reason      varchar,
        source      varchar
    )
    """,
    "alter table nudge.suppressions add column if not exists first_seen_at timestamp",
    "alter table nudge.suppressions add column if not exists source_time timestamp",
    "alter table nudge.suppressions add column if not exists added_by varchar",
    "alter table nudge.suppressions add column if not exists lifted_at timestamp",
    "alter table nudge.suppressions add column if not exists lifted_by varchar",
    "alter table nudge.suppressions add column if not exists lifted_reason text",
    # Delivery events (SendGrid's Event Webhook through `nudge serve`), matched to the ledger by
    # nudge_key. Created here too so that the outcome models read it before any event arrived.
    """
    create table if not exists nudge.email_events (
        nudge_key    varchar,
        event        varchar,
        event_at     timestamp,
        url          varchar,
        email        varchar,
        campaign     varchar,
        entity_id    varchar,
        received_at  timestamp,
        payload      text
    )
    """,
)


_ADD_COLUMN = re.compile(
    r"^\s*alter table (\w+)\.(\w+) add column if not exists (\w+)\b", re.IGNORECASE
)


def ensure_schema(wh: Warehouse) -> None:
    """Create what is missing. On Postgres an `alter table ... add column if not exists` takes
    the table's exclusive lock even when the column exists, and deadlocks with a concurrent
    send run's reads: a column already there is not altered again."""
    with wh.transaction():
        for stmt in DDL:
            added = _ADD_COLUMN.match(stmt) if wh.kind == "postgres" else None
            if added and wh.fetchone(
                "select 1 from information_schema.columns "
                "where table_schema = ? and table_name = ? and column_name = ?",
                list(added.groups()),
            ):
                continue
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
    suppressed_recipients: str | None = None  # JSON [{"address", "role"}] dropped from it


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
                e.suppressed_recipients,
                0,
                now,
                now,
            ]
        )
    inserted = 0
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        values = ", ".join(f"({placeholders(14)})" for _ in part)
        inserted += affected_rows(
            wh,
            f"""
            insert into nudge.send_ledger (ledger_key, campaign, entity_id, entry_as_of, step,
                evaluation_id, state, reason, recipient, payload, suppressed_recipients, attempts,
                created_at, updated_at)
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
    """Entities with a row that started a cooldown (not skipped/failed, but a held-out entry
    starts one as a send would, so both groups re-enter on one rhythm) and an entry instant
    strictly inside (low, high), other than entries at `exclude_as_of` itself."""
    rows = wh.fetchall(
        f"""
        select distinct entity_id from nudge.send_ledger
        where campaign = ? and entry_as_of > ? and entry_as_of < ? and entry_as_of <> ?
          and (state not in ({placeholders(len(NO_COOLDOWN_STATES))})
               or (state = 'skipped' and reason = 'holdout'))
        """,
        [campaign, low, high, exclude_as_of, *sorted(NO_COOLDOWN_STATES)],
    )
    return {r[0] for r in rows}


def addresses_at(wh: Warehouse, campaign: str, entry_as_of: datetime, step: int) -> set[str]:
    """Lower-cased recipients of the campaign's entries at this instant and step that went or
    will go out (not skipped or failed)."""
    rows = wh.fetchall(
        f"""
        select distinct lower(recipient) from nudge.send_ledger
        where campaign = ? and entry_as_of = ? and step = ? and recipient is not null
          and state not in ({placeholders(len(NO_COOLDOWN_STATES))})
        """,
        [campaign, entry_as_of, step, *sorted(NO_COOLDOWN_STATES)],
    )
    return {r[0] for r in rows}


ACTIVE_SUPPRESSION = "lifted_at is null"  # a lifted suppression no longer counts


def suppressed_emails(wh: Warehouse) -> set[str]:
    rows = wh.fetchall(
        f"select email from nudge.suppressions where email is not null and {ACTIVE_SUPPRESSION}"
    )
    return {r[0].strip().lower() for r in rows}


def active_suppressions(wh: Warehouse, addresses: Iterable[str], chunk: int = 500) -> set[str]:
    """The given lower-cased addresses that are suppressed now (one query per chunk)."""
    wanted = sorted(set(addresses))
    found: set[str] = set()
    for i in range(0, len(wanted), chunk):
        part = wanted[i : i + chunk]
        rows = wh.fetchall(
            f"select distinct email from nudge.suppressions where {ACTIVE_SUPPRESSION} "
            f"and email in ({placeholders(len(part))})",
            part,
        )
        found |= {r[0] for r in rows}
    return found


def rows_with_drops(wh: Warehouse, keys: Sequence[str]) -> set[str]:
    """The given ledger rows that record suppressed recipients."""
    if not keys:
        return set()
    rows = wh.fetchall(
        f"select ledger_key from nudge.send_ledger where ledger_key in "
        f"({placeholders(len(keys))}) and suppressed_recipients is not null",
        list(keys),
    )
    return {r[0] for r in rows}


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


def db_utcnow(wh: Warehouse) -> datetime:
    """Now, naive UTC, from the clock every run compares leases with: the Postgres server's (one
    clock for every sending machine), or this machine's for DuckDB (one machine by design)."""
    if wh.kind == "postgres":
        row = wh.fetchone("select clock_timestamp() at time zone 'utc'")
        assert row is not None
        return row[0]
    return utcnow()


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
        expired, params = "", []
        if wh.kind != "duckdb":
            expired = "and (lease_expires_at is null or lease_expires_at < ?)"
            params = [db_utcnow(wh)]
        return affected_rows(
            wh,
            f"""
            update nudge.send_ledger
            set state = ?, reason = ?, lease_expires_at = null, updated_at = ?
            where campaign = ? and state = 'claimed' and (claimed_by is null or claimed_by <> ?)
              {expired}
            """,
            [str(target), reason, utcnow(), campaign, run_id, *params],
        )


def extend_leases(wh: Warehouse, run_id: str, lease_s: float) -> int:
    """The heartbeat: this run's claimed rows stay its own for `lease_s` more seconds. Returns
    how many rows it still holds."""
    with wh.transaction():
        until = db_utcnow(wh) + timedelta(seconds=lease_s)
        return affected_rows(
            wh,
            "update nudge.send_ledger set lease_expires_at = ? "
            "where state = 'claimed' and claimed_by = ?",
            [until, run_id],
        )


def count_pending(wh: Warehouse, campaign: str, run_id: str) -> int:
    row = wh.fetchone(
        "select count(*) from nudge.send_ledger where campaign = ? and state = 'pending' "
        "and (claimed_by is null or claimed_by <> ?)",
        [campaign, run_id],
    )
    return int(row[0]) if row else 0


DAY = timedelta(days=1)
# Serializes claims across processes on Postgres, so that two concurrent send runs count the
# frequency cap from the same committed rows (DuckDB has one writer per file anyway).
_CLAIM_LOCK_ID = 7_446_110_301


@dataclass(frozen=True)
class Claim:
    """One claim's result: the rows to send now, and how many the frequency cap deferred."""

    rows: list[ClaimedRow]
    deferred: int = 0


def _recent_sends(wh: Warehouse, recipients: Sequence[str], as_of: datetime) -> dict[str, int]:
    """Per lower-cased recipient: rows claimed, sent or unknown (maybe sent) whose send run's
    instant is within a day of `as_of`, either side, across every campaign."""
    if not recipients:
        return {}
    rows = wh.fetchall(
        f"""
        select lower(recipient), count(*) from nudge.send_ledger
        where lower(recipient) in ({placeholders(len(recipients))})
          and state in ('claimed', 'sent', 'unknown')
          and sent_as_of > ? and sent_as_of < ?
        group by lower(recipient)
        """,
        [*recipients, as_of - DAY, as_of + DAY],
    )
    return {r: int(n) for r, n in rows}


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
    within a day of `as_of` keeps the rest pending (reason `frequency_cap`); oldest entries go
    first, so the deferred ones lead the next evaluation's claim.
    """
    cap = max_per_recipient_per_day if as_of is not None else 0
    for r in recorded:
        check_transition(State.CLAIMED, r.outcome.state)
    now = utcnow()
    with wh.transaction():
        if recorded:
            _record_rows(wh, run_id, recorded)
        if wh.kind == "postgres":
            wh.execute("select pg_advisory_xact_lock(?)", [_CLAIM_LOCK_ID])
        rows = wh.fetchall(
            """
            select ledger_key, campaign, entity_id, entry_as_of, step, recipient, payload,
                attempts
            from nudge.send_ledger
            where campaign = ? and state = 'pending' and (claimed_by is null or claimed_by <> ?)
            order by entry_as_of, ledger_key
            limit ?
            """,
            [campaign, run_id, limit],
        )
        if not rows:
            return Claim([])
        candidates = [(row[0], row[5]) for row in rows]
        take: list[str] = []
        defer: list[str] = []
        if cap > 0 and as_of is not None:
            used = _recent_sends(wh, sorted({r.lower() for _, r in candidates if r}), as_of)
            for key, recipient in candidates:
                who = recipient.lower() if recipient else None
                if who is not None and used.get(who, 0) >= cap:
                    defer.append(key)
                    continue
                if who is not None:
                    used[who] = used.get(who, 0) + 1
                take.append(key)
        else:
            take = [k for k, _ in candidates]
        taken = 0
        if take:
            taken = affected_rows(
                wh,
                f"""
                update nudge.send_ledger
                set state = 'claimed', claimed_by = ?, claimed_at = ?, sent_as_of = ?,
                    lease_expires_at = ?, updated_at = ?
                where ledger_key in ({placeholders(len(take))}) and state = 'pending'
                """,
                [run_id, now, as_of, db_utcnow(wh) + timedelta(seconds=lease_s), now, *take],
            )
        if defer:
            wh.execute(
                f"""
                update nudge.send_ledger
                set claimed_by = ?, reason = 'frequency_cap', last_error = ?, updated_at = ?
                where ledger_key in ({placeholders(len(defer))}) and state = 'pending'
                """,
                [
                    run_id,
                    f"deferred by the frequency cap: the recipient already has {cap} email(s) "
                    f"within a day of {instant_iso(as_of)} "
                    "(NUDGE_MAX_EMAILS_PER_RECIPIENT_PER_DAY); a later evaluation sends it",
                    now,
                    *defer,
                ],
            )
    if not take:
        return Claim([], len(defer))
    if taken == len(take):  # every candidate was still pending: they are ours as read
        chosen = set(take)
        return Claim(
            [
                ClaimedRow(k, c, e, a, st, rcpt, json.loads(p) if p else {}, int(n or 0))
                for k, c, e, a, st, rcpt, p, n in rows
                if k in chosen
            ],
            len(defer),
        )
    # Another writer changed a candidate meanwhile: read back what this run holds.
    rows = wh.fetchall(
        f"""
        select ledger_key, campaign, entity_id, entry_as_of, step, recipient, payload, attempts
        from nudge.send_ledger
        where ledger_key in ({placeholders(len(take))}) and state = 'claimed' and claimed_by = ?
        order by entry_as_of, ledger_key
        """,
        [*take, run_id],
    )
    claimed = [
        ClaimedRow(k, c, e, a, s, rcpt, json.loads(p) if p else {}, int(n or 0))
        for k, c, e, a, s, rcpt, p, n in rows
    ]
    return Claim(claimed, len(defer))


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
    now = utcnow()
    touched = 0
    for i in range(0, len(results), 200):
        part = results[i : i + 200]
        values = ", ".join(f"({placeholders(6)})" for _ in part)
        touched += affected_rows(
            wh,
            f"""
            update nudge.send_ledger as t set
                state = v.state, reason = v.reason, attempts = v.attempts,
                last_error = coalesce(v.error, t.last_error),
                provider_message_id = coalesce(v.message_id, t.provider_message_id),
                sent_at = case when v.state = 'sent' then cast(? as timestamp) else null end,
                sent_as_of = case when v.state in ('sent', 'unknown') then t.sent_as_of
                    else null end,
                lease_expires_at = null,
                updated_at = cast(? as timestamp)
            from (values {values}) as v(ledger_key, state, reason, attempts, error, message_id)
            where t.ledger_key = v.ledger_key and t.state = 'claimed' and t.claimed_by = ?
            """,
            [
                now,
                now,
                *(
                    v
                    for r in part
                    for v in (
                        r.ledger_key,
                        str(r.outcome.state),
                        r.outcome.reason,
                        r.attempts_total,
                        r.outcome.error,
                        r.provider_message_id,
                    )
                ),
                run_id,
            ],
        )
        fault_point("mid_record")
    if touched < len(results):
        # Someone recovered our claim (we were thought dead): say so, change nothing.
        log.warning(
            "send ledger: %d of %d row(s) were no longer claimed by run %s; their outcomes "
            "were not recorded",
            len(results) - touched,
            len(results),
            run_id,
        )


def record_suppressed_at_claim(
    wh: Warehouse, run_id: str, drops: dict[str, str | None], skip: Collection[str]
) -> int:
    """At the claim, what the suppression list took from this run's claimed rows: each row's
    `suppressed_recipients` (JSON, None for none), and claimed -> skipped(suppressed) for the
    rows in `skip` (no To address left). Only rows still claimed by this run. Returns how many
    were skipped."""
    check_transition(State.CLAIMED, State.SKIPPED)
    skipped = 0
    with wh.transaction():
        for key, dropped in drops.items():
            skip_it = key in skip
            skipped += int(skip_it) * affected_rows(
                wh,
                """
                update nudge.send_ledger set suppressed_recipients = ?,
                    state = case when ? then 'skipped' else state end,
                    reason = case when ? then 'suppressed' else reason end,
                    sent_as_of = case when ? then null else sent_as_of end, updated_at = ?
                where ledger_key = ? and state = 'claimed' and claimed_by = ?
                """,
                [dropped, skip_it, skip_it, skip_it, utcnow(), key, run_id],
            )
    return skipped


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
