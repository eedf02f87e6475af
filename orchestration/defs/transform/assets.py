"""dbt models as Dagster assets (staging -> intermediate -> marts -> cohorts); tests as checks."""

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
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
    # Cohorts are built as of one instant: each day of a backfill is its own `dbt build`.
    partitions_def=days,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
)
def nudge_dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, nudge: NudgeResource
) -> Iterator[Any]:
    settings = nudge.settings()
    with writer_lock(settings), _environ(dbt_as_of_env(evaluation_instant(context))):
        invocation = dbt.cli(dbt_build_args(), context=context)
        yield from invocation.stream()
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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[nudge_dbt_models])
