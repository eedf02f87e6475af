"""dbt models as Dagster assets (staging -> intermediate -> marts -> cohorts); tests as checks."""

import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from nudge.asof import to_iso
from nudge.warehouse import writer_lock
from orchestration.defs.runtime.instant import evaluation_instant
from orchestration.defs.runtime.partitions import days
from orchestration.defs.runtime.resources import NudgeResource
from orchestration.defs.transform.project import nudge_dbt_project

OWNERS = ["team:data"]


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


def dbt_build_args(as_of: datetime) -> list[str]:
    """One `dbt build` (models and their data tests) at the evaluation instant.

    dbt's unit tests check the SQL's logic, not the data: CI runs them, a production run need not.
    """
    return [
        "build",
        "--exclude-resource-type",
        "unit_test",
        "--vars",
        json.dumps({"nudge_as_of": to_iso(as_of)}),
    ]


@dbt_assets(
    manifest=nudge_dbt_project.manifest_path,
    project=nudge_dbt_project,
    dagster_dbt_translator=NudgeDbtTranslator(),
    # Cohorts are built as of one instant: each day of a backfill is its own `dbt build`.
    partitions_def=days,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def nudge_dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, nudge: NudgeResource
) -> Iterator[Any]:
    settings = nudge.settings()
    with writer_lock(settings):
        yield from dbt.cli(dbt_build_args(evaluation_instant(context)), context=context).stream()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[nudge_dbt_models])
