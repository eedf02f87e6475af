"""Evaluating a campaign: baseline, entries, cooldowns, skips and guards (DuckDB and Postgres)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest
from support.warehouse_seed import ingested_dt, seed_events

from email_jobs.campaigns import Campaign
from email_jobs.evaluate import EvaluationDeferred, evaluate_campaign, skip_reason
from email_jobs.guards import GuardLimits, compute_guard_inputs, freshness_reason, stale_reason
from email_jobs.ledger import (
    Outcome,
    Recorded,
    State,
    claim_batch,
    ensure_schema,
    record_outcomes,
    state_counts,
)
from email_jobs.status import collect_status
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect

D0 = datetime(2026, 1, 1)
EVENTS_FROM, EVENTS_TO = datetime(2025, 11, 1), datetime(2026, 4, 1)
CAMPAIGN = Campaign(
    name="x_campaign",
    cohort="cohort_x",
    relation_name='"wh"."analytics"."cohort_x"',
    entity="user",
    template="x",
    cooldown_days=30,
    columns=("entity_id", "email", "first_name"),
)
SETTINGS = Settings(_env_file=None)
LIMITS = GuardLimits()  # the contract's defaults, as in SETTINGS


def day(n: float) -> datetime:
    return D0 + timedelta(days=n)


# -- warehouses and data -----------------------------------------------------------------------


@pytest.fixture
def wh(wh: Warehouse) -> Iterator[Warehouse]:
    """The shared warehouse (tests/conftest.py) with a steady stream of events (so freshness
    holds) and an empty cohort."""
    seed_events(wh, EVENTS_FROM, EVENTS_TO)
    set_cohort(wh, {})
    yield wh


def set_cohort(wh: Warehouse, members: dict[str, str | None]) -> None:
    """The cohort table as dbt would leave it: entity -> email."""
    with wh.transaction():
        wh.execute("create schema if not exists analytics")
        wh.execute(
            "create table if not exists analytics.cohort_x "
            "(entity_id varchar, email varchar, first_name varchar)"
        )
        wh.execute("delete from analytics.cohort_x")
    with wh.transaction():
        wh.executemany(
            "insert into analytics.cohort_x values (?, ?, ?)",
            [(e, email, e.upper()) for e, email in members.items()],
        )


def emails(*entities: str) -> dict[str, str | None]:
    return {e: f"{e}@example.com" for e in entities}


def run(
    wh: Warehouse, n: float, members: dict[str, str | None], campaign: Campaign = CAMPAIGN, **kw
):
    set_cohort(wh, members)
    return evaluate_campaign(wh, campaign, day(n), kw.pop("limits", LIMITS), "run", **kw)


def send_all(wh: Warehouse, campaign: str = CAMPAIGN.name) -> list[str]:
    """Mark every pending row sent (the send loop's ledger side, without a provider)."""
    run_id = f"send-{uuid.uuid4().hex}"
    batch = claim_batch(wh, campaign, run_id, 10_000)
    record_outcomes(wh, run_id, [Recorded(r.ledger_key, Outcome(State.SENT), 1) for r in batch])
    return sorted(r.entity_id for r in batch)


def ledger(wh: Warehouse) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(entity, entry day) -> (state, reason)."""
    rows = wh.fetchall("select entity_id, entry_as_of, state, reason from nudge.send_ledger")
    return {(e, a.date().isoformat()): (s, r) for e, a, s, r in rows}


# -- entries --------------------------------------------------------------------------------


def test_first_evaluation_is_a_baseline_then_only_new_members_enter(wh):
    first = run(wh, 0, emails("a", "b"))
    assert (first.kind, first.members, first.entered, first.ledger_keys) == ("baseline", 2, 2, [])
    assert ledger(wh) == {}

    second = run(wh, 1, emails("a", "c"))
    assert (second.kind, second.previous_as_of) == ("diff", day(0))
    assert (second.members, second.entered, second.exited) == (2, 1, 1)
    assert second.ledger_keys == ["x_campaign|c|2026-01-02T00:00:00Z|0"]
    assert second.counts == {"pending": 1}
    assert ledger(wh) == {("c", "2026-01-02"): ("pending", None)}
    payload = wh.fetchone("select payload, recipient from nudge.send_ledger")
    assert '"first_name": "C"' in payload[0] and payload[1] == "c@example.com"

    membership = wh.fetchall(
        "select as_of, entity_id from nudge.cohort_membership order by as_of, entity_id"
    )
    assert membership == [(day(0), "a"), (day(0), "b"), (day(1), "a"), (day(1), "c")]
    evals = wh.fetchdicts(
        "select kind, members, entered, exited, sendable from nudge.evaluations order by as_of"
    )
    assert evals == [
        {"kind": "baseline", "members": 2, "entered": 2, "exited": 0, "sendable": 0},
        {"kind": "diff", "members": 2, "entered": 1, "exited": 1, "sendable": 1},
    ]


def test_without_baseline_the_first_evaluation_enters_everyone(wh):
    result = run(wh, 0, emails("a", "b"), replace(CAMPAIGN, baseline_first_run=False))
    assert (result.kind, result.counts) == ("diff", {"pending": 2})


def test_evaluating_the_same_instant_again_sends_nothing_twice(wh):
    run(wh, 0, emails("a"))
    assert run(wh, 1, emails("a", "b")).new_ledger_rows == 1
    assert send_all(wh) == ["b"]
    again = run(wh, 1, emails("a", "b"))
    assert (again.entered, again.new_ledger_rows, again.counts) == (1, 0, {"sent": 1})
    assert send_all(wh) == []
    # Late data adds a member at the same instant: only the new one is an entry to send.
    assert run(wh, 1, emails("a", "b", "c")).counts == {"sent": 1, "pending": 1}
    assert send_all(wh) == ["c"]
    assert wh.fetchone("select count(*) from nudge.evaluations")[0] == 2
    assert (
        wh.fetchone("select count(*) from nudge.cohort_membership where as_of = ?", [day(1)])[0]
        == 3
    )


def test_reentry_is_sent_only_after_the_cooldown(wh):
    run(wh, 0, {})
    run(wh, 1, emails("a"))
    assert send_all(wh) == ["a"]
    run(wh, 2, {})
    inside = run(wh, 30, emails("a"))  # 29 days after the entry that was sent
    assert inside.skip_reasons == {"cooldown": 1}
    run(wh, 31, {})
    # 31 days after the sent entry; the skipped day-30 entry started no cooldown.
    assert run(wh, 32, emails("a")).counts == {"pending": 1}
    run(wh, 33, {})
    assert run(wh, 61, emails("a")).skip_reasons == {"cooldown": 1}  # 29 days after day 32
    run(wh, 61.5, {})
    # Exactly the cooldown apart is allowed ("at least 30 days").
    assert run(wh, 62, emails("a")).counts == {"pending": 1}


def test_cooldown_is_measured_both_ways_for_backfills(wh):
    run(wh, 0, {})
    assert run(wh, 50, emails("a")).counts == {"pending": 1}
    # Backfill an earlier instant: it diffs against day 0, and day 50's entry is 20 days away.
    back = run(wh, 30, emails("a"))
    assert (back.previous_as_of, back.entered, back.skip_reasons) == (day(0), 1, {"cooldown": 1})
    # 45 days before day 50: outside the cooldown, sent.
    back2 = run(wh, 5, emails("a"))
    assert back2.counts == {"pending": 1}


def test_previous_evaluation_is_the_latest_earlier_one_whatever_the_gap(wh):
    run(wh, 0, emails("a"))
    week = run(wh, 7, emails("a", "b"))
    assert (week.previous_as_of, week.entered) == (day(0), 1)
    backfill = run(wh, 3, emails("c"))  # out of order: diffs against day 0
    assert (backfill.previous_as_of, backfill.entered, backfill.exited) == (day(0), 1, 1)
    later = run(wh, 8, emails("a", "b", "d"))  # diffs against day 7, not the day-3 backfill
    assert (later.previous_as_of, later.entered, later.exited) == (day(7), 1, 0)


def test_skips_with_reasons_and_skips_start_no_cooldown(wh):
    ensure_schema(wh)
    with wh.transaction():
        wh.execute(
            "insert into nudge.suppressions (email, reason, source) "
            "values ('Sup@Example.com', 'unsubscribed', 'test')"
        )
    run(wh, 0, {})
    members = {
        "none": None,
        "blank": "  ",
        "bad": "not-an-address",
        "sup": "sup@example.com",
        "ok": "ok@example.com",
    }
    result = run(wh, 1, members)
    assert result.counts == {"skipped": 4, "pending": 1}
    assert result.skip_reasons == {"no_email": 2, "invalid_email": 1, "suppressed": 1}
    run(wh, 2, {})
    # "blank" now has an address: its earlier skip did not start a cooldown.
    again = run(wh, 3, {"blank": "blank@example.com", "ok": "ok@example.com"})
    assert ledger(wh)[("blank", "2026-01-04")] == ("pending", None)
    assert ledger(wh)[("ok", "2026-01-04")] == ("skipped", "cooldown")
    assert again.counts == {"pending": 1, "skipped": 1}


def test_skip_reason_order():
    args = {"suppressed": {"s@example.com"}, "in_cooldown": True}
    assert skip_reason("s@example.com", stale=True, **args) == "stale"
    assert skip_reason(None, stale=False, **args) == "no_email"
    assert skip_reason("x@", stale=False, **args) == "invalid_email"
    assert skip_reason(" S@Example.com ", stale=False, **args) == "suppressed"
    assert skip_reason("t@example.com", stale=False, **args) == "cooldown"
    assert skip_reason("t@example.com", stale=False, suppressed=set(), in_cooldown=False) is None


# -- guards -----------------------------------------------------------------------------------


def test_blast_radius_over_the_campaign_limit_holds_the_sends(wh):
    run(wh, 0, {})
    limited = replace(CAMPAIGN, max_sends_per_evaluation=2)
    result = run(wh, 1, {**emails("a", "b", "c"), "d": None}, limited)
    assert result.counts == {"held": 3, "skipped": 1}
    assert list(result.guards) == ["blast_radius"]
    assert "3 sendable entries" in result.guard_reasons[0]
    assert "nudge release x_campaign" in result.guard_reasons[0]
    assert {s for s, _ in ledger(wh).values()} == {"held", "skipped"}
    # Within the limit: nothing held.
    assert run(wh, 2, emails("a", "b", "c", "e", "f"), limited).counts == {"pending": 2}


def test_blast_radius_share_of_the_cohort_holds_when_100_or_more_enter(wh):
    old = {f"old{i}": f"old{i}@example.com" for i in range(10)}
    run(wh, 0, old)
    new = {f"n{i:03}": f"n{i}@example.com" for i in range(110)}
    result = run(wh, 1, {**old, **new})
    assert result.counts == {"held": 110}
    assert "110 of the cohort's 120 members" in result.guards["blast_radius"]
    # 99 entries are below the minimum: no share check.
    run(wh, 2, old)
    few = {f"m{i:03}": f"m{i}@example.com" for i in range(99)}
    assert run(wh, 3, {**old, **few}).counts == {"pending": 99}


def test_broken_export_holds_the_sends(wh):
    run(wh, 0, {})
    result = run(wh, 1, emails("a"), rejected_share=0.05)
    assert result.counts == {"held": 1}
    assert "5.00% of the lines read" in result.guards["broken_export"]
    assert run(wh, 2, emails("a", "b"), rejected_share=0.01).counts == {"pending": 1}


def test_broken_export_share_comes_from_the_ingest_of_this_run(wh):
    with wh.transaction():
        wh.execute(
            "insert into raw.ingested_files (kind, path, dt, size_bytes, mtime, content_hash, "
            "lines_read, loaded, duplicates, rejected, run_id, ingested_at) values "
            "('events', 'a', null, 1, 0, 'h', 1000, 970, 0, 30, 'ingest-1', ?), "
            "('events', 'b', null, 1, 0, 'h', 1000, 1000, 0, 0, 'ingest-2', ?)",
            [D0, D0],
        )
    assert compute_guard_inputs(wh, day(1), LIMITS, run_id="ingest-1").rejected_share == 0.03
    clean = compute_guard_inputs(wh, day(1), LIMITS, run_id="ingest-2")
    assert clean.broken_export_reason is None
    assert compute_guard_inputs(wh, day(1), LIMITS, run_id="other").rejected_share is None
    run(wh, 0, {})
    set_cohort(wh, emails("a"))
    result = evaluate_campaign(wh, CAMPAIGN, day(1), LIMITS, "ingest-1")
    assert result.counts == {"held": 1} and "3.00% of the lines read" in result.guard_reasons[0]


def test_stale_backfill_records_entries_as_skipped_stale(wh):
    ingested_dt(wh, date(2026, 1, 20))  # dt=2026-01-20 covers until 2026-01-21 00:00
    run(wh, 0, {})
    stale = run(wh, 5, emails("a"))
    assert stale.counts == {"skipped": 1} and stale.skip_reasons == {"stale": 1}
    assert "stale evaluation" in stale.guards["stale"]
    # end = 2026-01-19 00:00 is exactly 2 days before the horizon: not stale.
    assert run(wh, 18, emails("a", "b", "c")).counts == {"pending": 2}


def test_stale_boundary_is_the_day_after_the_newest_dt():
    newest = date(2026, 1, 20)
    assert stale_reason(datetime(2026, 1, 19), newest, 2) is None
    assert stale_reason(datetime(2026, 1, 18, 23, 59), newest, 2) is not None
    assert stale_reason(datetime(2026, 1, 25), newest, 2) is None  # ahead of the data
    assert stale_reason(datetime(2026, 1, 1), None, 2) is None  # nothing ingested yet


def test_no_recent_events_defers_and_the_next_evaluation_diffs_against_the_last_good(tmp_path):
    with connect(Settings(warehouse=f"duckdb:///{tmp_path}/w.duckdb", _env_file=None)) as wh:
        seed_events(wh, day(-10), day(2))
        run(wh, 0, emails("a"))
        with pytest.raises(EvaluationDeferred, match="no event with a time in the 48 hours"):
            run(wh, 5, emails("a", "b"))
        assert wh.fetchone("select count(*) from nudge.evaluations")[0] == 1
        assert (
            wh.fetchone("select count(*) from nudge.cohort_membership where as_of = ?", [day(5)])[0]
            == 0
        )
        seed_events(wh, day(2), day(6))  # the missing dumps arrive
        late = run(wh, 5, emails("a", "b"))
        assert (late.previous_as_of, late.entered, late.counts) == (day(0), 1, {"pending": 1})


def test_guard_windows_are_half_open_and_read_once(tmp_path):
    with connect(Settings(warehouse=f"duckdb:///{tmp_path}/w.duckdb", _env_file=None)) as wh:
        seed_events(wh, day(-8), day(0), every_hours=1)  # 24 a day for the 8 days before day 0
        end = day(0)
        inputs = compute_guard_inputs(wh, end, LIMITS)
        assert inputs.day_volume == 24 and inputs.previous_day_volumes == (24,) * 7
        assert inputs.recent_events == 48 and inputs.deferred_reason is None
        # An event exactly at `end` belongs to the next window.
        seed_events(wh, end, end + timedelta(minutes=1))
        assert compute_guard_inputs(wh, end, LIMITS).day_volume == 24
        # The next day has a single event: far below 0.1 x the median of 24.
        with pytest.raises(EvaluationDeferred, match=r"fewer than 0\.1 x the median 24") as exc:
            compute_guard_inputs(wh, day(1), LIMITS)
        assert exc.value.inputs.day_volume == 1


def test_volume_check_needs_three_days_with_events():
    quiet = (0, 0, 0, 0, 0, 500, 500)
    assert freshness_reason(D0, 1, 1, quiet, 48, 0.1) is None
    busy = (0, 0, 0, 0, 500, 500, 500)  # median 0: no day is below a share of it
    assert freshness_reason(D0, 1, 1, busy, 48, 0.1) is None
    steady = (100, 90, 0, 110, 100, 95, 105)
    assert freshness_reason(D0, 9, 9, steady, 48, 0.1) is not None
    assert freshness_reason(D0, 10, 10, steady, 48, 0.1) is None
    assert freshness_reason(D0, 0, 0, steady, 0, 0) is None  # both checks switched off


def test_a_deferred_run_evaluates_no_campaign(wh):
    with pytest.raises(EvaluationDeferred) as exc:
        compute_guard_inputs(wh, EVENTS_TO + timedelta(days=3), LIMITS)
    inputs = exc.value.inputs
    with pytest.raises(EvaluationDeferred):
        evaluate_campaign(wh, CAMPAIGN, inputs.end, LIMITS, "r", guard_inputs=inputs)
    with pytest.raises(ValueError, match="guard inputs were computed for"):
        evaluate_campaign(wh, CAMPAIGN, day(1), LIMITS, "r", guard_inputs=inputs)
    assert not wh.table_exists("nudge", "evaluations") or state_counts(wh, CAMPAIGN.name) == {}


# -- status ------------------------------------------------------------------------------------


def test_status_of_an_empty_warehouse_is_zeros(tmp_path):
    with connect(Settings(warehouse=f"duckdb:///{tmp_path}/w.duckdb", _env_file=None)) as wh:
        status = collect_status(wh, [CAMPAIGN])
    assert status["ingest"] == {
        "files": 0,
        "lines_read": 0,
        "events_loaded": 0,
        "duplicates": 0,
        "rejected": 0,
        "by_kind": {},
    }
    (campaign,) = status["campaigns"]
    assert (campaign["campaign"], campaign["cohort"], campaign["members"]) == (
        "x_campaign",
        "cohort_x",
        0,
    )
    assert campaign["last_evaluation"] is None
    assert set(campaign["sends"].values()) == {0}
    assert {"sent", "skipped", "failed", "held", "unknown", "pending"} <= set(campaign["sends"])
    assert status["last_failure"] is None


def test_status_reports_the_latest_evaluation_ledger_and_ingest(wh):
    with wh.transaction():
        wh.execute(
            "insert into raw.ingested_files (kind, path, dt, size_bytes, mtime, content_hash, "
            "lines_read, loaded, duplicates, rejected, run_id, ingested_at) values "
            "('events', 'a', null, 1, 0, 'h', 100, 90, 7, 3, 'r', ?), "
            "('events', 'b', null, 1, 0, 'h', 10, 10, 0, 0, 'r', ?), "
            "('users', 'u', null, 1, 0, 'h', 5, 4, 0, 1, 'r', ?)",
            [D0, D0, D0],
        )
    run(wh, 0, emails("a"))
    run(wh, 2, {**emails("a", "b"), "c": None})
    send_all(wh)
    run(wh, 1, emails("a"))  # a backfill: not the latest instant
    status = collect_status(wh, [CAMPAIGN])
    # The top-level counts are the event files' (lines_read = loaded + duplicates + rejected);
    # profile files are counted per kind.
    assert {k: v for k, v in status["ingest"].items() if k != "by_kind"} == {
        "files": 2,
        "lines_read": 110,
        "events_loaded": 100,
        "duplicates": 7,
        "rejected": 3,
    }
    assert status["ingest"]["by_kind"]["users"] == {
        "files": 1,
        "lines_read": 5,
        "loaded": 4,
        "duplicates": 0,
        "rejected": 1,
    }
    (campaign,) = status["campaigns"]
    assert (campaign["members"], campaign["last_evaluation"]) == (3, "2026-01-03T00:00:00Z")
    assert {k: v for k, v in campaign["sends"].items() if v} == {"sent": 1, "skipped": 1}


def test_a_missing_cohort_or_column_names_the_campaign_and_relation(wh):
    from email_jobs.campaigns import CampaignError

    missing = replace(CAMPAIGN, relation_name='"wh"."analytics"."cohort_nope"')
    with pytest.raises(CampaignError, match=r"x_campaign.*cohort_nope.*has dbt built it"):
        evaluate_campaign(wh, missing, day(1), LIMITS, "r")
    with wh.transaction():
        wh.execute("create table analytics.cohort_no_email (entity_id varchar)")
        wh.execute("insert into analytics.cohort_no_email values ('a')")
    no_email = replace(CAMPAIGN, relation_name='"wh"."analytics"."cohort_no_email"')
    with pytest.raises(CampaignError, match="has no column email"):
        evaluate_campaign(wh, no_email, day(1), LIMITS, "r")


def test_result_summary_and_metadata_say_what_happened(wh):
    run(wh, 0, {})
    result = run(wh, 1, {**emails("a"), "b": None})
    assert result.summary() == (
        "campaign x_campaign at 2026-01-02T00:00:00Z (diff, previous 2026-01-01T00:00:00Z): "
        "2 members, 2 entered, 0 exited; 1 pending, 1 skipped"
    )
    meta = result.metadata()
    assert (meta["entered"], meta["ledger_pending"], meta["ledger_skipped"]) == (2, 1, 1)
