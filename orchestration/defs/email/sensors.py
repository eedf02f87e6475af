"""Sending after each evaluation, and recording failed runs where `nudge status` shows them."""

import dagster as dg

from email_jobs.run_failures import record_failure
from nudge.core.instant import instant_tags
from nudge.core.settings import load_settings
from nudge.core.warehouse import connect_state
from orchestration.defs.email.jobs import evaluate_job, send_job
from orchestration.defs.shared.instant import run_instant
from orchestration.defs.shared.tags import EVALUATION_RUN_TAG


@dg.run_status_sensor(
    name="send_after_evaluation",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[evaluate_job],
    request_job=send_job,
    description="Starts the send job once an evaluation run has materialized the cohorts.",
)
def send_after_evaluation(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    run = context.dagster_run
    tags = {EVALUATION_RUN_TAG: run.run_id}
    # The sends carry the evaluation's instant, so the frequency cap counts from it (not from
    # whichever evaluation of the campaign is newest by the time the send runs).
    end = run_instant(run)
    if end is not None:
        tags.update(instant_tags(end))
    return dg.RunRequest(run_key=f"send-after-{run.run_id}", tags=tags)


# No monitored_jobs: every job of this code location (ingest, evaluate, send, and ad-hoc
# materializations from the UI), so no domain's job list is repeated here.
@dg.run_failure_sensor(
    name="record_run_failures",
    description="Records failed runs in nudge.run_failures, where `nudge status` shows them.",
)
def record_run_failures(context: dg.RunFailureSensorContext) -> None:
    message = context.failure_event.message or "run failed"
    with connect_state(load_settings()) as wh:
        record_failure(wh, context.dagster_run.run_id, context.dagster_run.job_name, message)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[send_after_evaluation, record_run_failures])
