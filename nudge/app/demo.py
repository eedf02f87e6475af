"""`nudge demo`: weeks of simulated API traffic become cohorts, emails, and a measured lift.

A simulated population (synthetic.simulation) writes its traffic one day at a time into the
landing folder; every EVALUATE_EVERY days a dump of the days since the last one lands and one
evaluation runs through Dagster at the end of the day, and the users it mailed respond in the
traffic of the following days (more of them make their first call, or fix their failing
integration, than of the held-out members). At the end the demo prints `nudge report` and
writes its HTML page. It uses the configured landing folder, warehouse and outbox (by default
data/landing, data/warehouse.duckdb, data/outbox), so `nudge status`, `nudge report` and
`nudge ui` show its results; it refuses to replace a landing folder it did not write.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from nudge.core.settings import ConfigError, Settings

if TYPE_CHECKING:
    import dagster as dg

    from synthetic.simulation import Entry, Simulation

DEMO_DIR = Path("data/demo")
REPORT_HTML = DEMO_DIR / "report.html"
# The shipped playbooks beyond the seed's two ship `enabled: false`; the demo turns them on for
# its own process only, the way an operator would (NUDGE_ENABLED_CAMPAIGNS), leaving the yml as is.
DEMO_PLAYBOOKS = ("api_misuse", "quota_80pct", "quota_100pct")
# The seed campaigns get a control group the same way (NUDGE_HOLDOUT_SHARES): the report can
# then compare the emailed with the held out.
DEMO_HOLDOUTS = {"not_activated_7d": 0.3, "too_many_4xx_7d": 0.3}
# An evaluation costs seconds whatever the data (mostly dbt's start); every third day keeps
# the story (entries, exits, responses) in a third of the time.
EVALUATE_EVERY = 3
SEED = 7


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


def evaluation_days(days: int, every: int) -> list[int]:
    """The day indexes evaluated at their end: every `every` days, the last day included."""
    return [i for i in range(days) if (days - 1 - i) % every == 0]


def _demo_switches() -> None:
    from email_jobs.campaigns import (
        ENABLED_CAMPAIGNS_ENV,
        HOLDOUT_SHARES_ENV,
        enabled_campaigns,
        holdout_shares,
    )

    os.environ[ENABLED_CAMPAIGNS_ENV] = ",".join(
        dict.fromkeys([*enabled_campaigns(), *DEMO_PLAYBOOKS])
    )
    shares = {**holdout_shares(), **DEMO_HOLDOUTS}
    os.environ[HOLDOUT_SHARES_ENV] = ",".join(f"{k}={v:g}" for k, v in shares.items())


def run_demo(
    days: int = 28, users: int = 600, events_per_day: int = 6000, every: int = EVALUATE_EVERY
) -> int:
    from nudge.app.session import command_settings, dagster_instance, prepare_pipeline
    from synthetic.generate import MIN_USERS
    from synthetic.simulation import Simulation

    if every < 1 or days < 1 or users < MIN_USERS:
        raise ConfigError(
            f"nudge demo needs --every >= 1, --days >= 1 and --users >= {MIN_USERS} "
            f"(got {every}, {days}, {users})"
        )
    _demo_switches()
    settings = command_settings()
    _reset(settings)
    landing = settings.landing_dir
    start = datetime.now(UTC).date() - timedelta(days=days)
    sim = Simulation(
        landing, users=users, days=days, events_per_day=events_per_day, seed=SEED, start=start
    )
    sim.write_profiles()
    prepare_pipeline(settings)
    instance = dagster_instance()
    outbox = settings.outbox_dir.resolve()
    began = time.time()

    evaluated = evaluation_days(days, every)
    print(
        f"Simulating {days} days of API traffic from {users} users ({start} .. "
        f"{start + timedelta(days=days - 1)}), evaluated "
        f"{'every day' if every == 1 else f'every {every} days'} through Dagster "
        f"(DAGSTER_HOME={settings.dagster_home}); held out: "
        + ", ".join(f"{int(v * 100)}% of {k}" for k, v in DEMO_HOLDOUTS.items())
        + ". Only the evaluations where something happened are listed."
    )
    failures, t0 = _simulate(sim, evaluated, instance, settings)
    seconds = time.monotonic() - t0
    # The demo's .eml names are the same each time: what this run wrote is what is newer.
    written = [p for p in outbox.glob("*.eml") if p.stat().st_mtime >= began]
    responded = ", ".join(f"{n} {what}" for what, n in sorted(sim.responded.items()))
    print(
        f"\nSimulated in {seconds:.0f}s: {len(evaluated)} evaluations, {len(written)} emails "
        f"in {outbox}; simulated users responded: {responded or 'none'}."
    )
    if written:
        print(f"Open one: {min(written)}")
    _print_report(settings)
    print(
        f"The demo turned on {', '.join(DEMO_PLAYBOOKS)} and held out part of "
        f"{', '.join(DEMO_HOLDOUTS)} for itself (NUDGE_ENABLED_CAMPAIGNS, NUDGE_HOLDOUT_SHARES); "
        "the yml is unchanged, and `nudge status` shows the shipped settings."
    )
    print("See the runs and the lineage: .venv/bin/nudge ui   (then http://localhost:3000)")
    return 1 if failures else 0


def _simulate(
    sim: Simulation, evaluated: list[int], instance: dg.DagsterInstance, settings: Settings
) -> tuple[int, float]:
    """Write each day, evaluate the days in `evaluated`, let the users respond; (failed
    evaluations, start time)."""
    from nudge.app.demo_output import Progress, happenings
    from nudge.app.runner import run_evaluation
    from nudge.app.summary import evaluation_rows

    progress = Progress(len(evaluated))
    failures, t0 = 0, time.monotonic()
    for i in range(sim.days):
        day = sim.start + timedelta(days=i)
        progress.show(str(day))
        # One dump per evaluation, holding the days since the last one: the evaluation's own
        # run ingests it (a dump of several days in one dt= folder is what the contract allows).
        sim.write_day(i, dump_day=min(e for e in evaluated if e >= i))
        if i not in evaluated:
            continue
        end = datetime.combine(day + timedelta(days=1), datetime.min.time())
        # The demo's own generated data: its dbt data tests would only cost time.
        outcomes = run_evaluation(end, instance, settings, dbt_tests=False)
        bad = [o for o in outcomes if not o.success]
        if bad:
            failures += 1
            progress.print([f"{day}  evaluation did not complete: {bad[0].error}"])
        else:
            progress.print(happenings(day, evaluation_rows(settings, end)))
            sim.respond(_entries(settings, end, i))
        progress.advance()
    progress.close()
    return failures, t0


def _entries(settings: Settings, end: datetime, day: int) -> list[Entry]:
    """The entries of the evaluation at `end` that were mailed or held out (the first step's
    ledger rows; other skips, such as no address, reach nobody and change nothing)."""
    from email_jobs.holdout import HOLDOUT_REASON
    from email_jobs.ledger import State
    from nudge.core.warehouse import connect
    from synthetic.simulation import Entry

    with connect(settings, read_only=True) as wh:
        rows = wh.fetchall(
            "select campaign, entity_id, state from nudge.send_ledger "
            "where entry_as_of = ? and step = 0 and (state = ? or (state = ? and reason = ?))",
            [end, State.SENT.value, State.SKIPPED.value, HOLDOUT_REASON],
        )
    return [Entry(c, e, day, mailed=s == State.SENT.value) for c, e, s in rows]


def _print_report(settings: Settings) -> None:
    """`nudge report` for the demo's campaigns, and its HTML page."""
    import json

    from email_jobs.report_html import render_html
    from nudge.app.outcomes import make_report
    from nudge.app.report_text import format_report
    from nudge.core.dbt_project import MANIFEST
    from orchestration.defs.email.campaigns import manifest_campaigns

    names = [c.name for c in manifest_campaigns() if c.enabled]
    report = make_report(settings, names, json.loads(MANIFEST.read_text()))
    REPORT_HTML.parent.mkdir(parents=True, exist_ok=True)
    REPORT_HTML.write_text(render_html(report.data, report.lift), encoding="utf-8")
    print("\nDid it work? (nudge report: conversion of the emailed against the held out)")
    print(format_report(report.data))
    print(f"Charts: {REPORT_HTML.resolve()}")
