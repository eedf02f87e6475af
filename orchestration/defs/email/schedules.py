"""The daily evaluation of every campaign."""

from datetime import timedelta

import dagster as dg

from nudge.core.settings import load_settings
from orchestration.defs.email.jobs import evaluate_job


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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(schedules=[daily_schedule(load_settings().daily_cron)])
