"""The demo's simulation: `nudge generate`'s population, its traffic written one day at a time,
and users who respond to the emails they get.

`nudge generate` writes a whole period at once; the demo instead writes each day's dumps just
before that day is evaluated, from the population as it stands then, so what was mailed at the
end of one day changes the traffic of the next ones (the response model, `Response`):

- a mailed `not_activated_7d` member makes a first call within a few days with probability
  `activate_mailed`; a held-out one with the lower base rate `activate_held_out`;
- the demo's error storms (`too_many_4xx_7d`) linger after their burst (a broken integration
  keeps failing) until the user fixes it: a mailed member fixes it the next day with probability
  `fix_mailed`, a held-out one within `fix_held_out_days` with probability `fix_held_out`.

Every draw comes from (seed, campaign, user), so the simulation is deterministic for a seed and
does not depend on the order in which entries are reported. The entries come from the caller
(the demo reads them from the send ledger); nothing here reads Nudge's state.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import duckdb

from synthetic.events import build_events, event_files, write_event_files
from synthetic.profiles import (
    STORM_MIXES,
    Population,
    SyntheticUser,
    build_population,
    company_profiles,
    day_volumes,
    plan_day,
    user_profiles,
)

ACTIVATION_CAMPAIGN = "not_activated_7d"
ERRORS_CAMPAIGN = "too_many_4xx_7d"
LINGERING_4XX_PER_DAY = 200  # 1,400 a week: a storm's user stays over the cohort's 1,000


@dataclass(frozen=True)
class Response:
    """How simulated users respond to an entry (mailed) or to none (held out)."""

    activate_mailed: float = 0.7
    activate_held_out: float = 0.1
    activate_days: tuple[int, int] = (1, 3)  # first call this many days after the entry
    fix_mailed: float = 0.9
    fix_held_out: float = 0.2
    fix_held_out_days: tuple[int, int] = (3, 12)


@dataclass(frozen=True)
class Entry:
    """A campaign entry as the demo read it from the ledger at the end of simulated `day`."""

    campaign: str
    user_id: str
    day: int
    mailed: bool  # sent; False: held out (skipped(holdout))


class Simulation:
    """A population whose dumps are written day by day into `out_dir` (a landing folder)."""

    def __init__(
        self,
        out_dir: Path,
        *,
        users: int,
        days: int,
        events_per_day: int,
        seed: int,
        start: date,
        response: Response | None = None,
        files_per_day: int = 2,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.days, self.seed, self.start = days, seed, start
        self.files_per_day = files_per_day
        self.response = response or Response()
        self.population: Population = build_population(
            users=users, days=days, seed=seed, start=start
        )
        self.volumes = day_volumes(events_per_day, days, start)
        self.users = {u.user_id: u for u in self.population.users}
        self._linger_storms()
        self.responded: dict[str, int] = {}  # "activated" / "fixed" / ... -> users

    def _linger_storms(self) -> None:
        for user_id in self.population.storm_users:
            user = self.users[user_id]
            first = min(user.special)
            mix = next(m for m, _ in user.special[first] if m in STORM_MIXES)
            for day in range(first, self.days):
                if not any(m in STORM_MIXES for m, _ in user.special.get(day, [])):
                    user.special.setdefault(day, []).append((mix, LINGERING_4XX_PER_DAY))

    def write_profiles(self) -> None:
        for kind, (base, updates) in (
            ("users", user_profiles(self.population, self.seed)),
            ("companies", company_profiles(self.population, self.seed)),
        ):
            folder = self.out_dir / kind
            folder.mkdir(parents=True, exist_ok=True)
            for name, rows in (
                (f"{kind}-0001.jsonl", base),
                (f"{kind}-0002-updates.jsonl", updates),
            ):
                (folder / name).write_text(
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8",
                )

    def write_day(self, day: int, dump_day: int | None = None) -> int:
        """Write day `day`'s events from the population as it stands, as dump files in the
        folder of `dump_day` (default `day`; a dump written every few days holds the days since
        the last one: dt= is the day a dump is written); the number of events."""
        # Each day its own draws and its own event ids' seed, whatever the days before did.
        rng = random.Random(f"{self.seed}:plan:{day}")
        plan = [
            (uid, 0, mix, n)
            for uid, _, mix, n in plan_day(self.population, day, self.volumes[day], rng)
        ]
        day_seed = self.seed * 1_000 + day
        when = self.start + timedelta(days=day)
        folder = (
            self.out_dir
            / "events"
            / f"dt={self.start + timedelta(days=day if dump_day is None else dump_day)}"
        )
        files = [
            replace(f, path=folder / f.path.name)
            for f in event_files(self.out_dir, when, 1, self.files_per_day)
        ]
        with tempfile.TemporaryDirectory(prefix="nudge-demo-day-") as spill:
            con = duckdb.connect(config={"temp_directory": spill})
            try:
                build_events(con, plan, seed=day_seed, days=1, files_per_day=self.files_per_day)
                write_event_files(con, files, self.population, seed=day_seed, start=when)
            finally:
                con.close()
        return sum(n for *_, n in plan)

    def respond(self, entries: Iterable[Entry]) -> None:
        """Change the users' coming traffic in response to these entries."""
        for entry in entries:
            user = self.users.get(entry.user_id)
            if user is None:
                continue
            draw = random.Random(f"{self.seed}:{entry.campaign}:{entry.user_id}:{entry.day}")
            if entry.campaign == ACTIVATION_CAMPAIGN:
                self._activate(user, entry, draw)
            elif entry.campaign == ERRORS_CAMPAIGN:
                self._fix(user, entry, draw)

    def _activate(self, user: SyntheticUser, entry: Entry, draw: random.Random) -> None:
        r = self.response
        if draw.random() >= (r.activate_mailed if entry.mailed else r.activate_held_out):
            return
        day = entry.day + draw.randint(*r.activate_days)
        if user.first_call_day is None or user.first_call_day > day:
            user.first_call_day = day
            self._count("activated" if entry.mailed else "activated (held out)")

    def _fix(self, user: SyntheticUser, entry: Entry, draw: random.Random) -> None:
        r = self.response
        if draw.random() >= (r.fix_mailed if entry.mailed else r.fix_held_out):
            return
        fixed = entry.day + (1 if entry.mailed else draw.randint(*r.fix_held_out_days))
        for day in [d for d in user.special if d >= fixed]:
            user.special[day] = [(m, n) for m, n in user.special[day] if m not in STORM_MIXES]
        self._count("fixed" if entry.mailed else "fixed (held out)")

    def _count(self, what: str) -> None:
        self.responded[what] = self.responded.get(what, 0) + 1
