"""Done when: a campaign with a holdout mails only its treatment group, its held-out entries are
`skipped(holdout)`, and `nudge report --json` gives the exact funnel, conversion per group and
the lift with its 95% interval, as constructed: treatment users convert (their first successful
call) at 7 in 10, held-out users at 2 in 10. The HTML page renders its charts in Chromium
offline. Everything through the real path: `nudge run` and `nudge report` as processes of a copy
of the project whose not_activated_7d campaign holds out half its entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.project_copy import copy_project
from support.scenario import event, write_jsonl

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CAMPAIGN = "not_activated_7d"
SHARE = 0.5
FIRST_DAY = date(2026, 3, 1)
# Baseline (nobody in the cohort yet), the entry of the first cohort (signed up 03-01 12:00,
# in once end - 7d passes it), and an evaluation 14 days after that entry: the goal window closes.
EVALUATIONS = [date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 22)]
ENTRY = datetime(2026, 3, 9)
CONVERT_DAY = date(2026, 3, 12)


def holdout(entity: str) -> bool:
    """The contract's stable hash, computed here independently of email_jobs.holdout."""
    key = f"{len(CAMPAIGN)}:{CAMPAIGN}|{entity}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64 < SHARE


def pick(prefix: str, want_holdout: bool, n: int) -> list[str]:
    ids = (f"{prefix}{i:03d}" for i in range(1000))
    return [e for e in ids if holdout(e) == want_holdout][:n]


TREATED = pick("m", False, 10)
HELD = pick("m", True, 10)
CONVERTED = set(TREATED[:7]) | set(HELD[:2])
# Signed up two weeks later: they enter at the last evaluation, their window still open.
YOUNG = ["y001", "y002", "y003", "y004"]


def write_profiles(landing: Path) -> None:
    def user(uid: str, signup: datetime) -> dict[str, Any]:
        return {
            "user_id": uid,
            "company_id": "c1",
            "modified_time": signup.isoformat() + "Z",
            "metadata": {
                "email": f"{uid}@example.com",
                "first_name": uid,
                "created": signup.isoformat() + "Z",
            },
        }

    users = [user(u, datetime(2026, 3, 1, 12)) for u in TREATED + HELD]
    users += [user(u, datetime(2026, 3, 14, 12)) for u in YOUNG]
    users.append(user("u_bg", datetime(2025, 6, 1)))
    write_jsonl(landing / "users" / "users.jsonl", users)
    write_jsonl(
        landing / "companies" / "companies.jsonl",
        [
            {
                "company_id": "c1",
                "company_domain": "c1.example",
                "modified_time": "2026-01-01T00:00:00Z",
                "metadata": {},
            }
        ],
    )


def land_day(landing: Path, day: date) -> None:
    start = datetime.combine(day, datetime.min.time())
    rows = [event("u_bg", start + timedelta(minutes=30 * i)) for i in range(48)]
    if day == CONVERT_DAY:
        rows += [event(u, start + timedelta(hours=9)) for u in sorted(CONVERTED)]
        # A failing call is no conversion (the goal is a 2xx), but it does leave the cohort.
        rows.append(event(TREATED[9], start + timedelta(hours=10), status=401))
    write_jsonl(landing / "events" / f"dt={day.isoformat()}" / "part-0.jsonl", rows)


@dataclass
class Copy:
    root: Path
    env: dict[str, str]
    outbox: Path
    warehouse: Path
    tmp: Path

    def nudge(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "nudge.app.cli", *args],
            cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"nudge {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def query(self, sql: str) -> list[tuple]:
        import duckdb

        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Copy]:
    tmp = tmp_path_factory.mktemp("outcomes")
    root = tmp / "nudge"
    copy_project(root)
    yml = root / "dbt_project" / "models" / "cohorts" / "_cohorts__models.yml"
    text = yml.read_text()
    marker = "              goal: {model: goal_first_successful_call, within_days: 14}\n"
    assert marker in text
    yml.write_text(text.replace(marker, marker + f"              holdout_share: {SHARE}\n"))
    landing = tmp / "landing"
    write_profiles(landing)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUDGE_", "DAGSTER_"))}
    env.update(
        PYTHONPATH=str(root),
        NUDGE_LANDING_DIR=str(landing),
        NUDGE_WAREHOUSE=f"duckdb:///{tmp / 'wh.duckdb'}",
        NUDGE_EMAIL_BACKEND="outbox",
        NUDGE_OUTBOX_DIR=str(tmp / "outbox"),
        DAGSTER_HOME=str(tmp / "dagster_home"),
    )
    yield Copy(root, env, tmp / "outbox", tmp / "wh.duckdb", tmp)


@pytest.fixture(scope="module")
def report(project: Copy) -> dict[str, Any]:
    day = FIRST_DAY
    for evaluation in EVALUATIONS:
        while day <= evaluation:
            land_day(project.tmp / "landing", day)
            day += timedelta(days=1)
        t0 = time.perf_counter()
        project.nudge("run", "--as-of", evaluation.isoformat())
        evaluation_s = time.perf_counter() - t0
    html = project.tmp / "report.html"
    t0 = time.perf_counter()
    out = project.nudge("report", "--json", "--html", str(html)).stdout
    report_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    project.nudge("report", CAMPAIGN, "--as-of", "2026-03-21", "--json")
    report_as_of_s = time.perf_counter() - t0
    timing = {"evaluation_s": evaluation_s, "report_s": report_s, "report_as_of_s": report_as_of_s}
    (project.tmp / "timing.json").write_text(json.dumps(timing))
    print(f"\nnudge run (last evaluation): {evaluation_s:.1f} s; nudge report --json --html: "
          f"{report_s:.1f} s; nudge report --as-of: {report_as_of_s:.1f} s")  # fmt: skip
    return {"data": json.loads(out), "html": html, "timing": timing}


def test_only_the_treatment_group_is_mailed(project: Copy, report) -> None:
    mailed = sorted(p.read_text().split("X-Nudge-Entity: ", 1)[1].split()[0]
                    for p in project.outbox.glob("*.eml"))  # fmt: skip
    young_treated = [u for u in YOUNG if not holdout(u)]
    assert mailed == sorted(TREATED + young_treated)
    rows = project.query(
        "select entity_id, state, reason from nudge.send_ledger "
        f"where campaign = '{CAMPAIGN}' order by entity_id"
    )
    held = {e for e, s, r in rows if (s, r) == ("skipped", "holdout")}
    assert held == set(HELD) | {u for u in YOUNG if holdout(u)}
    assert {s for e, s, _ in rows if e not in held} == {"sent"}
    status = json.loads(project.nudge("status", "--json").stdout)
    (mine,) = [c for c in status["campaigns"] if c["campaign"] == CAMPAIGN]
    assert mine["holdout"] == {"share": SHARE, "entries": len(held)}


def test_report_json_counts_and_lift_as_constructed(report) -> None:
    (c,) = [c for c in report["data"]["campaigns"] if c["campaign"] == CAMPAIGN]
    young_held = sum(holdout(u) for u in YOUNG)
    assert c["entries"] == 24
    assert c["holdout"] == 10 + young_held
    assert c["sent"] == 10 + len(YOUNG) - young_held
    for key in ("delivered", "opened", "clicked", "bounced", "unsubscribed"):
        assert c[key] == 0, key  # the outbox backend reports no delivery events
    conv = c["conversion"]
    # Matured entries only: the young ones (entered 03-23) are still inside their window.
    assert (conv["matured_treatment"], conv["converted_treatment"]) == (10, 7)
    assert (conv["matured_holdout"], conv["converted_holdout"]) == (10, 2)
    assert conv["treatment"] == pytest.approx(0.7)
    assert conv["holdout"] == pytest.approx(0.2)
    assert conv["lift"] == pytest.approx(0.5)
    # Newcombe's hybrid score interval, computed with scipy 1.17 (Wilson bounds from
    # binomtest(k, n).proportion_ci(0.95, method="wilson"), then d -+ sqrt of the squared
    # distances): 0.06647631448630476 to 0.7397586340406175.
    assert conv["ci_low"] == pytest.approx(0.066476314, abs=1e-9)
    assert conv["ci_high"] == pytest.approx(0.739758634, abs=1e-9)
    assert conv["ci_low"] > 0  # the mail worked, at 95%
    others = {c["campaign"] for c in report["data"]["campaigns"]} - {CAMPAIGN}
    assert "too_many_4xx_7d" in others


def test_report_as_of_before_the_window_closed_has_no_matured_entry(project: Copy, report) -> None:
    out = json.loads(project.nudge("report", CAMPAIGN, "--as-of", "2026-03-21", "--json").stdout)
    (c,) = out["campaigns"]
    assert c["entries"] == 20  # as of the 03-08 evaluation: the young ones had not entered
    assert c["conversion"]["matured_treatment"] == 0
    assert c["conversion"]["lift"] is None


def test_lift_model_per_entry_week(project: Copy, report) -> None:
    # The outcome tables are as of the last build: a report with --as-of rebuilt them.
    project.nudge("report", "--json")
    rows = project.query(
        "select entry_week, entries_treatment, entries_holdout, conversion_treatment, "
        "conversion_holdout, lift, significant from analytics.fct_campaign_lift "
        f"where campaign = '{CAMPAIGN}'"
    )
    assert len(rows) == 1
    week, n_t, n_h, p_t, p_h, lift, significant = rows[0]
    assert (str(week), n_t, n_h) == ("2026-03-09", 10, 10)
    assert (p_t, p_h, lift) == (pytest.approx(0.7), pytest.approx(0.2), pytest.approx(0.5))
    assert significant is True


def test_html_report_renders_its_charts_offline(report, tmp_path: Path) -> None:
    if not CHROMIUM.exists() or sync_playwright is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("browser test needs /usr/bin/chromium and playwright, and CI=true")
        pytest.skip("browser test needs /usr/bin/chromium and playwright")
    html: Path = report["html"]
    assert '<script src="http' not in html.read_text()  # plotly.js is embedded, no CDN
    with tempfile.TemporaryDirectory(prefix="nudge-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu"],
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        try:
            page = context.new_page()
            page.goto(html.as_uri(), wait_until="load")
            page.wait_for_selector(f'section[data-campaign="{CAMPAIGN}"] .main-svg')
            section = page.locator(f'section[data-campaign="{CAMPAIGN}"]')
            # Both charts drew: two plotly SVG roots, a bar per group, and the funnel's bars.
            assert section.locator(".js-plotly-plot").count() == 2
            assert section.locator(".barlayer .trace").count() == 2
            bars = section.locator(".barlayer .point path")
            assert bars.count() == 2
            # Both bars inside their chart, none cut off by the page's layout.
            chart = section.locator(".chart").first.bounding_box()
            assert chart is not None
            for i in range(2):
                box = bars.nth(i).bounding_box()
                assert box is not None and box["height"] > 10
                assert (
                    chart["x"] <= box["x"]
                    and box["x"] + box["width"] <= chart["x"] + chart["width"]
                )
            assert section.locator(".funnellayer .trace").count() == 1
            text = section.inner_text()
            assert "70.0%" in text and "20.0%" in text and "+50.0 pts" in text
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
        finally:
            context.close()
    # Self-contained: nothing fetched but the page itself.
    assert [u for u in requests if not u.startswith(("file:", "about:", "data:"))] == []


OUTCOMES_JOB = """
import json
import dagster as dg
from orchestration.definitions import defs

job = defs().resolve_job_def("nudge_outcomes")
with dg.instance_for_test() as instance:
    result = job.execute_in_process(instance=instance)
assert result.success
out = {}
for event in result.get_asset_materialization_events():
    mat = event.event_specific_data.materialization
    out[mat.asset_key.to_user_string()] = {
        k: [type(v).__name__, v.value]
        for k, v in mat.metadata.items()
        if isinstance(v.value, int | float)
    }
print(json.dumps(out))
"""


def spool_events(project: Copy) -> None:
    """What `nudge serve` spools on DuckDB: two sent messages delivered (one delivery twice, as
    SendGrid redelivers), one clicked."""
    from email_jobs.email_events import EmailEvent
    from email_jobs.event_spool import write_spool

    (a, a_to), (b, b_to) = project.query(
        "select ledger_key, recipient from nudge.send_ledger where state = 'sent' "
        "order by ledger_key limit 2"
    )
    events = [
        EmailEvent(a, a_to, "delivered", 1_773_100_000, ""),
        EmailEvent(a, a_to, "delivered", 1_773_100_000, ""),
        EmailEvent(b, b_to, "delivered", 1_773_100_001, ""),
        EmailEvent(b, b_to, "click", 1_773_100_100, "https://example.com/docs"),
    ]
    folder = project.warehouse.with_name(project.warehouse.name + ".spool")
    write_spool(folder, [{"kind": "event", **e.as_record()} for e in events])


def test_dagster_outcomes_job_records_the_lift_as_numeric_metadata(project: Copy, report) -> None:
    spool_events(project)
    proc = subprocess.run(
        [sys.executable, "-c", OUTCOMES_JOB],
        cwd=project.root, env=project.env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # sends -> email_events: the spooled events loaded once each, counted by type.
    events = {k: v for k, (_, v) in out["email_events"].items()}
    assert events["events/delivered"] == 2 and events["events/click"] == 1
    assert events["events/bounce"] == 0 and events["loaded_events"] == 4
    # -> the entries, which count them, -> the lift, as floats the UI plots.
    assert "outcomes/fct_campaign_entries" in out
    assert project.query(
        "select sum(delivered), sum(clicked) from analytics.fct_campaign_entries"
    ) == [(2, 1)]
    lift = out["outcomes/fct_campaign_lift"]
    for key, value in (("lift", 0.5), ("conversion_treatment", 0.7), ("ci_low", None),
                       ("conversion_holdout", 0.2)):  # fmt: skip
        kind, number = lift[f"{CAMPAIGN}/{key}"]
        assert kind == "FloatMetadataValue", (key, kind)
        if value is not None:
            assert number == pytest.approx(value)
    assert lift[f"{CAMPAIGN}/matured_holdout"] == ["IntMetadataValue", 10]
