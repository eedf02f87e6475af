"""dbt models as Dagster assets (staging -> intermediate -> marts -> cohorts); tests as checks."""

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DbtCliResource,
    DbtProject,
    dbt_assets,
    get_asset_key_for_model,
)

from nudge.asof import to_iso
from nudge.evaluation_lock import HeldLock, evaluation_lock, forget_builds, record_builds
from nudge.settings import load_settings
from nudge.warehouse import connect, writer_lock
from orchestration.defs.runtime.instant import evaluation_instant
from orchestration.defs.runtime.partitions import days
from orchestration.defs.runtime.resources import NudgeResource
from orchestration.defs.transform.project import nudge_dbt_project

OWNERS = ["team:data"]
OUTCOMES_SELECTION = "tag:nudge_outcomes"
PARTIAL_PARSE_FILE = "partial_parse.msgpack"


class NudgeDbtTranslator(DagsterDbtTranslator):
    """Groups by the model's folder (staging, intermediate, marts, cohorts)."""

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest.get("nodes", {}).get(unique_id) or {}
        fqn = node.get("fqn") or []
        if node.get("resource_type") == "model" and len(fqn) > 2:
            spec = spec.replace_attributes(group_name=fqn[1], owners=OWNERS)
        return spec


def dbt_build_args() -> list[str]:
    """One `dbt build` (models and their data tests).

    dbt's unit tests check the SQL's logic, not the data: CI runs them, a production run need not.
    The tests on the `raw` sources guard what Nudge's own ingestion guarantees (keys present and
    unique); they are for `dbt build` by hand, and as Dagster assets they belong to no dbt model.
    """
    return ["build", "--exclude-resource-type", "unit_test", "--exclude", "source:raw"]


def dbt_as_of_env(as_of: datetime) -> dict[str, str]:
    """The evaluation instant, as dbt_project.yml's var `nudge_as_of` reads it."""
    return {"NUDGE_AS_OF": to_iso(as_of)}


@dbt_assets(
    manifest=nudge_dbt_project.manifest_path,
    project=nudge_dbt_project,
    dagster_dbt_translator=NudgeDbtTranslator(),
    # The outcome models read what evaluations and sends recorded: they are built after the
    # sends, by their own asset (orchestration/defs/email/outcomes.py).
    exclude=OUTCOMES_SELECTION,
    # Cohorts are built as of one instant: each day of a backfill is its own `dbt build`.
    partitions_def=days,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def nudge_dbt_models(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    nudge: NudgeResource,
    evaluation_lock: dg.ResourceParam[HeldLock],
) -> Iterator[Any]:
    settings = nudge.settings()
    end = evaluation_instant(context)
    # The run holds the evaluation lock (a resource spanning its steps) from before this build
    # until its evaluations are recorded; the cohorts built here record their instant, which the
    # evaluation checks.
    evaluation_lock.check()
    cohorts = _cohort_models()
    selected = [m for m, key in cohorts.items() if key in context.selected_asset_keys]
    with connect(settings) as wh:
        forget_builds(wh, selected)
    built: list[str] = []
    try:
        with writer_lock(settings), _environ(dbt_as_of_env(end)):
            invocation = dbt.cli(dbt_build_args(), context=context)
            for event in invocation.stream():
                key = _materialized_key(context, event)
                built += [m for m in selected if cohorts[m] == key]
                yield event
    finally:
        if built:
            with connect(settings) as wh:
                record_builds(wh, built, end, context.run.run_id)
    keep_partial_parse(invocation.target_path, nudge_dbt_project.project_dir / "target")
    # Each invocation writes its own target folder; keep only failed ones (for debugging), or a
    # daily schedule grows the project folder without end.
    shutil.rmtree(invocation.target_path, ignore_errors=True)


def keep_partial_parse(invocation_target: Path, project_target: Path) -> None:
    """Carry dbt's partial-parse state back to the project's target folder.

    dagster-dbt copies `target/partial_parse.msgpack` into each invocation's own folder. dbt
    discards it and parses the whole project (seconds) when the profile's connection differs
    from the one it was saved with: another warehouse path than at install time, say. Keeping
    the invocation's state means only the first run of a deployment pays that.
    """
    fresh = invocation_target / PARTIAL_PARSE_FILE
    if not fresh.exists():
        return
    project_target.mkdir(parents=True, exist_ok=True)
    tmp = project_target / f".{PARTIAL_PARSE_FILE}.{os.getpid()}"
    shutil.copyfile(fresh, tmp)
    # Atomic: a build starting meanwhile copies the old state or the new, never half of one.
    os.replace(tmp, project_target / PARTIAL_PARSE_FILE)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """dagster-dbt hands this process's environment to dbt: set it for the step, then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _materialized_key(context: dg.AssetExecutionContext, event: Any) -> dg.AssetKey | None:
    if isinstance(event, dg.Output):
        return context.assets_def.keys_by_output_name.get(event.output_name)
    if isinstance(event, dg.MaterializeResult):
        return event.asset_key
    return None


def _cohort_models() -> dict[str, dg.AssetKey]:
    """The models under models/cohorts/ (their tables hold one instant's members), by name."""
    manifest = json.loads(nudge_dbt_project.manifest_path.read_text())
    names = [
        n["name"]
        for n in manifest.get("nodes", {}).values()
        if n.get("resource_type") == "model" and (n.get("fqn") or [None, None])[1] == "cohorts"
    ]
    return {name: get_asset_key_for_model([nudge_dbt_models], name) for name in names}


@dg.resource(
    config_schema={},
    description="Held from a run's dbt build until its evaluations are recorded: one evaluation "
    "at a time per warehouse (nudge.evaluation_lock).",
)
def evaluation_lock_resource(_: dg.InitResourceContext) -> Iterator[HeldLock]:
    # A run's steps run in one process (in-process executor), so this is initialized once per
    # run and torn down when the run ends, crash included (the OS or Postgres drops the lock).
    with evaluation_lock(load_settings()) as held:
        yield held


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[nudge_dbt_models], resources={"evaluation_lock": evaluation_lock_resource}
    )
