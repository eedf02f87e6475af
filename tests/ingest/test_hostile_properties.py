"""Property-based tests of the membership diff and the ledger's decisions (issue 7).

tests/delivery/test_send_loop.py already checks, through the send loop and a scripted provider,
that no entry is delivered twice and that re-sends respect the cooldown. This file adds the other
half: for any sequence of evaluations (repeats, gaps, out-of-order backfills, members without an
address) every decision matches a small reference model of the contract, so entries that must be
sent are not lost either, and the ledger never holds two cooldown-starting rows of one member
closer than the cooldown.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta

import duckdb
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from email_jobs.campaigns import Campaign
from email_jobs.decisions import diff_members
from email_jobs.evaluate import GuardInputs, GuardLimits, evaluate_campaign
from nudge.core.settings import WarehouseUrl
from nudge.core.warehouse import Warehouse

D0 = datetime(2026, 1, 1)
ENTITIES = ("a", "b", "c", "d", "e")
NO_EMAIL = "e"  # a member without an address: skipped(no_email), starts no cooldown
CAMPAIGN = Campaign(
    name="prop",
    cohort="cohort_prop",
    relation_name='"wh"."analytics"."cohort_prop"',
    entity="user",
    template="prop",
    columns=("entity_id", "email"),
)
members_sets = st.frozensets(st.sampled_from(ENTITIES))


@given(previous=members_sets, now=members_sets)
def test_the_diff_partitions_the_change(previous: frozenset[str], now: frozenset[str]) -> None:
    d = diff_members(previous, now)
    assert d.entered <= now and d.exited <= previous and not d.entered & d.exited
    assert (previous - d.exited) | d.entered == now
    assert diff_members(now, now).entered == diff_members(now, now).exited == frozenset()


def _no_guard(end: datetime) -> GuardInputs:
    return GuardInputs(
        end=end, newest_events_dt=None, recent_events=1, day_volume=1,
        previous_day_volumes=(), rejected_share=None, stale_reason=None,
        deferred_reason=None, broken_export_reason=None,
    )  # fmt: skip


def _set_cohort(wh: Warehouse, members: frozenset[str]) -> None:
    with wh.transaction():
        wh.execute("create schema if not exists analytics")
        wh.execute(
            "create table if not exists analytics.cohort_prop (entity_id varchar, email varchar)"
        )
        wh.execute("delete from analytics.cohort_prop")
        for e in sorted(members):
            wh.execute(
                "insert into analytics.cohort_prop values (?, ?)",
                [e, None if e == NO_EMAIL else f"{e}@example.com"],
            )


class Model:
    """The contract's rules, written as plainly as possible."""

    def __init__(self, cooldown: timedelta, baseline: bool) -> None:
        self.cooldown, self.baseline = cooldown, baseline
        self.completed: dict[datetime, frozenset[str]] = {}
        self.ledger: dict[tuple[str, datetime], tuple[str, str | None]] = {}

    def evaluate(self, end: datetime, members: frozenset[str]) -> tuple[datetime | None, set]:
        earlier = [t for t in self.completed if t < end]
        previous = max(earlier) if earlier else None
        entered: set[str] = set()
        if previous is not None or not self.baseline:
            entered = set(members - self.completed.get(previous, frozenset()))  # type: ignore[arg-type]
            blocked = {
                e
                for (e, t), (state, _) in self.ledger.items()
                if t != end and abs(t - end) < self.cooldown and state != "skipped"
            }
            for e in sorted(entered):
                if (e, end) in self.ledger:
                    continue  # decided by an earlier evaluation of this instant
                if e == NO_EMAIL:
                    self.ledger[(e, end)] = ("skipped", "no_email")
                elif e in blocked:
                    self.ledger[(e, end)] = ("skipped", "cooldown")
                else:
                    self.ledger[(e, end)] = ("pending", None)
        self.completed[end] = members
        return previous, entered


@hyp_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cohort_by_day=st.dictionaries(st.integers(0, 16), members_sets, min_size=1, max_size=8),
    order=st.lists(st.integers(0, 1000), min_size=1, max_size=12),
    cooldown=st.sampled_from([0, 1, 3, 7, 30]),
    baseline=st.booleans(),
)
def test_every_decision_matches_the_model_whatever_the_order(
    cohort_by_day: dict[int, frozenset[str]], order: list[int], cooldown: int, baseline: bool
) -> None:
    days = sorted(cohort_by_day)
    sequence = [days[i % len(days)] for i in order]  # repeats and any order: backfills
    campaign = replace(CAMPAIGN, cooldown_days=cooldown, baseline_first_run=baseline)
    model = Model(timedelta(days=cooldown), baseline)
    wh = Warehouse(WarehouseUrl("duckdb:///unused.duckdb"), duckdb.connect())

    for day in sequence:
        end = D0 + timedelta(days=day)
        members = cohort_by_day[day]
        _set_cohort(wh, members)
        result = evaluate_campaign(
            wh, campaign, end, GuardLimits(), "r", guard_inputs=_no_guard(end)
        )
        previous, entered = model.evaluate(end, members)
        assert result.previous_as_of == previous, (day, sequence)
        assert result.entered == len(entered) or (previous is None and baseline)
        ledger = {
            (e, t): (state, reason)
            for e, t, state, reason in wh.fetchall(
                "select entity_id, entry_as_of, state, reason from nudge.send_ledger"
            )
        }
        assert ledger == model.ledger, (day, sequence)

    # The properties the contract promises, on the final ledger.
    keys = wh.fetchall("select count(*), count(distinct ledger_key) from nudge.send_ledger")
    assert keys[0][0] == keys[0][1]
    starts: dict[str, list[datetime]] = {}
    for (e, t), (state, _) in model.ledger.items():
        if state != "skipped":
            starts.setdefault(e, []).append(t)
    for e, instants in starts.items():
        for a, b in itertools.pairwise(sorted(instants)):
            assert b - a >= timedelta(days=cooldown), (e, instants)
