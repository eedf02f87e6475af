"""`nudge demo`: weeks of simulated API traffic become cohorts and emails, day by day.

Generates a full period of dumps into data/demo/source, then replays it: each simulated day, that
day's dump folder lands in the landing folder and one evaluation runs through Dagster at the end of
that day. It uses the configured landing folder, warehouse and outbox (by default data/landing,
data/warehouse.duckdb, data/outbox), so `nudge status` and `nudge ui` show its results; it refuses
to replace a landing folder it did not write.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from nudge.core.settings import ConfigError, Settings

DEMO_DIR = Path("data/demo")
# The shipped playbooks beyond the seed's two ship `enabled: false`; the demo turns them on for
# its own process only, the way an operator would (NUDGE_ENABLED_CAMPAIGNS), leaving the yml as is.
DEMO_PLAYBOOKS = ("api_misuse", "quota_80pct", "quota_100pct")


def _land_day(source: Path, landing: Path, day: date) -> None:
    folder = f"dt={day.isoformat()}"
    src = source / "events" / folder
    if src.exists():
        shutil.copytree(src, landing / "events" / folder, dirs_exist_ok=True)


MARKER = ".nudge-demo"


def _reset(settings: Settings) -> None:
    """Start from nothing, but never over a landing folder or warehouse the demo did not make."""
    landing = settings.landing_dir
    if landing.exists() and any(landing.iterdir()) and not (landing / MARKER).exists():
        raise ConfigError(
            f"NUDGE_LANDING_DIR={landing} holds data the demo did not write; run the demo with "
            "another NUDGE_LANDING_DIR (and NUDGE_WAREHOUSE) to keep it"
        )
    if landing.exists():
        shutil.rmtree(landing)
    wh = settings.warehouse_url
    if wh.kind == "duckdb":
        for f in (wh.path, wh.path.with_name(wh.path.name + ".wal")):
            f.unlink(missing_ok=True)
    else:
        raise ConfigError("nudge demo runs on a DuckDB warehouse; unset NUDGE_WAREHOUSE for it")
    landing.mkdir(parents=True)
    (landing / MARKER).write_text("written by `nudge demo`; the next demo replaces this folder\n")
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)


def run_demo(days: int = 28, users: int = 160, events_per_day: int = 6000) -> int:
    from email_jobs.campaigns import ENABLED_CAMPAIGNS_ENV, enabled_campaigns
    from nudge.app.runner import run_evaluation
    from nudge.app.session import command_settings, dagster_instance, prepare_pipeline
    from nudge.app.summary import evaluation_rows
    from nudge.core.instant import to_iso
    from synthetic.generate import generate

    os.environ[ENABLED_CAMPAIGNS_ENV] = ",".join(
        dict.fromkeys([*enabled_campaigns(), *DEMO_PLAYBOOKS])
    )
    settings = command_settings()
    _reset(settings)
    source, landing = DEMO_DIR / "source", settings.landing_dir
    today = datetime.now(UTC).date()
    start = today - timedelta(days=days)
    print(f"Generating {days} days of Moesif-shaped dumps for {users} users into {source} ...")
    generate(source, users=users, days=days, events_per_day=events_per_day, seed=7, start=start)

    for kind in ("users", "companies"):
        shutil.copytree(source / kind, landing / kind, dirs_exist_ok=True)
    prepare_pipeline(settings)
    instance = dagster_instance()
    outbox = settings.outbox_dir.resolve()
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()

    print(f"Evaluating day by day through Dagster (DAGSTER_HOME={settings.dagster_home}).")
    print(
        f"{'day':<11} {'campaign':<20} {'members':>7} {'entered':>7} {'exited':>6} "
        f"{'emails':>6}  notes"
    )
    total_sent, failures = 0, 0
    t0 = time.monotonic()
    for i in range(days):
        day = start + timedelta(days=i)
        _land_day(source, landing, day)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time())
        outcomes = run_evaluation(end, instance, settings)
        bad = [o for o in outcomes if not o.success]
        if bad:
            failures += 1
            print(f"{day}  evaluation did not complete: {bad[0].error}")
            continue
        for r in evaluation_rows(settings, end):
            sent = r["states"].get("sent", 0)
            total_sent += sent
            notes = []
            if r["kind"] == "baseline":
                notes.append("baseline (first evaluation sends nothing)")
            skipped = {s: n for s, n in r["states"].items() if s != "sent"}
            if skipped:
                notes.append(", ".join(f"{n} {s}" for s, n in skipped.items()))
            print(
                f"{day!s:<11} {r['campaign']:<20} {r['members']:>7} {r['entered']:>7} "
                f"{r['exited']:>6} {sent:>6}  {'; '.join(notes)}"
            )
    new_files = sorted(set(outbox.glob("*.eml")) - before)
    print(
        f"\nDone in {time.monotonic() - t0:.0f}s: {total_sent} emails sent over {days} days "
        f"({to_iso(end)} last instant); {len(new_files)} new .eml files in {outbox}."
    )
    if new_files:
        print(f"Open one: {new_files[0]}")
    print(
        f"The demo turned on {', '.join(DEMO_PLAYBOOKS)} for itself ({ENABLED_CAMPAIGNS_ENV}); "
        "they ship disabled, and `nudge status` shows them so until you turn them on."
    )
    print("See the runs and the lineage: .venv/bin/nudge ui   (then http://localhost:3000)")
    return 1 if failures else 0
