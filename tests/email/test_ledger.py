"""The send ledger: its state machine (pure) and its SQL on DuckDB and Postgres."""

from __future__ import annotations

from datetime import datetime

import pytest

from email_jobs.ledger import (
    LedgerError,
    NewEntry,
    Outcome,
    Recorded,
    State,
    can_transition,
    check_transition,
    claim_batch,
    cooldown_blockers,
    ensure_schema,
    insert_entries,
    ledger_key,
    outcome_after_delivery,
    record_outcomes,
    recover_claims,
    recovered_state,
    release_rows,
    state_counts,
)

T0 = datetime(2026, 1, 10)


# -- warehouses --------------------------------------------------------------------------------


def _entry(
    entity: str,
    *,
    state: State = State.PENDING,
    as_of: datetime = T0,
    campaign: str = "c",
    reason: str | None = None,
) -> NewEntry:
    return NewEntry(
        ledger_key=ledger_key(campaign, entity, as_of),
        campaign=campaign,
        entity_id=entity,
        entry_as_of=as_of,
        step=0,
        evaluation_id=f"{campaign}@x",
        state=state,
        reason=reason,
        recipient=f"{entity}@example.com",
        payload=f'{{"entity_id": "{entity}"}}',
    )


# -- pure ------------------------------------------------------------------------------------


def test_ledger_key_names_campaign_entity_instant_and_step():
    assert ledger_key("too_many_4xx_7d", "u1", datetime(2026, 1, 8)) == (
        "too_many_4xx_7d|u1|2026-01-08T00:00:00Z|0"
    )


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        ("pending", "claimed", True),
        ("claimed", "sent", True),
        ("claimed", "failed", True),
        ("claimed", "pending", True),
        ("claimed", "unknown", True),
        ("held", "pending", True),
        ("unknown", "pending", True),
        ("sent", "pending", False),
        ("skipped", "pending", False),
        ("failed", "pending", False),
        ("pending", "sent", False),  # never sent without a committed claim
        ("held", "claimed", False),
    ],
)
def test_transitions(old, new, ok):
    assert can_transition(old, new) is ok
    if not ok:
        with pytest.raises(LedgerError, match=f"from '{old}' to '{new}'"):
            check_transition(old, new)


def test_outcome_after_delivery_classes():
    assert outcome_after_delivery("sent", None, 1, 10).state == State.SENT
    failed = outcome_after_delivery("failed", "550 no such user", 1, 10)
    assert (failed.state, failed.reason, failed.error) == (
        State.FAILED,
        "permanent_error",
        "550 no such user",
    )
    later = outcome_after_delivery("retryable", "429", 4, 10)
    assert (later.state, later.reason) == (State.PENDING, "retry_later")
    gave_up = outcome_after_delivery("retryable", "503", 10, 10)
    assert (gave_up.state, gave_up.reason) == (State.FAILED, "gave_up")
    assert outcome_after_delivery("unknown", "boom", 1, 10).state == State.UNKNOWN


def test_recovered_state_follows_on_unknown():
    assert recovered_state("hold") == State.UNKNOWN
    assert recovered_state("resend") == State.PENDING


# -- SQL, both engines ---------------------------------------------------------------------------


def test_insert_is_idempotent_on_ledger_key(wh):
    ensure_schema(wh)
    ensure_schema(wh)  # twice: DDL is idempotent
    with wh.transaction():
        assert insert_entries(wh, [_entry("a"), _entry("b")]) == 2
    with wh.transaction():
        assert insert_entries(wh, [_entry("a", state=State.SKIPPED, reason="x"), _entry("c")]) == 1
    assert state_counts(wh, "c") == {"pending": 3}


def test_a_row_cannot_start_claimed_or_sent(wh):
    ensure_schema(wh)
    with pytest.raises(LedgerError, match="cannot start as"), wh.transaction():
        insert_entries(wh, [_entry("a", state=State.SENT)])


def expire_leases(wh) -> None:
    """What a dead run's claims come to once nobody renews them (on DuckDB the writer lock
    already tells that their run is gone)."""
    with wh.transaction():
        wh.execute("update nudge.send_ledger set lease_expires_at = ? where state = 'claimed'",
                   [datetime(2000, 1, 1)])  # fmt: skip


def test_claim_record_recover_release(wh):
    ensure_schema(wh)
    with wh.transaction():
        insert_entries(
            wh,
            [_entry(e) for e in "abcde"] + [_entry("h", state=State.HELD, reason="blast_radius")],
        )
    batch = claim_batch(wh, "c", "run1", 3)
    assert [r.entity_id for r in batch] == ["a", "b", "c"]
    assert batch[0].payload == {"entity_id": "a"}
    # Another run cannot claim the same rows.
    assert [r.entity_id for r in claim_batch(wh, "c", "run2", 10)] == ["d", "e"]
    record_outcomes(
        wh,
        "run1",
        [
            Recorded(batch[0].ledger_key, Outcome(State.SENT), 1, "msg-1"),
            Recorded(batch[1].ledger_key, Outcome(State.PENDING, "retry_later", "429"), 4),
        ],
    )
    # run1 does not claim again what it already tried; "c" is still claimed by run1.
    assert claim_batch(wh, "c", "run1", 10) == []
    # run3 finds run1's and run2's claims abandoned (their leases ran out): unknown, not resent.
    assert recover_claims(wh, "c", "run3", "hold") == (3 if wh.kind == "duckdb" else 0)
    expire_leases(wh)
    assert recover_claims(wh, "c", "run3", "hold") == (0 if wh.kind == "duckdb" else 3)
    assert state_counts(wh, "c") == {"sent": 1, "pending": 1, "unknown": 3, "held": 1}
    row = wh.fetchdicts("select * from nudge.send_ledger where entity_id = 'a'")[0]
    assert (row["provider_message_id"], row["attempts"]) == ("msg-1", 1)
    assert row["sent_at"] is not None
    b = wh.fetchdicts("select * from nudge.send_ledger where entity_id = 'b'")[0]
    assert (b["attempts"], b["last_error"], b["reason"]) == (4, "429", "retry_later")
    # A late outcome from a run whose claim was recovered changes nothing.
    record_outcomes(wh, "run2", [Recorded(ledger_key("c", "d", T0), Outcome(State.SENT), 1)])
    assert state_counts(wh, "c")["unknown"] == 3

    assert release_rows(wh, "c") == 1  # held only
    assert release_rows(wh, "c", include_unknown=True) == 3
    assert state_counts(wh, "c") == {"sent": 1, "pending": 5}
    assert [r.entity_id for r in claim_batch(wh, "c", "run4", 10)] == ["b", "c", "d", "e", "h"]


def test_recover_with_resend_puts_rows_back_to_pending(wh):
    ensure_schema(wh)
    with wh.transaction():
        insert_entries(wh, [_entry("a")])
    claim_batch(wh, "c", "dead", 5)
    expire_leases(wh)
    assert recover_claims(wh, "c", "now", "resend") == 1
    assert [r.entity_id for r in claim_batch(wh, "c", "now", 5)] == ["a"]


def test_cooldown_blockers_ignore_skipped_and_failed_rows(wh):
    ensure_schema(wh)
    d = datetime(2026, 1, 1)
    with wh.transaction():
        insert_entries(
            wh,
            [
                _entry("sent", as_of=d),
                _entry("skipped", as_of=d, state=State.SKIPPED, reason="no_email"),
                _entry("failed", as_of=d),
                _entry("held", as_of=d, state=State.HELD, reason="blast_radius"),
                _entry("other_campaign", as_of=d, campaign="other"),
            ],
        )
    claim_batch(wh, "c", "r", 10)
    record_outcomes(
        wh,
        "r",
        [
            Recorded(ledger_key("c", "sent", d), Outcome(State.SENT), 1),
            Recorded(
                ledger_key("c", "failed", d), Outcome(State.FAILED, "permanent_error", "x"), 1
            ),
        ],
    )
    low, high = datetime(2025, 12, 20), datetime(2026, 1, 20)
    assert cooldown_blockers(wh, "c", low, high, exclude_as_of=high) == {"sent", "held"}
    # The bounds are strict, and the instant being evaluated is not its own cooldown.
    assert cooldown_blockers(wh, "c", d, high, exclude_as_of=high) == set()
    assert cooldown_blockers(wh, "c", low, high, exclude_as_of=d) == set()


def test_instants_with_a_fraction_of_a_second_keep_distinct_keys():
    a, b = datetime(2026, 1, 8, 6, 0, 0, 100), datetime(2026, 1, 8, 6, 0, 0, 200)
    assert ledger_key("c", "u", a) != ledger_key("c", "u", b)
    assert ledger_key("c", "u", a) == "c|u|2026-01-08T06:00:00.000100Z|0"
