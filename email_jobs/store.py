"""The SQL of the `nudge` schema: its DDL, and every statement that reads or writes its tables.

Tables: `evaluations` (one row per completed evaluation), `cohort_membership` (who was in which
campaign's cohort at which instant), `send_ledger` (one row per entry and step; its states are
email_jobs.ledger's), `suppressions` (addresses never mailed). Portable DDL and SQL (DuckDB and
Postgres); times are naive UTC `timestamp`s.

Functions here take and return plain values and decide nothing: what a row may become is
email_jobs.ledger's, what an evaluation records is email_jobs.decisions'. Callers own the
transactions, except where a function says it opens one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from email_jobs.faults import fault_point
from nudge.core.warehouse import Warehouse

SCHEMA = "nudge"

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
    # An unsubscribe link's sighting: the member (campaign entity) whose message carried the
    # link, so the outcomes credit that entry whoever of its recipients clicked.
    "alter table nudge.suppressions add column if not exists entity_id varchar",
    # SendGrid's Event Webhook, as `nudge serve` receives it (email_jobs.email_events). One row
    # per (ledger key, recipient, event, SendGrid's timestamp, clicked URL): a redelivery, whose
    # sg_event_id may differ, finds its row already there. '' stands for an absent key/email/url.
    """
    create table if not exists nudge.email_events (
        nudge_key     varchar not null,
        email         varchar not null,
        event         varchar not null,
        event_ts      bigint not null,
        url           varchar not null,
        event_at      timestamp not null,
        campaign      varchar,
        entity_id     varchar,
        reason        text,
        sg_event_id   varchar,
        sg_message_id varchar,
        received_at   timestamp not null,
        primary key (nudge_key, email, event, event_ts, url)
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


# -- the send ledger: rows as written and as claimed ------------------------------------------


@dataclass(frozen=True)
class NewEntry:
    ledger_key: str
    campaign: str
    entity_id: str
    entry_as_of: datetime
    step: int
    evaluation_id: str
    state: str
    reason: str | None
    recipient: str | None
    payload: str
    suppressed_recipients: str | None = None  # JSON [{"address", "role"}] dropped from it


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


def insert_ledger_rows(wh: Warehouse, entries: Iterable[NewEntry], chunk: int = 200) -> int:
    """Insert-if-absent on ledger_key; returns how many rows were new."""
    now = utcnow()
    rows = [
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
        for e in entries
    ]
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


def ledger_states(wh: Warehouse, keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """ledger_key -> (state, reason) of the given rows."""
    states: dict[str, tuple[str, str | None]] = {}
    for i in range(0, len(keys), 500):
        chunk = list(keys[i : i + 500])
        rows = wh.fetchall(
            "select ledger_key, state, reason from nudge.send_ledger "
            f"where ledger_key in ({placeholders(len(chunk))})",
            chunk,
        )
        states.update({k: (s, r) for k, s, r in rows})
    return states


def cooldown_blockers(
    wh: Warehouse,
    campaign: str,
    low: datetime,
    high: datetime,
    exclude_as_of: datetime,
    no_cooldown_states: Iterable[str],
    *,
    skipped_reasons: Iterable[str] = (),
) -> set[str]:
    """Entities with a row not in `no_cooldown_states`, or skipped with one of
    `skipped_reasons`, and an entry instant strictly inside (low, high), other than entries at
    `exclude_as_of` itself."""
    states = sorted(str(s) for s in no_cooldown_states)
    reasons = sorted(str(r) for r in skipped_reasons)
    also = (
        f" or (state = 'skipped' and reason in ({placeholders(len(reasons))}))" if reasons else ""
    )
    rows = wh.fetchall(
        f"""
        select distinct entity_id from nudge.send_ledger
        where campaign = ? and entry_as_of > ? and entry_as_of < ? and entry_as_of <> ?
          and (state not in ({placeholders(len(states))}){also})
        """,
        [campaign, low, high, exclude_as_of, *states, *reasons],
    )
    return {r[0] for r in rows}


def addresses_at(
    wh: Warehouse,
    campaign: str,
    entry_as_of: datetime,
    step: int,
    no_cooldown_states: Iterable[str],
) -> set[str]:
    """Lower-cased recipients of the campaign's entries at this instant and step whose rows are
    not in `no_cooldown_states` (they went or will go out)."""
    states = sorted(str(s) for s in no_cooldown_states)
    rows = wh.fetchall(
        f"""
        select distinct lower(recipient) from nudge.send_ledger
        where campaign = ? and entry_as_of = ? and step = ? and recipient is not null
          and state not in ({placeholders(len(states))})
        """,
        [campaign, entry_as_of, step, *states],
    )
    return {r[0] for r in rows}


def drip_rows(
    wh: Warehouse, campaign: str, since: datetime, end: datetime
) -> list[tuple[str, datetime, int, str, str]]:
    """(entity_id, entry_as_of, step, state, evaluation_id) of the campaign's rows for entries
    in [since, end)."""
    rows = wh.fetchall(
        "select entity_id, entry_as_of, step, state, evaluation_id from nudge.send_ledger "
        "where campaign = ? and entry_as_of >= ? and entry_as_of < ?",
        [campaign, since, end],
    )
    return [(e, a, int(s), st, ev) for e, a, s, st, ev in rows]


def goal_conversions(
    wh: Warehouse, relation: str, since: datetime, end: datetime
) -> dict[str, list[datetime]]:
    """Per entity, the conversion instants in (since, end] of a goal model (`entity_id,
    converted_at`). `relation` is a quoted relation name from dbt's manifest (Warehouse.relation
    of a campaign's goal), never a person's text."""
    rows = wh.fetchall(
        f"select cast(entity_id as varchar), converted_at from {relation} "
        "where converted_at > ? and converted_at <= ?",
        [since, end],
    )
    out: dict[str, list[datetime]] = {}
    for entity_id, converted_at in rows:
        out.setdefault(entity_id, []).append(converted_at)
    return out


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


def state_counts(wh: Warehouse, campaign: str) -> dict[str, int]:
    rows = wh.fetchall(
        "select state, count(*) from nudge.send_ledger where campaign = ? group by state",
        [campaign],
    )
    return {s: int(n) for s, n in rows}


def count_pending(wh: Warehouse, campaign: str, run_id: str) -> int:
    row = wh.fetchone(
        "select count(*) from nudge.send_ledger where campaign = ? and state = 'pending' "
        "and (claimed_by is null or claimed_by <> ?)",
        [campaign, run_id],
    )
    return int(row[0]) if row else 0


# -- the claim ---------------------------------------------------------------------------------

# Serializes claims across processes on Postgres, so that two concurrent send runs count the
# frequency cap from the same committed rows (DuckDB has one writer per file anyway).
_CLAIM_LOCK_ID = 7_446_110_301
_CLAIMED_COLUMNS = (
    "ledger_key, campaign, entity_id, entry_as_of, step, recipient, payload, attempts"
)


def db_utcnow(wh: Warehouse) -> datetime:
    """Now, naive UTC, from the clock every run compares leases with: the Postgres server's (one
    clock for every sending machine), or this machine's for DuckDB (one machine by design)."""
    if wh.kind == "postgres":
        row = wh.fetchone("select clock_timestamp() at time zone 'utc'")
        assert row is not None
        return row[0]
    return utcnow()


def lock_claims(wh: Warehouse) -> None:
    """Take the claim lock for the rest of the transaction (Postgres)."""
    if wh.kind == "postgres":
        wh.execute("select pg_advisory_xact_lock(?)", [_CLAIM_LOCK_ID])


def _claimed_row(row: Sequence[Any]) -> ClaimedRow:
    k, c, e, a, st, rcpt, p, n = row
    return ClaimedRow(k, c, e, a, st, rcpt, json.loads(p) if p else {}, int(n or 0))


def pending_rows(wh: Warehouse, campaign: str, run_id: str, limit: int) -> list[ClaimedRow]:
    """Up to `limit` pending rows this run has not looked at yet, oldest entries first."""
    rows = wh.fetchall(
        f"""
        select {_CLAIMED_COLUMNS}
        from nudge.send_ledger
        where campaign = ? and state = 'pending' and (claimed_by is null or claimed_by <> ?)
        order by entry_as_of, ledger_key
        limit ?
        """,
        [campaign, run_id, limit],
    )
    return [_claimed_row(r) for r in rows]


def recent_sends(
    wh: Warehouse, recipients: Sequence[str], low: datetime, high: datetime
) -> dict[str, int]:
    """Per lower-cased recipient: rows claimed, sent or unknown (maybe sent) whose send run's
    instant is strictly inside (low, high), across every campaign."""
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
        [*recipients, low, high],
    )
    return {r: int(n) for r, n in rows}


def mark_claimed(
    wh: Warehouse,
    keys: Sequence[str],
    run_id: str,
    as_of: datetime | None,
    lease_until: datetime,
) -> int:
    """pending -> claimed for this run (rows still pending only); returns how many."""
    now = utcnow()
    return affected_rows(
        wh,
        f"""
        update nudge.send_ledger
        set state = 'claimed', claimed_by = ?, claimed_at = ?, sent_as_of = ?,
            lease_expires_at = ?, updated_at = ?
        where ledger_key in ({placeholders(len(keys))}) and state = 'pending'
        """,
        [run_id, now, as_of, lease_until, now, *keys],
    )


def mark_deferred(wh: Warehouse, keys: Sequence[str], run_id: str, message: str) -> None:
    """Pending rows this run looked at and left pending (reason `frequency_cap`)."""
    wh.execute(
        f"""
        update nudge.send_ledger
        set claimed_by = ?, reason = 'frequency_cap', last_error = ?, updated_at = ?
        where ledger_key in ({placeholders(len(keys))}) and state = 'pending'
        """,
        [run_id, message, utcnow(), *keys],
    )


def claimed_by(wh: Warehouse, keys: Sequence[str], run_id: str) -> list[ClaimedRow]:
    """The given rows that are claimed by this run, oldest entries first."""
    rows = wh.fetchall(
        f"""
        select {_CLAIMED_COLUMNS}
        from nudge.send_ledger
        where ledger_key in ({placeholders(len(keys))}) and state = 'claimed' and claimed_by = ?
        order by entry_as_of, ledger_key
        """,
        [*keys, run_id],
    )
    return [_claimed_row(r) for r in rows]


# -- outcomes and leases -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeRow:
    """What one claimed row's delivery left: its next state and bookkeeping."""

    ledger_key: str
    state: str
    reason: str | None
    attempts: int
    error: str | None
    provider_message_id: str | None


def write_outcomes(wh: Warehouse, run_id: str, results: Sequence[OutcomeRow]) -> int:
    """Write outcomes on the rows still claimed by this run, one statement per chunk. A row
    that goes back to pending or fails loses its `sent_as_of` (it no longer counts against the
    frequency cap). Returns how many rows were written."""
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
                        str(r.state),
                        r.reason,
                        r.attempts,
                        r.error,
                        r.provider_message_id,
                    )
                ),
                run_id,
            ],
        )
        fault_point("mid_record")
    return touched


def write_drops_at_claim(
    wh: Warehouse, run_id: str, key: str, dropped: str | None, skip: bool
) -> int:
    """One claimed row's `suppressed_recipients`, and with `skip` claimed -> skipped(suppressed).
    Only a row still claimed by this run; returns 1 when it was skipped."""
    return int(skip) * affected_rows(
        wh,
        """
        update nudge.send_ledger set suppressed_recipients = ?,
            state = case when ? then 'skipped' else state end,
            reason = case when ? then 'suppressed' else reason end,
            sent_as_of = case when ? then null else sent_as_of end, updated_at = ?
        where ledger_key = ? and state = 'claimed' and claimed_by = ?
        """,
        [dropped, skip, skip, skip, utcnow(), key, run_id],
    )


def release_claims_of_dead_runs(
    wh: Warehouse, campaign: str, run_id: str, state: str, reason: str
) -> int:
    """Rows claimed by another run whose lease expired (on DuckDB: every other run's) get
    `state` and `reason`; returns how many."""
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
        [state, reason, utcnow(), campaign, run_id, *params],
    )


def extend_leases(wh: Warehouse, run_id: str, lease_s: float) -> int:
    """This run's claimed rows stay its own for `lease_s` more seconds; returns how many."""
    until = db_utcnow(wh) + timedelta(seconds=lease_s)
    return affected_rows(
        wh,
        "update nudge.send_ledger set lease_expires_at = ? "
        "where state = 'claimed' and claimed_by = ?",
        [until, run_id],
    )


def set_pending(wh: Warehouse, campaign: str, states: Sequence[str]) -> int:
    """The campaign's rows in `states` -> pending(released); returns how many."""
    return affected_rows(
        wh,
        f"""
        update nudge.send_ledger
        set state = 'pending', reason = 'released', claimed_by = null, updated_at = ?
        where campaign = ? and state in ({placeholders(len(states))})
        """,
        [utcnow(), campaign, *(str(s) for s in states)],
    )


# -- evaluations and membership ----------------------------------------------------------------


def previous_evaluation(wh: Warehouse, campaign: str, end: datetime) -> datetime | None:
    """The campaign's latest completed evaluation at an instant before `end`."""
    row = wh.fetchone(
        "select max(as_of) from nudge.evaluations where campaign = ? and as_of < ?",
        [campaign, end],
    )
    return row[0] if row and row[0] is not None else None


def latest_evaluation(wh: Warehouse, campaign: str) -> datetime | None:
    """The campaign's newest evaluation instant (None before the schema exists)."""
    if not wh.table_exists("nudge", "evaluations"):
        return None
    row = wh.fetchone("select max(as_of) from nudge.evaluations where campaign = ?", [campaign])
    return row[0] if row else None


def members_at(wh: Warehouse, campaign: str, as_of: datetime) -> set[str]:
    rows = wh.fetchall(
        "select entity_id from nudge.cohort_membership where campaign = ? and as_of = ?",
        [campaign, as_of],
    )
    return {r[0] for r in rows}


def absent_since(
    wh: Warehouse, campaign: str, entity_id: str, since: datetime, end: datetime
) -> bool:
    """Was the entity missing from the membership of some evaluation in (since, end)?"""
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
    return bool(row) and int(row[0]) != 0


def record_membership(
    wh: Warehouse, campaign: str, cohort: str, relation: str, as_of: datetime
) -> None:
    """Replace the campaign's membership at `as_of` with the cohort relation's rows, in SQL (a
    cohort may have many members): one row per entity, the smallest non-blank email."""
    wh.execute(
        "delete from nudge.cohort_membership where campaign = ? and as_of = ?",
        [campaign, as_of],
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
        [campaign, cohort, as_of],
    )


def record_membership_rows(
    wh: Warehouse,
    campaign: str,
    cohort: str,
    as_of: datetime,
    members: Sequence[tuple[str, Any]],
) -> None:
    """Replace the campaign's membership at `as_of` with (entity_id, email) rows read from a
    warehouse that is not the state store (batched)."""
    wh.execute(
        "delete from nudge.cohort_membership where campaign = ? and as_of = ?",
        [campaign, as_of],
    )
    wh.insert_rows(
        "nudge.cohort_membership",
        ("campaign", "cohort", "as_of", "entity_id", "email"),
        [
            (campaign, cohort, as_of, str(e), None if email is None else str(email))
            for e, email in members
        ],
    )


@dataclass(frozen=True)
class EvaluationRow:
    evaluation_id: str
    campaign: str
    cohort: str
    as_of: datetime
    run_id: str
    kind: str
    previous_as_of: datetime | None
    members: int
    entered: int
    exited: int
    sendable: int
    skipped: int
    held: int
    guard_reasons: Sequence[str]


def upsert_evaluation(wh: Warehouse, ev: EvaluationRow) -> None:
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
            ev.evaluation_id,
            ev.campaign,
            ev.cohort,
            ev.as_of,
            ev.run_id,
            ev.kind,
            ev.previous_as_of,
            ev.members,
            ev.entered,
            ev.exited,
            ev.sendable,
            ev.skipped,
            ev.held,
            json.dumps(list(ev.guard_reasons)),
            utcnow(),
        ],
    )


# -- suppressions ------------------------------------------------------------------------------

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
