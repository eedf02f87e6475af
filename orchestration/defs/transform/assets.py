"""dbt models as Dagster assets (staging -> intermediate -> marts -> cohorts); tests as checks."""

import json
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DbtCliResource,
    DbtProject,
    dbt_assets,
    get_asset_key_for_model,
)

from nudge.core.dbt_project import (
    DBT_PROJECT,
    dbt_environment,
    dbt_invocation_env,
    keep_partial_parse,
)
from nudge.core.evaluation_lock import HeldLock, forget_builds, record_builds
from nudge.core.warehouse import connect_state, writer_lock
from orchestration.defs.shared.instant import evaluation_instant
from orchestration.defs.shared.partitions import days
from orchestration.defs.shared.resources import NudgeResource

# Under `dagster dev` the project is parsed again at load; elsewhere its manifest is prebuilt.
DBT_PROJECT.prepare_if_dev()

OWNERS = ["team:data"]
OUTCOMES_SELECTION = "tag:nudge_outcomes"


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
    """One `dbt build` (models and their data tests); the instant reaches it through the
    environment (nudge.core.dbt_project.dbt_invocation_env).

    dbt's unit tests check the SQL's logic, not the data: CI runs them, a production run need not.
    The tests on the `raw` sources guard what Nudge's own ingestion guarantees (keys present and
    unique); they are for `dbt build` by hand, and as Dagster assets they belong to no dbt model.
    """
    return [
        "build",
        "--exclude-resource-type",
        "unit_test",
        "--exclude",
        "source:raw",
    ]


@dbt_assets(
    manifest=DBT_PROJECT.manifest_path,
    project=DBT_PROJECT,
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
    with connect_state(settings) as state:
        forget_builds(state, selected)
    built: list[str] = []
    try:
        with writer_lock(settings), dbt_environment(dbt_invocation_env(settings, end)):
            invocation = dbt.cli(dbt_build_args(), context=context)
            for event in invocation.stream():
                key = _materialized_key(context, event)
                built += [m for m in selected if cohorts[m] == key]
                yield event
    finally:
        if built:
            with connect_state(settings) as state:
                record_builds(state, built, end, context.run.run_id)
    keep_partial_parse(invocation.target_path, DBT_PROJECT.project_dir / "target")
    # Each invocation writes its own target folder; keep only failed ones (for debugging), or a
    # daily schedule grows the project folder without end.
    shutil.rmtree(invocation.target_path, ignore_errors=True)


def _materialized_key(context: dg.AssetExecutionContext, event: Any) -> dg.AssetKey | None:
    if isinstance(event, dg.Output):
        return context.assets_def.keys_by_output_name.get(event.output_name)
    if isinstance(event, dg.MaterializeResult):
        return event.asset_key
    return None


def _cohort_models() -> dict[str, dg.AssetKey]:
    """The models under models/cohorts/ (their tables hold one instant's members), by name."""
    manifest = json.loads(DBT_PROJECT.manifest_path.read_text())
    names = [
        n["name"]
        for n in manifest.get("nodes", {}).values()
        if n.get("resource_type") == "model" and (n.get("fqn") or [None, None])[1] == "cohorts"
    ]
    return {name: get_asset_key_for_model([nudge_dbt_models], name) for name in names}


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[nudge_dbt_models])
