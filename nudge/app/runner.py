"""Runs Nudge's Dagster jobs in this process, recorded in the instance at DAGSTER_HOME.

`nudge run` and `nudge demo` go through here, so their runs show in the Dagster UI exactly like
runs the daemon starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import dagster as dg

from nudge.core.instant import day_partition, instant_tags
from nudge.core.settings import Settings
from orchestration.defs.shared.tags import EVALUATION_RUN_TAG, INGEST_RUNS_TAG

log = logging.getLogger(__name__)

# `nudge -v` raises it to INFO.
console_log_level = "WARNING"

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

LOCAL_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "orchestration" / "dagster.local.yaml"


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


def open_instance() -> dg.DagsterInstance:
    """The Dagster instance at DAGSTER_HOME, its storage created by one process at a time.

    Two Nudge processes starting together on a new DAGSTER_HOME would both create its SQLite
    tables, and one would fail ("table runs already exists"): the first creates them under a file
    lock, the other then finds them.
    """
    from nudge.core.warehouse import duckdb_file_lock  # the same cross-process file lock

    with duckdb_file_lock(Path(os.environ["DAGSTER_HOME"]) / ".nudge-instance", timeout_s=600):
        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)  # run storage
        instance.get_latest_materialization_event(dg.AssetKey("nudge-init"))  # event log index
    return instance


@cache
def definitions() -> dg.Definitions:
    from orchestration.definitions import defs

    return defs()


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            err = event.step_failure_data.error
            # The framework wraps the step's own exception: report the innermost cause.
            while err is not None and err.cause is not None:
                err = err.cause
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
    *,
    partition_key: str | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    dbt_tests: bool = True,
) -> JobOutcome:
    with warnings.catch_warnings():
        # Raw events backfill days in one run, models and evaluations one day a run (each day is
        # evaluated as of its own end): Dagster warns that the evaluate job mixes the two.
        warnings.filterwarnings(
            "ignore", message=".*varying BackfillPolicies", category=UserWarning
        )
        job = definitions().resolve_job_def(job_name)
        if not dbt_tests:
            job = _without_dbt_tests(job)
    # dbt's own progress lines go to stdout; in the terminal they would bury Nudge's summary,
    # so unless verbose they go to a log file in DAGSTER_HOME (the UI has every event anyway).
    with _step_output(instance, job_name) as log_file:
        result = _execute(job, instance, tags, partition_key, asset_selection)
    outcome = JobOutcome(job_name, result.run_id, result.success)
    if not result.success:
        outcome.error = _failure_message(result)
        if log_file:
            outcome.error += f" (step output: {log_file})"
    return outcome


def _without_dbt_tests(job: dg.JobDefinition) -> dg.JobDefinition:
    """The job with every asset and every asset check but dbt's data tests (dagster-dbt builds
    only the selected checks' tests)."""
    from orchestration.defs.transform.assets import nudge_dbt_models

    checks = set(job.asset_layer.asset_graph.asset_check_keys) - set(nudge_dbt_models.check_keys)
    return job.get_subset(
        asset_selection=set(job.asset_layer.selected_asset_keys), asset_check_selection=checks
    )


@contextmanager
def _step_output(instance: dg.DagsterInstance, job_name: str) -> Iterator[Path | None]:
    if console_log_level == "INFO":
        yield None
        return
    path = Path(instance.root_directory) / f"last-{job_name}.log"  # the job's latest run
    with path.open("w", encoding="utf-8") as out, redirect_stdout(out):
        yield path


def _execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    partition_key: str | None,
    asset_selection: Sequence[dg.AssetKey] | None,
) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(
        # The full event log is in the instance (and the UI); the terminal gets warnings only.
        run_config={"loggers": {"console": {"config": {"log_level": console_log_level}}}},
        instance=instance,
        tags=tags,
        partition_key=partition_key,
        raise_on_error=False,
        asset_selection=list(asset_selection) if asset_selection else None,
    )


def _catch_up_ingest(
    settings: Settings, instance: dg.DagsterInstance, day: str
) -> list[JobOutcome]:
    """One ingest run over the dt= folders holding files not yet ingested (any dt).

    None when only `day` has new files: the evaluation run of `day` ingests its own dt= folder
    (one Dagster run fewer on a daily schedule's usual day).
    """
    from nudge.core.warehouse import connect
    from nudge.ingest import pending_event_dts
    from orchestration.defs.shared.partitions import days

    with connect(settings) as wh:
        pending = pending_event_dts(wh, settings.landing_dir)
    valid = set(days.get_partition_keys())
    keys = [d.isoformat() for d in pending]
    outside = [k for k in keys if k not in valid]
    if outside:
        log.warning("dt folders outside the day partitions are not ingested: %s", outside)
    keys = [k for k in keys if k in valid]
    if not keys or keys == [day]:
        return []
    tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
    return [execute("nudge_ingest", instance, tags)]


def run_evaluation(
    end: datetime,
    instance: dg.DagsterInstance,
    settings: Settings,
    *,
    send: bool = True,
    dbt_tests: bool = True,
) -> list[JobOutcome]:
    """One evaluation at `end`: ingest every pending dump file, build, evaluate, then send.

    `dbt_tests=False` skips dbt's data tests (the demo's, on data it generated itself)."""
    day = day_partition(end)
    outcomes = _catch_up_ingest(settings, instance, day)
    if not all(o.success for o in outcomes):
        return outcomes
    # The partition is `end`'s day; the tag says `end` itself (it may fall inside that day).
    tags = instant_tags(end)
    if outcomes:
        tags[INGEST_RUNS_TAG] = ",".join(o.run_id for o in outcomes)
    outcomes.append(
        execute("nudge_evaluate", instance, tags, partition_key=day, dbt_tests=dbt_tests)
    )
    if send and outcomes[-1].success:
        send_tags = {**instant_tags(end), EVALUATION_RUN_TAG: outcomes[-1].run_id}
        outcomes.append(execute("nudge_send", instance, send_tags))
    return outcomes


def run_sends(instance: dg.DagsterInstance, campaign: str | None = None) -> JobOutcome:
    selection = [dg.AssetKey(["sends", campaign])] if campaign else None
    return execute("nudge_send", instance, {}, asset_selection=selection)
