"""Did it work? The delivery events and the outcome models (dbt tag nudge_outcomes) as assets
downstream of the sends.

`sends/<campaign>` -> `email_events` -> `nudge/<table>` (step state_copy) ->
`outcomes/fct_campaign_entries` -> `outcomes/fct_campaign_lift`. `email_events` is
nudge.email_events: what `nudge serve` stored (Postgres) or spooled (DuckDB; loaded by this asset,
as the evaluation does, so the outcomes count it); the dbt source of that table names this asset
(`meta.dagster.asset_key`), which is how the entries follow it. The step `state_copy` copies the
state tables the outcome models read into the warehouse when the state store is another database
(email_jobs.state_copy); its assets carry the keys dagster-dbt gives those sources
(`nudge/<table>`), so no other source needs mapping. The outcome models are built in their own
`dbt build` after a send run (the sensor below), never in the evaluation's build: they read what
evaluations and sends recorded. The lift materialization carries each campaign's conversion and
lift as numeric metadata, which the UI plots across runs.
"""

import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from email_jobs.campaigns import Campaign
from email_jobs.email_events import event_counts
from email_jobs.event_spool import load_spool
from email_jobs.ledger import ensure_schema
from email_jobs.report import build_report, read_entries
from email_jobs.state_copy import copy_state
from nudge.core.dbt_project import (
    AS_OF_VARIABLE,
    DBT_PROJECT,
    dbt_environment,
    keep_partial_parse,
)
from nudge.core.settings import dbt_env
from nudge.core.warehouse import writer_lock
from orchestration.defs.email.assets import EMAIL_EVENTS_KEY, OWNERS, STATE_COPY_KEYS, sends_key
from orchestration.defs.email.campaigns import manifest_campaigns
from orchestration.defs.email.jobs import send_job
from orchestration.defs.shared.resources import NudgeResource
from orchestration.defs.shared.tags import WRITER_TAGS
from orchestration.defs.transform.assets import OUTCOMES_SELECTION, NudgeDbtTranslator

OUTCOMES_PREFIX = "outcomes"
ENTRIES_MODEL = "fct_campaign_entries"
LIFT_MODEL = "fct_campaign_lift"


class OutcomesTranslator(NudgeDbtTranslator):
    """Outcome models under `outcomes/`, in group `email`."""

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest.get("nodes", {}).get(unique_id) or {}
        if node.get("resource_type") != "model" or "nudge_outcomes" not in (node.get("tags") or []):
            return spec
        return spec.replace_attributes(
            key=dg.AssetKey([OUTCOMES_PREFIX, node["name"]]), group_name="email"
        )


def build_email_events(campaigns: list[Campaign]) -> dg.AssetsDefinition:
    @dg.asset(
        key=EMAIL_EVENTS_KEY,
        deps=[sends_key(c) for c in campaigns],
        group_name="email",
        owners=OWNERS,
        description="Delivery events (SendGrid's Event Webhook) and unsubscribes that `nudge "
        "serve` received for the sends, in nudge.email_events and nudge.suppressions; counts by "
        "event type.",
    )
    def email_events(nudge: NudgeResource) -> dg.MaterializeResult:
        with nudge.state() as state:
            loaded = load_spool(state, nudge.settings())  # on Postgres `nudge serve` wrote them
            counts = event_counts(state)
        return dg.MaterializeResult(
            metadata={
                **{f"events/{e}": dg.MetadataValue.int(n) for e, n in counts.items()},
                "loaded_events": dg.MetadataValue.int(loaded.events),
                "loaded_unsubscribes": dg.MetadataValue.int(loaded.unsubscribes),
            }
        )

    return email_events


def build_state_copy(campaigns: list[Campaign]) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name="state_copy",
        specs=[
            dg.AssetSpec(
                key,
                # After the sends and the delivery events: what they recorded is in the copy
                # (nudge.email_events included, whose source is the email_events asset).
                deps=[EMAIL_EVENTS_KEY, *(sends_key(c) for c in campaigns)],
                group_name="email",
                owners=OWNERS,
                description=f"nudge.{key.path[-1]} as the outcome models read it in the "
                "warehouse: copied whole from the state store when NUDGE_STATE_STORE is another "
                "database (with nudge.email_events); the table itself when it is not.",
            )
            for key in STATE_COPY_KEYS
        ],
    )
    def state_copy(nudge: NudgeResource) -> Iterator[dg.MaterializeResult]:
        # Always in the graph, so the lineage is the same whatever the configuration.
        copied: dict[str, int] = {}
        if not nudge.settings().state_is_warehouse:
            with nudge.both() as (wh, state):
                copied = copy_state(state, wh)
        for key in STATE_COPY_KEYS:
            table = key.path[-1]
            yield dg.MaterializeResult(
                asset_key=key,
                metadata=(
                    {"copied_rows": dg.MetadataValue.int(copied[table])}
                    if table in copied
                    else {"copied": "nothing: the warehouse holds the state"}
                ),
            )

    return state_copy


def lift_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """Per campaign: conversion per group, lift and its interval (floats the UI plots), and
    the matured group sizes."""
    out: dict[str, Any] = {}
    for c in report["campaigns"]:
        name, conv = c["campaign"], c["conversion"]
        for key in ("treatment", "holdout", "lift", "ci_low", "ci_high"):
            if conv[key] is not None:
                label = key if key.startswith(("lift", "ci")) else f"conversion_{key}"
                out[f"{name}/{label}"] = dg.MetadataValue.float(float(conv[key]))
        out[f"{name}/matured_treatment"] = dg.MetadataValue.int(conv["matured_treatment"])
        out[f"{name}/matured_holdout"] = dg.MetadataValue.int(conv["matured_holdout"])
    return out


def build_outcomes_asset(campaigns: list[Campaign]) -> dg.AssetsDefinition:
    @dbt_assets(
        manifest=DBT_PROJECT.manifest_path,
        project=DBT_PROJECT,
        select=OUTCOMES_SELECTION,
        name="nudge_outcome_models",
        dagster_dbt_translator=OutcomesTranslator(),
    )
    def nudge_outcome_models(
        context: dg.AssetExecutionContext, dbt: DbtCliResource, nudge: NudgeResource
    ) -> Iterator[Any]:
        settings = nudge.settings()
        with nudge.state() as state:
            ensure_schema(state)  # the sources exist before any evaluation
        # dbt holds the DuckDB file while it runs: the lift is read after it exits, and the
        # lift model's materialization is yielded then, with it as metadata. The step hands dbt
        # the profile's variables itself, and no instant: the outcomes are as of the campaigns'
        # latest evaluation.
        with writer_lock(settings), dbt_environment({**dbt_env(settings), AS_OF_VARIABLE: ""}):
            invocation = dbt.cli(["build", "--exclude-resource-type", "unit_test"], context=context)
            events = list(invocation.stream())
        keep_partial_parse(invocation.target_path, DBT_PROJECT.project_dir / "target")
        lift_key = dg.AssetKey([OUTCOMES_PREFIX, LIFT_MODEL])
        relation = next(
            (
                n["relation_name"]
                for n in invocation.manifest.get("nodes", {}).values()
                if n.get("name") == ENTRIES_MODEL
            ),
            None,
        )
        metadata: dict[str, Any] = {}
        if relation:
            with nudge.warehouse() as wh:
                report = build_report([c.name for c in campaigns], read_entries(wh, relation))
            metadata = lift_metadata(report)
        for event in events:
            if isinstance(event, dg.Output) and (
                context.assets_def.keys_by_output_name.get(event.output_name) == lift_key
            ):
                event = event.with_metadata({**event.metadata, **metadata})
            yield event
        # Each invocation writes its own target folder: keep none (as the cohorts' build does).
        shutil.rmtree(invocation.target_path, ignore_errors=True)

    return nudge_outcome_models


outcomes_job = dg.define_asset_job(
    "nudge_outcomes",
    selection=dg.AssetSelection.assets(EMAIL_EVENTS_KEY, *STATE_COPY_KEYS)
    | dg.AssetSelection.key_prefixes([OUTCOMES_PREFIX]),
    description="Load the delivery events, copy the state into the warehouse (when it is not "
    "the state store), then build the outcome models (entries, conversion, lift) from them, the "
    "ledger and the goals.",
    executor_def=dg.in_process_executor,
    tags=WRITER_TAGS,
)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[send_job],
    request_job=outcomes_job,
    description="After a send run succeeds, rebuild the outcomes.",
)
def outcomes_after_send(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"outcomes-after-{context.dagster_run.run_id}")


@dg.definitions
def defs() -> dg.Definitions:
    campaigns = manifest_campaigns()
    if not campaigns:
        return dg.Definitions()
    return dg.Definitions(
        assets=[
            build_email_events(campaigns),
            build_state_copy(campaigns),
            build_outcomes_asset(campaigns),
        ],
        jobs=[outcomes_job],
        sensors=[outcomes_after_send],
    )
