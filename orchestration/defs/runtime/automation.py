"""Schedules and sensors: the daily evaluation, new dump files, sending after evaluations,
recording failures."""

import json
from datetime import timedelta

import dagster as dg

from email_jobs.run_failures import record_failure
from nudge.ingest.watch import changes_since, event_file_versions
from nudge.settings import load_settings
from nudge.warehouse import connect
from orchestration.defs.runtime.jobs import evaluate_job, ingest_job, send_job
from orchestration.defs.runtime.partitions import days


def daily_schedule(cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nudge_daily",
        job=evaluate_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        description="Evaluate every campaign once a day, as of the end of the day before "
        "(NUDGE_DAILY_CRON, UTC).",
    )
    def nudge_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        # The last complete day: its partition evaluates at its end, so a tick replayed later
        # decides exactly as it would have on time.
        day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
        return dg.RunRequest(run_key=f"daily-{day}", partition_key=day)

    return nudge_daily


@dg.sensor(
    name="landing_files",
    job=ingest_job,
    minimum_interval_seconds=60,
    description="Ingests the dt= partition of every new or changed event dump file.",
)
def landing_files(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    seen = {rel: tuple(v) for rel, v in json.loads(context.cursor or "{}").items()}
    changes = changes_since(seen, event_file_versions(load_settings().landing_dir))
    valid = set(days.get_partition_keys())
    requests = []
    for dt in sorted(changes.dts):
        key = dt.isoformat()
        if key not in valid:
            context.log.warning(f"dt={key} is outside the day partitions; not ingested")
            continue
        requests.append(dg.RunRequest(run_key=changes.run_key(dt), partition_key=key))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(changes.cursor))


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
    monitored_jobs=[ingest_job, evaluate_job, send_job],
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
        sensors=[landing_files, send_after_evaluation, record_run_failures],
    )
