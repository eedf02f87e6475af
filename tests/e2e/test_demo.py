"""`nudge demo` end to end: the simulated users respond to the emails, the report shows it.

One demo, kept short: three evaluations two weeks apart (a baseline, one that enters and
mails, one when those entries' 14-day goal window has closed), in a fresh working folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from nudge.app.demo import DEMO_HOLDOUTS, REPORT_HTML
from synthetic.simulation import ACTIVATION_CAMPAIGN, Response

pytestmark = pytest.mark.integration

DAY_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}  ")
HAPPENED = re.compile(r"\d+ (entered|exited|emailed|held out|skipped)|baseline")


@dataclass
class Demo:
    work: Path
    stdout: str
    report: dict

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.work / "data" / "warehouse.duckdb"), read_only=True) as con:
            return con.execute(sql).fetchall()


def _nudge(work: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUDGE_", "DAGSTER_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "nudge.app.cli", *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"nudge {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    work = tmp_path_factory.mktemp("demo")
    stdout = _nudge(work, "demo", "--days", "29", "--every", "14", "--users", "600")
    return Demo(work, stdout, json.loads(_nudge(work, "report", "--json")))


def test_the_emailed_convert_above_the_held_out(demo: Demo) -> None:
    (c,) = [c for c in demo.report["campaigns"] if c["campaign"] == ACTIVATION_CAMPAIGN]
    conv = c["conversion"]
    assert c["holdout"] > 0 and c["sent"] > 0
    assert conv["matured_treatment"] > 0 and conv["matured_holdout"] > 0
    # The simulation's own parameters say which way the lift points.
    r = Response()
    expected = (r.activate_mailed > r.activate_held_out) - (r.activate_mailed < r.activate_held_out)
    assert expected == 1
    assert (conv["lift"] > 0) - (conv["lift"] < 0) == expected
    assert conv["treatment"] > conv["holdout"]


def test_held_out_members_get_no_email(demo: Demo) -> None:
    held = demo.query(
        "select campaign, entity_id from nudge.send_ledger "
        "where state = 'skipped' and reason = 'holdout'"
    )
    assert {c for c, _ in held} <= set(DEMO_HOLDOUTS) and held
    names = [p.name for p in (demo.work / "data" / "outbox").glob("*.eml")]
    sent = demo.query("select count(*) from nudge.send_ledger where state = 'sent'")[0][0]
    assert len(names) == sent > 0
    for campaign, entity in held:
        assert not [n for n in names if n.startswith(f"{campaign}_{entity}_")]


def test_only_evaluations_where_something_happened_are_listed(demo: Demo) -> None:
    listed = [line for line in demo.stdout.splitlines() if DAY_LINE.match(line)]
    assert listed
    for line in listed:
        assert HAPPENED.search(line), line
        assert not re.search(r"\b0 (entered|exited|emailed)", line), line


def test_the_demo_ends_with_the_report_and_its_page(demo: Demo) -> None:
    tail = demo.stdout[demo.stdout.index("Did it work?") :]
    assert f"{ACTIVATION_CAMPAIGN}  (as of" in tail and "lift +" in tail
    page = demo.work / REPORT_HTML
    assert f"Charts: {page.resolve()}" in tail
    assert "<html" in page.read_text(encoding="utf-8").lower()


def test_the_demo_evaluates_without_dbt_tests_but_with_the_guards(demo: Demo) -> None:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(demo.work / "data" / "dagster_home"))
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="nudge_evaluate"))
    assert runs
    for run in runs:
        events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        checks = {e.dagster_event.event_specific_data.asset_check_key.name for e in events}
        assert checks == {"guards"}, checks
