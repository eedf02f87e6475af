"""The demo's simulation: traffic written day by day, and users who respond to the emails."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
from datetime import date
from pathlib import Path

import pytest

from nudge.app.demo import evaluation_days
from nudge.app.demo_output import happenings
from synthetic.profiles import NEW_NEVER, STORM_MIXES, plan_day
from synthetic.simulation import (
    ACTIVATION_CAMPAIGN,
    ERRORS_CAMPAIGN,
    LINGERING_4XX_PER_DAY,
    Entry,
    Response,
    Simulation,
)

START = date(2026, 3, 2)
# Certain responses, so the test reads the behaviour rather than a probability.
CERTAIN = Response(activate_mailed=1.0, activate_held_out=0.0, fix_mailed=1.0, fix_held_out=0.0)


def simulation(out: Path, response: Response = CERTAIN) -> Simulation:
    return Simulation(
        out, users=80, days=20, events_per_day=800, seed=11, start=START, response=response
    )


def callers(out: Path, day: int) -> set[str]:
    """user_ids with an event in day `day`'s dump folder."""
    folder = out / "events" / f"dt={date.fromordinal(START.toordinal() + day).isoformat()}"
    seen = set()
    for path in folder.iterdir():
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
        rows = (
            json.loads(text) if path.name.endswith(".json") else map(json.loads, text.splitlines())
        )
        seen |= {r["user_id"] for r in rows if r.get("user_id")}
    return seen


def storm_calls(sim: Simulation, user_id: str, day: int) -> int:
    uid = sim.users[user_id].uid
    plan = plan_day(sim.population, day, sim.volumes[day], random.Random(0))
    return sum(n for u, _, mix, n in plan if u == uid and mix in STORM_MIXES)


def test_mailed_users_make_their_first_call_within_days_held_out_ones_do_not(
    tmp_path: Path,
) -> None:
    sim = simulation(tmp_path)
    never = [u.user_id for u in sim.population.users if u.kind == NEW_NEVER][:2]
    mailed, held_out = never
    sim.respond(
        [
            Entry(ACTIVATION_CAMPAIGN, mailed, 5, True),
            Entry(ACTIVATION_CAMPAIGN, held_out, 5, False),
        ]
    )
    lo, hi = CERTAIN.activate_days
    seen = set()
    for day in range(5 + lo, 5 + hi + 1):
        sim.write_day(day)
        seen |= callers(tmp_path, day)
    assert mailed in seen
    assert held_out not in seen
    assert sim.responded == {"activated": 1}


def test_mailed_4xx_users_fix_their_integration_held_out_ones_keep_failing(
    tmp_path: Path,
) -> None:
    sim = simulation(tmp_path)
    mailed, held_out = sim.population.storm_users[:2]
    day = max(min(sim.users[u].special) for u in (mailed, held_out)) + 1
    # Storms linger after their burst: without an email nothing changes.
    assert storm_calls(sim, mailed, day + 2) >= LINGERING_4XX_PER_DAY
    sim.respond(
        [Entry(ERRORS_CAMPAIGN, mailed, day, True), Entry(ERRORS_CAMPAIGN, held_out, day, False)]
    )
    for later in range(day + 1, sim.days):
        assert storm_calls(sim, mailed, later) == 0
        assert storm_calls(sim, held_out, later) >= LINGERING_4XX_PER_DAY


def test_the_simulation_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def run(out: Path) -> list[str]:
        sim = simulation(out, Response())
        sim.write_profiles()
        entries = [Entry(ACTIVATION_CAMPAIGN, u.user_id, 3, i % 2 == 0)
                   for i, u in enumerate(sim.population.users) if u.kind == NEW_NEVER]  # fmt: skip
        for day in range(8):
            sim.write_day(day)
            if day == 3:
                sim.respond(reversed(entries) if out.name == "b" else entries)
        return [
            hashlib.sha256(p.read_bytes()).hexdigest() + str(p.relative_to(out))
            for p in sorted(out.rglob("*"))
            if p.is_file()
        ]

    assert run(tmp_path / "a") == run(tmp_path / "b")


@pytest.mark.parametrize(("days", "every"), [(28, 2), (28, 3), (5, 1), (3, 5)])
def test_evaluation_days_end_on_the_last_day(days: int, every: int) -> None:
    evaluated = evaluation_days(days, every)
    assert evaluated[-1] == days - 1
    assert all(b - a == every for a, b in itertools.pairwise(evaluated))
    assert evaluated[0] < every


def test_only_campaigns_where_something_happened_are_printed() -> None:
    quiet = {"campaign": "quiet", "kind": "diff", "members": 4, "entered": 0, "exited": 0,
             "states": {}, "skipped": {}}  # fmt: skip
    busy = dict(quiet, campaign="busy", entered=3, states={"sent": 2, "skipped": 1},
                skipped={"holdout": 1})  # fmt: skip
    lines = happenings(START, [quiet, busy])
    assert lines == [f"{START}  busy              3 entered, 2 emailed, 1 held out  (4 members)"]
