"""Schedules and sensors: the daily evaluation, sending after it, recording failures."""

import dagster as dg

from email_jobs.run_failures import record_failure
from nudge.asof import to_iso
from nudge.settings import load_settings
from nudge.warehouse import connect
from orchestration.defs.runtime.instant import AS_OF_TAG
from orchestration.defs.runtime.jobs import evaluate_job, send_job


def daily_schedule(cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nudge_daily",
        job=evaluate_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        description="Evaluate every campaign once a day (NUDGE_DAILY_CRON, UTC).",
    )
    def nudge_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        # The tick's own time is the evaluation instant, so a missed tick replayed later decides
        # exactly as it would have on time.
        instant = context.scheduled_execution_time
        return dg.RunRequest(run_key=instant.isoformat(), tags={AS_OF_TAG: to_iso(instant)})

    return nudge_daily


@dg.run_status_sensor(
    name="send_after_evaluation",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[evaluate_job],
    request_job=send_job,
    description="Starts the send job once an evaluation run has materialized the cohorts.",
)
def send_after_evaluation(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    run = context.dagster_run
    return dg.RunRequest(
        run_key=f"send-after-{run.run_id}", tags={"nudge/evaluation_run": run.run_id}
    )


@dg.run_failure_sensor(
    name="record_run_failures",
    monitored_jobs=[evaluate_job, send_job],
    description="Records failed runs in nudge.run_failures, where `nudge status` shows them.",
)
def record_run_failures(context: dg.RunFailureSensorContext) -> None:
    message = context.failure_event.message or "run failed"
    with connect(load_settings()) as wh:
        record_failure(wh, context.dagster_run.run_id, context.dagster_run.job_name, message)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        schedules=[daily_schedule(load_settings().daily_cron)],
        sensors=[send_after_evaluation, record_run_failures],
    )
