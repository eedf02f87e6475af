"""Holdouts and goals (contract, "Holdouts and goals"): the yml keys and their mistakes, the
stable holdout assignment, where a holdout falls among the skip reasons, the cooldown a held-out
entry starts, and a drip that stops at its goal."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace

import pytest
from test_campaigns import GOOD, manifest, model, templates  # noqa: F401  (fixture)
from test_evaluate import CAMPAIGN, day, emails, ledger, run, send_all, wh  # noqa: F401

from email_jobs.campaigns import CampaignError, Goal, Step
from email_jobs.holdout import holdout_position, in_holdout
from email_jobs.template_columns import load_campaigns


def with_keys(**keys) -> dict:
    nudge = copy.deepcopy(GOOD)
    nudge["campaigns"][0].update(keys)
    return nudge


# -- the yml ------------------------------------------------------------------------------------


def test_defaults_no_holdout_and_the_exit_goal(templates):  # noqa: F811
    (c,) = load_campaigns(manifest(model("cohort_a", GOOD)), templates)
    assert c.holdout_share == 0
    assert c.goal == Goal(model=None, within_days=14) and c.goal.exit


def test_goal_model_resolves_to_its_relation(templates):  # noqa: F811
    nodes = manifest(
        model("cohort_a", with_keys(holdout_share=0.2, goal={"model": "goal_x", "within_days": 7})),
        model("goal_x", None, ("entity_id", "converted_at")),
    )
    (c,) = load_campaigns(nodes, templates)
    assert c.holdout_share == 0.2
    assert c.goal == Goal("goal_x", 7, '"warehouse"."analytics"."goal_x"')


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"holdout_share": 0.6}, "holdout_share must be between 0 and 0.5"),
        ({"holdout_share": -0.1}, "holdout_share must be between 0 and 0.5"),
        ({"holdout_share": "10%"}, "holdout_share must be a number"),
        ({"holdout_share": True}, "holdout_share must be a number"),
        ({"goal": "goal_x"}, "goal must be a mapping"),
        ({"goal": {"model": "goal_x", "days": 3}}, "unknown key(s) days"),
        ({"goal": {"model": "goal_x", "within_days": 0}}, "within_days must be more than 0"),
        ({"goal": {"model": "goal_x", "exit": True}}, "both model and exit"),
        ({"goal": {"exit": False}}, "needs a goal.model"),
        ({"goal": {"model": "x; drop table y"}}, "must be a dbt model name"),
        ({"goal": {"model": "goal_missing"}}, "'goal_missing' is not a model"),
    ],
)
def test_mistakes_name_the_model_and_the_key(templates, keys, says):  # noqa: F811
    nodes = manifest(model("cohort_a", with_keys(**keys)), model("goal_x", None, ()))
    with pytest.raises(CampaignError) as err:
        load_campaigns(nodes, templates)
    assert says in str(err.value) and "cohort_a" in str(err.value)


# -- the assignment -----------------------------------------------------------------------------


def test_assignment_is_a_stable_uniform_hash_of_campaign_and_entity():
    ids = [f"user-{i}" for i in range(20_000)]
    share = sum(in_holdout("c", e, 0.25) for e in ids) / len(ids)
    assert 0.24 < share < 0.26
    # Independently: sha256 of the length-prefixed pair, its first 8 bytes over 2**64.
    digest = hashlib.sha256(b"1:c|user-7").digest()
    assert holdout_position("c", "user-7") == int.from_bytes(digest[:8], "big") / 2**64
    # A larger share only adds members to the holdout; another campaign draws anew.
    assert all(in_holdout("c", e, 0.5) for e in ids if in_holdout("c", e, 0.25))
    assert [in_holdout("c", e, 0.5) for e in ids[:200]] != [
        in_holdout("d", e, 0.5) for e in ids[:200]
    ]
    assert not any(in_holdout("c", e, 0) for e in ids)


# -- evaluation ---------------------------------------------------------------------------------

HALF = replace(CAMPAIGN, holdout_share=0.5)


def test_held_out_entries_are_skipped_and_drawn_only_from_the_sendable(wh):  # noqa: F811
    ids = [f"m{i:02d}" for i in range(40)]
    members = emails(*ids)
    no_address = next(e for e in ids if in_holdout(HALF.name, e, 0.5))
    members[no_address] = None  # would be held out, but could not be mailed anyway
    run(wh, 0, {}, HALF)
    result = run(wh, 1, members, HALF)
    rows = ledger(wh)
    held = {e for (e, _), (s, r) in rows.items() if (s, r) == ("skipped", "holdout")}
    assert held == {e for e in ids if in_holdout(HALF.name, e, 0.5)} - {no_address}
    assert rows[(no_address, day(1).date().isoformat())] == ("skipped", "no_email")
    assert result.skip_reasons == {"holdout": len(held), "no_email": 1}
    assert result.counts["pending"] == len(ids) - len(held) - 1
    assert sorted(send_all(wh, HALF.name)) == sorted(set(ids) - held - {no_address})


def test_a_held_out_entry_starts_the_cooldown_as_a_send_would(wh):  # noqa: F811
    ids = [f"m{i:02d}" for i in range(20)]
    held = next(e for e in ids if in_holdout(HALF.name, e, 0.5))
    sent = next(e for e in ids if not in_holdout(HALF.name, e, 0.5))
    run(wh, 0, {}, HALF)
    run(wh, 1, emails(held, sent), HALF)
    send_all(wh, HALF.name)
    run(wh, 2, {}, HALF)
    again = run(wh, 10, emails(held, sent), HALF)  # inside the 30-day cooldown
    assert again.skip_reasons == {"cooldown": 2}
    run(wh, 11, {}, HALF)
    # After it, the held-out member is held out again (same group on every entry).
    later = run(wh, 40, emails(held, sent), HALF)
    assert later.skip_reasons == {"holdout": 1} and later.counts["pending"] == 1


def test_a_drip_stops_when_its_goal_is_met(wh):  # noqa: F811
    drip = replace(
        CAMPAIGN,
        steps=(Step("x", 0), Step("x2", 3)),
        goal=Goal("goal_x", 14, '"wh"."analytics"."goal_x"'),
    )
    with wh.transaction():
        wh.execute("create table analytics.goal_x (entity_id varchar, converted_at timestamp)")
        # `a` converted before its entry (does not count), `b` after it: b's drip stops.
        wh.execute(
            "insert into analytics.goal_x values ('a', ?), ('b', ?), ('c', ?)",
            [day(0.5), day(2), day(9)],
        )
    run(wh, 0, {}, drip)
    run(wh, 1, emails("a", "b", "c"), drip)
    assert send_all(wh) == ["a", "b", "c"]
    run(wh, 4, emails("a", "b", "c"), drip)  # step 1 due at day 4; c converts only on day 9
    steps = {
        e: s
        for e, s in wh.fetchall(
            "select entity_id, step from nudge.send_ledger where step = 1 order by entity_id"
        )
    }
    assert steps == {"a": 1, "c": 1}
