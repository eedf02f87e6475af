"""Runs Nudge's Dagster jobs in this process, recorded in the instance at DAGSTER_HOME.

`nudge run` and `nudge demo` go through here, so their runs show in the Dagster UI exactly like
runs the daemon starts.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import dagster as dg

from nudge.asof import to_iso
from nudge.settings import Settings
from orchestration.defs.runtime.instant import AS_OF_TAG

log = logging.getLogger(__name__)

LOCAL_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "orchestration" / "dagster.local.yaml"


@dataclass
class JobOutcome:
    job: str
    run_id: str
    success: bool
    error: str | None = None


def ensure_dagster_home(settings: Settings) -> Path:
    home = settings.dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(LOCAL_DAGSTER_YAML, config)
    return home


@cache
def definitions() -> dg.Definitions:
    from orchestration.definitions import defs

    return defs()


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            err = event.step_failure_data.error
            user = event.step_failure_data.user_failure_data
            text = (user.description if user and user.description else None) or (
                err.message.strip() if err else "step failed"
            )
            messages.append(f"{event.step_key}: {text}")
    return "; ".join(messages) or "run failed"


def execute(
    job_name: str,
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    asset_selection: Sequence[dg.AssetKey] | None = None,
) -> JobOutcome:
    job = definitions().resolve_job_def(job_name)
    result = job.execute_in_process(
        instance=instance,
        tags=tags,
        raise_on_error=False,
        asset_selection=list(asset_selection) if asset_selection else None,
    )
    outcome = JobOutcome(job_name, result.run_id, result.success)
    if not result.success:
        outcome.error = _failure_message(result)
    return outcome


def run_evaluation(
    end: datetime, instance: dg.DagsterInstance, *, send: bool = True
) -> list[JobOutcome]:
    """One evaluation: ingest + dbt + cohorts at `end`, then (when it succeeded) the sends."""
    tags = {AS_OF_TAG: to_iso(end)}
    outcomes = [execute("nudge_evaluate", instance, tags)]
    if send and outcomes[0].success:
        outcomes.append(
            execute("nudge_send", instance, {**tags, "nudge/evaluation_run": outcomes[0].run_id})
        )
    return outcomes


def run_sends(instance: dg.DagsterInstance, campaign: str | None = None) -> JobOutcome:
    selection = [dg.AssetKey(["sends", campaign])] if campaign else None
    return execute("nudge_send", instance, {}, asset_selection=selection)
