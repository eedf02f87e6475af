"""Per campaign: the cohort evaluation (membership, diff, guards -> ledger) and the sends."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_dbt import get_asset_key_for_model

from email_jobs.backends import make_backend
from email_jobs.campaigns import Campaign, CampaignError
from email_jobs.evaluate import (
    EvaluationDeferred,
    GuardLimits,
    compute_guard_inputs,
    evaluate_campaign,
)
from email_jobs.event_spool import load_spool
from email_jobs.send import send_campaign
from email_jobs.state_copy import OUTCOME_SOURCES
from email_jobs.suppressions import sync_suppressions
from email_jobs.template_columns import check_built_columns
from nudge.core.evaluation_lock import CohortNotBuiltForInstant, HeldLock, check_built_for
from nudge.core.instant import instant_of
from orchestration.defs.email.campaigns import manifest_campaigns
from orchestration.defs.shared.instant import evaluation_instant
from orchestration.defs.shared.partitions import days
from orchestration.defs.shared.resources import NudgeResource
from orchestration.defs.shared.tags import INGEST_RUNS_TAG
from orchestration.defs.transform.assets import nudge_dbt_models

OWNERS = ["team:crm"]
# Delivery events after the sends (orchestration/defs/email/outcomes.py); the dbt source
# nudge.email_events names this key (dbt_project/models/outcomes/_nudge__sources.yml).
EMAIL_EVENTS_KEY = dg.AssetKey(["email_events"])
# The other state tables the outcome models read, copied into the warehouse after the sends
# (outcomes.py's state_copy), under the keys dagster-dbt gives their dbt sources.
STATE_COPY_KEYS = [dg.AssetKey(["nudge", t]) for t in OUTCOME_SOURCES if t != "email_events"]


def evaluation_key(campaign: Campaign) -> dg.AssetKey:
    return dg.AssetKey(["evaluations", campaign.name])


def sends_key(campaign: Campaign) -> dg.AssetKey:
    return dg.AssetKey(["sends", campaign.name])


def _tagged_runs(context: dg.AssetExecutionContext, tag: str) -> list[str]:
    return [r for r in context.run.tags.get(tag, "").split(",") if r]


def _selected(
    context: dg.AssetExecutionContext, campaigns: list[Campaign], key_fn: Any
) -> list[Campaign]:
    """The selected campaigns that are enabled. A disabled one stays in the graph (its lineage
    visible, marked Disabled) but its step yields nothing: no membership, no ledger row, no send
    (not even rows left pending from before it was turned off), whatever launched the run."""
    chosen = [c for c in campaigns if key_fn(c) in context.selected_asset_keys]
    for c in chosen:
        if not c.enabled:
            context.log.info(f"campaign {c.name} is disabled (yml enabled: false): skipped")
    return [c for c in chosen if c.enabled]


def _switch(campaign: Campaign, description: str) -> dict[str, Any]:
    """Description, tags and metadata of a campaign's assets that show its switch in the UI."""
    if campaign.enabled:
        state = f"enabled ({campaign.enabled_by})"
    else:
        state = "disabled"
        description = (
            "Disabled (yml `enabled: false`; turn on with NUDGE_ENABLED_CAMPAIGNS or the yml): "
            "evaluates and sends nothing. " + description
        )
    return {
        "description": description,
        "tags": {"nudge/enabled": str(campaign.enabled).lower()},
        "metadata": {"nudge/campaign": campaign.name, "nudge/switch": state},
    }


def build_evaluations(campaigns: list[Campaign]) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name="cohort_evaluations",
        specs=[
            dg.AssetSpec(
                evaluation_key(c),
                deps=[get_asset_key_for_model([nudge_dbt_models], c.cohort)],
                group_name="email",
                owners=OWNERS,
                **_switch(
                    c,
                    f"Membership of {c.cohort} at each evaluation, diffed against the previous "
                    f"one; entries go to the send ledger for campaign {c.name}.",
                ),
                skippable=True,
            )
            for c in campaigns
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "guards",
                asset=evaluation_key(c),
                description="Fails when a guard held, skipped or deferred this evaluation's sends.",
            )
            for c in campaigns
        ],
        can_subset=True,
        partitions_def=days,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    )
    def cohort_evaluations(
        context: dg.AssetExecutionContext,
        nudge: NudgeResource,
        evaluation_lock: dg.ResourceParam[HeldLock],
    ) -> Iterator[Any]:
        end = evaluation_instant(context)
        settings = nudge.settings()
        limits = GuardLimits.from_settings(settings)
        selected = _selected(context, campaigns, evaluation_key)
        if not selected:
            return
        # The run has held the evaluation lock since before its dbt build (a resource spanning
        # the run's steps), so no other evaluation rebuilt the cohorts meanwhile; the recorded
        # build instants check it again.
        evaluation_lock.check()
        # The cohorts and the guards' inputs from the warehouse; what is recorded, in the state.
        with nudge.both() as (wh, state):
            try:
                for c in selected:
                    check_built_for(state, c.cohort, end)
            except CohortNotBuiltForInstant as exc:
                raise dg.Failure(
                    description=f"Evaluation at {end:%Y-%m-%d %H:%M}Z refused: {exc}"
                ) from None
            try:
                # The broken-export share counts the lines this evaluation's ingests read: its
                # own run's, and those of the ingest runs `nudge run` started for it.
                ingest_runs = [context.run.run_id, *_tagged_runs(context, INGEST_RUNS_TAG)]
                guard_inputs = compute_guard_inputs(wh, end, limits, run_id=ingest_runs)
            except EvaluationDeferred as deferred:
                for c in selected:
                    yield dg.AssetCheckResult(
                        asset_key=evaluation_key(c),
                        check_name="guards",
                        passed=False,
                        description=f"Evaluation deferred: {deferred}",
                    )
                raise dg.Failure(
                    description=f"Evaluation at {end:%Y-%m-%d %H:%M}Z deferred: {deferred}"
                )
            load_spool(state, settings)  # what `nudge serve` spooled (DuckDB) counts here
            suppressions = sync_suppressions(state, settings)
            refused: list[str] = []
            for c in selected:
                try:  # a yml without `columns:`: its templates against the built model
                    check_built_columns(wh, c)
                except CampaignError as exc:  # this campaign fails; the others go on
                    refused.append(str(exc))
                    context.log.error(str(exc))
                    continue
                result = evaluate_campaign(
                    wh, c, end, limits, context.run.run_id, guard_inputs=guard_inputs, state=state
                )
                context.log.info(result.summary())
                yield dg.MaterializeResult(
                    asset_key=evaluation_key(c),
                    metadata={**result.metadata(), **suppressions.metadata()},
                )
                yield dg.AssetCheckResult(
                    asset_key=evaluation_key(c),
                    check_name="guards",
                    passed=not result.guard_reasons,
                    description="; ".join(result.guard_reasons) or "No guard fired.",
                )
            if refused:
                raise dg.Failure(description="; ".join(refused))

    return cohort_evaluations


def build_sends(campaigns: list[Campaign]) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name="campaign_sends",
        specs=[
            dg.AssetSpec(
                sends_key(c),
                deps=[evaluation_key(c)],
                group_name="email",
                owners=OWNERS,
                **_switch(
                    c, f"Emails of campaign {c.name} (template {c.template}), from the ledger."
                ),
                skippable=True,
            )
            for c in campaigns
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "no_unknown_sends",
                asset=sends_key(c),
                description="Fails while ledger rows are `unknown` (a run died between claim and "
                "record); `nudge release CAMPAIGN --unknown` resends them.",
            )
            for c in campaigns
        ],
        can_subset=True,
    )
    def campaign_sends(context: dg.AssetExecutionContext, nudge: NudgeResource) -> Iterator[Any]:
        settings = nudge.settings()
        backend = make_backend(settings)
        # The frequency cap counts from the evaluation's instant (the tag `nudge run` and the
        # send_after_evaluation sensor set); a run without one (`nudge release`) uses the
        # campaign's newest evaluation (email_jobs.send).
        as_of = instant_of(context.run.tags)
        try:
            for c in _selected(context, campaigns, sends_key):
                report = send_campaign(
                    nudge.state, c, backend, settings, context.run.run_id, as_of=as_of
                )
                context.log.info(report.summary())
                yield dg.MaterializeResult(asset_key=sends_key(c), metadata=report.metadata())
                yield dg.AssetCheckResult(
                    asset_key=sends_key(c),
                    check_name="no_unknown_sends",
                    passed=report.unknown == 0,
                    description=(
                        f"{report.unknown} send(s) in state unknown: run `nudge release {c.name} "
                        "--unknown` after checking the provider's activity log."
                        if report.unknown
                        else "No unknown sends."
                    ),
                )
        finally:
            backend.close()

    return campaign_sends


@dg.definitions
def defs() -> dg.Definitions:
    campaigns = manifest_campaigns()
    if not campaigns:
        return dg.Definitions()
    return dg.Definitions(assets=[build_evaluations(campaigns), build_sends(campaigns)])
