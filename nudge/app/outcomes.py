"""Build the outcome models (dbt tag `nudge_outcomes`) and read `nudge report` from them.

The outcome models read what evaluations and sends recorded in the nudge schema, so they are
built after them, in their own `dbt build`: here for `nudge report`, and by the Dagster asset
downstream of the sends. `--as-of` reaches dbt as the var nudge_as_of: the report is then as of
the campaigns' latest evaluation at or before that instant.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from email_jobs.event_spool import load_spool
from email_jobs.ledger import ensure_schema
from email_jobs.state_copy import copy_state
from nudge.core.dbt_project import (
    AS_OF_VARIABLE,
    DBT_PROJECT_DIR,
    PARTIAL_PARSE_FILE,
    dbt_executable,
)
from nudge.core.instant import to_iso
from nudge.core.settings import ConfigError, Settings, dbt_env
from nudge.core.warehouse import connect, connect_both, writer_lock

log = logging.getLogger(__name__)

OUTCOMES_TAG = "tag:nudge_outcomes"


def outcome_relations(manifest: dict[str, Any]) -> dict[str, str]:
    return {
        n["name"]: n["relation_name"]
        for n in manifest.get("nodes", {}).values()
        if n.get("resource_type") == "model" and "nudge_outcomes" in (n.get("tags") or [])
    }


def build_outcomes(
    settings: Settings, as_of: datetime | None, project_dir: Path = DBT_PROJECT_DIR
) -> None:
    """`dbt build` of the outcome models (and their data tests) at `as_of` (None: now)."""
    with connect_both(settings) as (wh, state):
        evaluated = (
            state.table_exists("nudge", "evaluations")
            and state.fetchone("select count(*) from nudge.evaluations")[0]
        )
        if not evaluated:
            # The outcome models read the marts that the first evaluation builds.
            raise ConfigError("nothing to report yet: no evaluation has run (`nudge run` first)")
        ensure_schema(state)
        load_spool(state, settings)  # what `nudge serve` spooled (DuckDB) counts in the report
        copy_state(state, wh)  # the outcome models read the state in the warehouse
    with tempfile.TemporaryDirectory(prefix="nudge-outcomes-") as tmp:
        work = Path(tmp)
        # dbt re-parses the whole project without its partial-parse state (seconds).
        saved = project_dir / "target" / PARTIAL_PARSE_FILE
        if saved.exists():
            (work / "target").mkdir()
            shutil.copyfile(saved, work / "target" / saved.name)
        env = {
            **os.environ,
            **dbt_env(settings),
            AS_OF_VARIABLE: to_iso(as_of) if as_of else "",
        }
        args = [
            dbt_executable(), "build", "--quiet", "--select", OUTCOMES_TAG,
            "--exclude-resource-type", "unit_test",
            "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
            "--target-path", str(work / "target"), "--log-path", str(work / "logs"),
        ]  # fmt: skip
        with writer_lock(settings):
            proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stdout + proc.stderr).strip()[-2000:]
            raise ConfigError(f"dbt could not build the outcome models:\n{detail}")


@dataclass
class Report:
    data: dict[str, Any]
    lift: Any  # the weekly frame (pandas), for the charts
    build_seconds: float
    read_seconds: float


def make_report(
    settings: Settings,
    campaigns: list[str],
    manifest: dict[str, Any],
    as_of: datetime | None = None,
) -> Report:
    from email_jobs.report import ENTRIES_MODEL, LIFT_MODEL, build_report, read_entries, read_lift

    relations = outcome_relations(manifest)
    t0 = time.perf_counter()
    build_outcomes(settings, as_of)
    t1 = time.perf_counter()
    with connect(settings, read_only=True) as wh:
        entries = read_entries(wh, relations[ENTRIES_MODEL])
        lift = read_lift(wh, relations[LIFT_MODEL])
    report = build_report(campaigns, entries)
    t2 = time.perf_counter()
    log.info("report: outcome models built in %.2f s, read in %.2f s", t1 - t0, t2 - t1)
    return Report(report, lift, t1 - t0, t2 - t1)


def report_json(report: Report) -> str:
    return json.dumps(report.data, default=str)
