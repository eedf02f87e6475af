"""The incremental daily rollups on a generated landing folder, with the real `dbt run`.

Dumps land one dt= folder at a time; each day is ingested and the rollups are built
incrementally (delete+insert of the days the new events touch). After ten such days the rollups
must equal a full refresh of the same raw data, and an event that arrives late re-touches its own
day and no other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from nudge.core.settings import load_settings
from nudge.core.warehouse import connect
from nudge.ingest import ingest_pending
from synthetic.generate import generate

pytestmark = pytest.mark.integration

DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"
ROLLUPS = ("fct_user_daily_activity", "fct_user_daily_endpoint_status", "fct_hourly_event_volume")
START = date(2026, 3, 1)
DAYS = 10


def dbt_run(wh: Path, work: Path, *extra: str) -> None:
    """`dbt run` of the rollups (and the staging views they read), in its own process."""
    dbt = Path(sys.executable).with_name("dbt")
    select = " ".join(f"+{m}" for m in ROLLUPS)
    env = {
        **os.environ,
        "NUDGE_DBT_TARGET": "duckdb",
        "NUDGE_DBT_DUCKDB_PATH": str(wh),
        "NUDGE_DBT_MEMORY_LIMIT": "1GB",
        "DO_NOT_TRACK": "1",
    }
    args = ["run", "--select", select, *extra]
    proc = subprocess.run(
        [str(dbt) if dbt.exists() else "dbt", *args, "--project-dir", str(DBT_PROJECT),
         "--profiles-dir", str(DBT_PROJECT), "--target-path", str(work / "target"),
         "--log-path", str(work / "logs")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"dbt {' '.join(args)} failed:\n{proc.stdout[-4000:]}"


def ingest(wh: Path, landing: Path) -> None:
    with connect(load_settings(warehouse=f"duckdb:///{wh}")) as w:
        ingest_pending(w, landing)


def table(wh: Path, name: str) -> list[tuple[Any, ...]]:
    with connect(load_settings(warehouse=f"duckdb:///{wh}")) as w:
        return sorted(w.fetchall(f"select * from analytics.{name}"), key=repr)


def land_day(held: Path, landing: Path, day: date) -> None:
    name = f"dt={day.isoformat()}"
    shutil.move(str(held / name), landing / "events" / name)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A warehouse built by ten daily ingest + incremental runs: (warehouse, landing, work)."""
    work = tmp_path_factory.mktemp("incremental")
    landing = work / "landing"
    generate(landing, users=30, days=DAYS, events_per_day=300, start=START)
    held = work / "held"
    shutil.move(str(landing / "events"), held)
    (landing / "events").mkdir()
    wh = work / "wh.duckdb"
    for d in range(DAYS):
        land_day(held, landing, START + timedelta(days=d))
        ingest(wh, landing)
        dbt_run(wh, work)
    return wh, landing, work


def test_rollups_after_ten_incremental_runs_equal_a_full_refresh(
    history: tuple[Path, Path, Path],
) -> None:
    wh, _, work = history
    incremental = {m: table(wh, m) for m in ROLLUPS}
    assert all(incremental.values())
    refreshed = work / "refreshed.duckdb"
    shutil.copyfile(wh, refreshed)
    dbt_run(refreshed, work, "--full-refresh")
    for m in ROLLUPS:
        assert table(refreshed, m) == incremental[m], f"{m} differs from its full refresh"
    # and the rollups still count exactly the events ingested
    with connect(load_settings(warehouse=f"duckdb:///{wh}")) as w:
        direct = w.fetchone("select count(*) from raw.events where user_id is not null")
        rolled = w.fetchone("select sum(api_calls) from analytics.fct_user_daily_activity")
    assert direct == rolled


def daily(wh: Path) -> dict[tuple[str, date], tuple[Any, ...]]:
    """fct_user_daily_activity by (user, day): (company, calls, 4xx calls, watermark)."""
    with connect(load_settings(warehouse=f"duckdb:///{wh}")) as w:
        rows = w.fetchall(
            "select user_id, activity_date, company_id, api_calls, calls_4xx, last_ingested_at "
            "from analytics.fct_user_daily_activity"
        )
    return {(r[0], r[1]): r[2:] for r in rows}


def test_a_late_event_re_touches_its_own_day_only(history: tuple[Path, Path, Path]) -> None:
    wh, landing, work = history
    before = daily(wh)
    late_day = START + timedelta(days=3)
    user = min(u for u, d in before if d == late_day)
    company, calls, calls_4xx, _ = before[(user, late_day)]
    # A dump written on the last day holding an event from six days before.
    dump = landing / "events" / f"dt={(START + timedelta(days=DAYS - 1)).isoformat()}"
    late_event = {
        "transaction_id": "late-event-1",
        "user_id": user,
        "company_id": company,
        "request": {"time": f"{late_day.isoformat()}T08:00:00Z", "verb": "GET", "uri": "/v1/x"},
        "response": {"time": f"{late_day.isoformat()}T08:00:01Z", "status": 404},
    }
    (dump / "late.jsonl").write_text(json.dumps(late_event) + "\n")
    ingest(wh, landing)
    dbt_run(wh, work)

    after = daily(wh)
    assert after.keys() == before.keys()
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {(user, late_day)}  # every other row untouched, down to its watermark
    assert after[(user, late_day)][1:3] == (calls + 1, calls_4xx + 1)
    with connect(load_settings(warehouse=f"duckdb:///{wh}")) as w:
        hourly = w.fetchone(
            "select events from analytics.fct_hourly_event_volume where event_hour = ?",
            [f"{late_day.isoformat()} 08:00:00"],
        )
        direct = w.fetchone(
            "select count(*) from raw.events where request_time >= ? and request_time < ?",
            [f"{late_day.isoformat()} 08:00:00", f"{late_day.isoformat()} 09:00:00"],
        )
    assert hourly == direct
