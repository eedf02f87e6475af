"""The decision core (email_jobs.decisions), decided directly over plain data: no warehouse."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from email_jobs.decisions import (
    SKIP_ORDER,
    Decision,
    Entered,
    HoldLimits,
    cap_partition,
    decide_entries,
    decide_holds,
    decide_step,
    due_step,
    screen_rows,
    skip_reason,
    who_entered,
)
from email_jobs.holdout import in_holdout
from email_jobs.recipients import Recipients

END = datetime(2026, 3, 1)
IDS = [f"u{i}" for i in range(8)]
# Few addresses, so that shared, suppressed and differently cased ones are common.
ADDRESSES = ["a@x.example", "B@x.example", "b@x.example", "c@y.example"]
BAD = [None, "", "   ", "not-an-address", "x@"]


@st.composite
def entries(draw: st.DrawFn) -> list[Entered]:
    ids = sorted(draw(st.sets(st.sampled_from(IDS), max_size=len(IDS))))
    result = []
    for entity_id in ids:
        email = draw(st.sampled_from(ADDRESSES + BAD))
        to = (email,) if email in ADDRESSES else ()
        if draw(st.booleans()):  # a company email: several contacts in To
            to = tuple(draw(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3)))
            email = to[0]
        cc = tuple(draw(st.lists(st.sampled_from(ADDRESSES), max_size=1)))
        result.append(Entered(entity_id, f"k|{entity_id}", email, Recipients(to, cc)))
    return result


lowered = st.sets(st.sampled_from([a.lower() for a in ADDRESSES]))
inputs = st.fixed_dictionaries(
    {
        "stale": st.booleans(),
        "suppressed": lowered,
        "cooling": st.sets(st.sampled_from(IDS)),
        "addressed": lowered,
    }
)


def expected_reason(e: Entered, stale: bool, suppressed: set[str], cooling: set[str]) -> str | None:
    """The contract's order, written out as a list of (reason, applies)."""
    email = e.email
    blank = email is None or str(email).strip() == ""
    to = [a.lower() for a in e.recipients.to] or [str(email).strip().lower()]
    checks = [
        ("stale", stale),
        ("no_email", blank),
        ("invalid_email", not blank and "@" not in str(email)[:-1]),
        ("suppressed", all(a in suppressed for a in to)),
        ("cooldown", e.entity_id in cooling),
    ]
    return next((reason for reason, applies in checks if applies), None)


@given(entries(), inputs, st.sets(st.sampled_from(IDS)))
def test_every_entry_not_yet_recorded_gets_exactly_one_decision(entered, kw, recorded_ids):
    recorded = {f"k|{i}" for i in recorded_ids}
    decisions = decide_entries(entered, recorded=recorded, **kw)
    assert [d.key for d in decisions] == [e.key for e in entered if e.key not in recorded]


@given(entries(), inputs)
def test_skip_reasons_follow_the_contracts_order(entered, kw):
    for e, d in zip(entered, decide_entries(entered, recorded=(), **kw), strict=True):
        expected = expected_reason(e, kw["stale"], kw["suppressed"], kw["cooling"])
        if expected is None:  # only an entry that would go out can be a duplicate
            assert d.skip in (None, "duplicate_address")
        else:
            assert d.skip == expected
        assert d.skip is None or d.skip in SKIP_ORDER


@given(entries(), inputs)
def test_at_most_one_entry_goes_out_per_address_at_an_instant(entered, kw):
    going = [d.recipient.lower() for d in decide_entries(entered, recorded=(), **kw) if d.goes_out]
    assert len(going) == len(set(going))
    assert not set(going) & kw["addressed"]  # nor to an address an earlier evaluation took


@given(entries(), inputs)
def test_an_entry_goes_out_to_a_to_address_that_is_not_suppressed(entered, kw):
    for d in decide_entries(entered, recorded=(), **kw):
        if d.goes_out:
            assert d.recipient is not None and d.recipient.lower() not in kw["suppressed"]
        if d.skip not in (None, "suppressed"):
            assert d.dropped == ()  # drops are recorded only for what goes out or is suppressed


@given(entries(), inputs)
def test_deciding_again_with_what_was_recorded_decides_nothing_new(entered, kw):
    first = decide_entries(entered, recorded=(), **kw)
    addressed = kw["addressed"] | {d.recipient.lower() for d in first if d.goes_out}
    again = decide_entries(
        entered, recorded={d.key for d in first}, **{**kw, "addressed": addressed}
    )
    assert again == []


@given(entries(), inputs, st.sampled_from([0.25, 0.5]))
def test_the_holdout_is_drawn_after_every_other_skip_reason_and_claims_no_address(
    entered, kw, share
):
    held = decide_entries(entered, recorded=(), **kw, campaign="c", holdout_share=share)
    drawn = set()
    for e, d in zip(entered, held, strict=True):
        expected = expected_reason(e, kw["stale"], kw["suppressed"], kw["cooling"])
        if expected is not None:
            assert d.skip == expected
        elif in_holdout("c", e.entity_id, share):
            assert d.skip == "holdout" and d.dropped == ()
            drawn.add(e.key)
        else:
            assert d.skip in (None, "duplicate_address")
    # The others decide as if the held-out entries had not entered: they take no address.
    rest = decide_entries([e for e in entered if e.key not in drawn], recorded=(), **kw)
    assert [d for d in held if d.key not in drawn] == rest


def test_the_first_entity_by_id_keeps_a_shared_address():
    shared = [Entered(i, i, "Same@x.example", Recipients(("Same@x.example",))) for i in "ab"]
    kw = {"stale": False, "suppressed": set(), "cooling": set(), "addressed": set()}
    a, b = decide_entries(shared, recorded=(), **kw)
    assert (a.skip, b.skip) == (None, "duplicate_address")


def test_skip_reason_order_by_example():
    args = {"suppressed": {"s@example.com"}, "in_cooldown": True}
    assert skip_reason("s@example.com", stale=True, **args) == "stale"
    assert skip_reason(None, stale=False, **args) == "no_email"
    assert skip_reason("x@", stale=False, **args) == "invalid_email"
    assert skip_reason(" S@Example.com ", stale=False, **args) == "suppressed"
    assert skip_reason("t@example.com", stale=False, **args) == "cooldown"


# -- who enters ------------------------------------------------------------------------------


@given(st.none() | st.sets(st.sampled_from(IDS)), st.sets(st.sampled_from(IDS)), st.booleans())
def test_entries_are_the_members_new_since_the_previous_evaluation(previous, now, baseline_first):
    who = who_entered(previous, now, baseline_first_run=baseline_first)
    assert who.diff.entered == now - (previous or set())
    assert who.diff.exited == (previous or set()) - now
    assert who.baseline == (previous is None and baseline_first)
    assert who.entries == (() if who.baseline else tuple(sorted(who.diff.entered)))


# -- holds -------------------------------------------------------------------------------------


@given(
    entries(),
    inputs,
    st.integers(0, 5),
    st.integers(0, 6),
    st.floats(0, 1),
    st.booleans(),
)
def test_holds_hold_every_entry_that_would_go_out_and_nothing_else(
    entered, kw, already, max_sends, share, broken
):
    decided = decide_entries(entered, recorded=(), **kw)
    held, fired = decide_holds(
        decided,
        campaign="c",
        already_sendable=already,
        entered=len(entered),
        members=len(IDS),
        limits=HoldLimits(max_sends, share),
        broken_export="broken" if broken else None,
    )
    sendable = already + sum(1 for d in decided if d.skip is None)
    assert ("broken_export" in fired) == broken
    assert ("blast_radius" in fired) == (sendable > max_sends)  # fewer than 100 entered
    assert [d.skip for d in held] == [d.skip for d in decided]
    for d in held:
        assert d.held == (next(iter(fired), None) if d.skip is None else None)


def test_the_entry_share_holds_only_when_100_or_more_enter():
    go = [Decision(str(i), str(i), None, f"{i}@x.example") for i in range(100)]
    limits = HoldLimits(max_sends=1000, max_entry_share=0.5)
    kw = {"campaign": "c", "already_sendable": 0, "limits": limits, "broken_export": None}
    assert decide_holds(go[:99], entered=99, members=100, **kw)[1] == {}
    held, fired = decide_holds(go, entered=100, members=199, **kw)
    assert list(fired) == ["blast_radius"] and {d.held for d in held} == {"blast_radius"}
    assert decide_holds(go, entered=100, members=200, **kw)[1] == {}  # exactly half


# -- the frequency cap -------------------------------------------------------------------------

candidates = st.lists(
    st.tuples(st.uuids().map(str), st.none() | st.sampled_from(ADDRESSES)), max_size=20
)
used_counts = st.dictionaries(st.sampled_from([a.lower() for a in ADDRESSES]), st.integers(0, 3))


@given(candidates, used_counts, st.integers(-1, 3))
def test_the_cap_never_lets_a_recipient_exceed_it(cands, used, cap):
    take, defer = cap_partition(cands, used, cap)
    assert sorted(take + defer) == sorted(k for k, _ in cands)
    order = [k for k, _ in cands]
    assert take == [k for k in order if k in set(take)]  # oldest first, order kept
    if cap <= 0:
        assert defer == []
        return
    recipient = dict(cands)
    for who in {r.lower() for _, r in cands if r}:
        taken = sum(1 for k in take if (recipient[k] or "").lower() == who)
        assert used.get(who, 0) + taken <= max(cap, used.get(who, 0))
        if taken == 0 and any((recipient[k] or "").lower() == who for k in defer):
            assert used.get(who, 0) >= cap  # deferred only when the recipient is at the cap
    assert all(recipient[k] for k in defer)  # a row without a recipient is never deferred


@given(candidates, used_counts, st.integers(1, 3))
def test_the_cap_takes_as_many_as_it_may(cands, used, cap):
    take, _ = cap_partition(cands, used, cap)
    recipient = dict(cands)
    for who in {r.lower() for _, r in cands if r}:
        wanted = sum(1 for _, r in cands if r and r.lower() == who)
        taken = sum(1 for k in take if (recipient[k] or "").lower() == who)
        assert taken == min(wanted, max(0, cap - used.get(who, 0)))


# -- drips -------------------------------------------------------------------------------------

DELAYS = (0, 3, 7)
LATE = timedelta(days=30)


def test_a_drip_step_is_due_after_its_delay_once_the_previous_step_was_sent():
    entry = END - timedelta(days=3)
    kw = {"entry_as_of": entry, "delays_days": DELAYS, "end": END, "late_limit": LATE}
    assert due_step({0: ("sent", "e0")}, evaluation_id="e1", **kw) == 1
    assert due_step({0: ("sent", "e0")}, evaluation_id="e0", **kw) is None  # same evaluation
    assert due_step({0: ("pending", "e0")}, evaluation_id="e1", **kw) is None
    assert due_step({0: ("skipped", "e0")}, evaluation_id="e1", **kw) is None
    assert due_step({1: ("sent", "e0")}, evaluation_id="e1", **kw) is None  # no step 0
    early = {**kw, "entry_as_of": END - timedelta(days=2)}
    assert due_step({0: ("sent", "e0")}, evaluation_id="e1", **early) is None
    late = {**kw, "entry_as_of": END - timedelta(days=34)}
    assert due_step({0: ("sent", "e0")}, evaluation_id="e1", **late) is None
    done = {0: ("sent", "e0"), 1: ("sent", "e1"), 2: ("sent", "e2")}
    assert due_step(done, evaluation_id="e3", **{**kw, "end": END + LATE}) is None


@given(
    st.dictionaries(
        st.integers(0, 3),
        st.tuples(st.sampled_from(["sent", "pending"]), st.sampled_from(["then", "now"])),
    ),
    st.integers(0, 40),
)
def test_a_due_step_is_the_next_after_the_last_and_never_beyond_the_drip(steps, days_ago):
    entry = END - timedelta(days=days_ago)
    step = due_step(
        steps, entry_as_of=entry, delays_days=DELAYS, end=END, evaluation_id="now",
        late_limit=LATE,
    )  # fmt: skip
    if step is not None:
        assert 0 in steps and step == max(steps) + 1 and step < len(DELAYS)
        assert steps[step - 1][0] == "sent" and steps[step - 1][1] != "now"
        assert timedelta(0) <= END - (entry + timedelta(days=DELAYS[step])) <= LATE


def test_a_drip_step_is_skipped_held_or_pending():
    to = Recipients(("a@x.example",))
    kw = {"suppressed": set(), "broken_export": False}
    assert decide_step("u", "k", None, Recipients(), **kw).skip == "no_email"
    assert decide_step("u", "k", "x@", Recipients(), **kw).skip == "invalid_email"
    suppressed = {**kw, "suppressed": {"a@x.example"}}
    step = decide_step("u", "k", "a@x.example", to, **suppressed)
    assert step.skip == "suppressed" and step.dropped == ({"address": "a@x.example", "role": "to"},)
    held = decide_step("u", "k", "a@x.example", to, suppressed=set(), broken_export=True)
    assert (held.skip, held.held) == (None, "broken_export")
    assert decide_step("u", "k", "a@x.example", to, **kw).goes_out


# -- the suppression screen at the claim -------------------------------------------------------


def test_the_screen_skips_rows_without_a_to_address_and_rewrites_recorded_drops():
    rows = {
        "all": Recipients(("a@x.example",)),
        "cc": Recipients(("c@y.example",), ("a@x.example",)),
        "lifted": Recipients(("c@y.example",)),
        "clean": Recipients(("c@y.example",)),
    }
    screen = screen_rows(rows, {"a@x.example"}, recorded_drops={"lifted"})
    assert screen.skip == {"all"}
    assert screen.leave_out == {"cc": frozenset({"a@x.example"})}
    assert set(screen.drops) == {"all", "cc", "lifted"} and screen.drops["lifted"] is None
