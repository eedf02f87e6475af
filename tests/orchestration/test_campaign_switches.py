"""Campaign switches through the real path: a disabled campaign's Dagster assets evaluate and
send nothing (not even entries left pending from before it was turned off), the UI marks them
Disabled, and `nudge status` says so."""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
from test_guards_dagster import CAMPAIGN, env, evaluate, outbox_entities, send, states  # noqa: F401

from email_jobs.status import collect_status
from nudge.core.settings import Settings
from nudge.core.warehouse import connect
from orchestration.defs.email.assets import build_evaluations, build_sends

OFF = replace(CAMPAIGN, enabled=False)


def counts(settings: Settings) -> tuple[int, int, int]:
    with connect(settings) as wh:
        return tuple(  # type: ignore[return-value]
            wh.fetchone(f"select count(*) from nudge.{t}")[0]  # type: ignore[index]
            for t in ("evaluations", "cohort_membership", "send_ledger")
        )


def test_a_disabled_campaign_evaluates_and_sends_nothing(env: Settings) -> None:  # noqa: F811
    assert evaluate(env, 0, ["old"]).success  # baseline, while enabled
    assert evaluate(env, 1, ["old", "a"]).success  # a enters: one pending ledger row
    assert states(env) == {"a": ("pending", None)}
    before = counts(env)

    # Turned off: a new evaluation records nothing, a send run leaves the pending row alone.
    result = evaluate(env, 2, ["old", "a", "b"], OFF)
    assert result.success
    assert result.get_asset_materialization_events() == []
    assert result.get_asset_check_evaluations() == []
    assert counts(env) == before
    assert send(OFF).success
    assert outbox_entities(env) == [] and states(env) == {"a": ("pending", None)}

    with connect(env) as wh:
        [status] = collect_status(wh, [OFF])["campaigns"]
    assert (status["enabled"], status["enabled_by"]) == (False, "yml")
    assert status["sends"]["pending"] == 1  # every existing key is still there

    # Turned on again, the row left pending goes out.
    assert send(CAMPAIGN).success and outbox_entities(env) == ["a"]


def test_the_ui_marks_a_disabled_campaigns_assets() -> None:
    on = replace(CAMPAIGN, name="on_one")
    for build in (build_evaluations, build_sends):
        specs = {s.key.path[-1]: s for s in build([on, OFF]).specs}
        assert specs[OFF.name].description.startswith("Disabled")
        assert specs[OFF.name].tags["nudge/enabled"] == "false"
        assert not specs["on_one"].description.startswith("Disabled")
        assert specs["on_one"].tags["nudge/enabled"] == "true"
        assert isinstance(specs["on_one"], dg.AssetSpec)
