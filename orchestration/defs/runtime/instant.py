"""The evaluation instant of a run: the `nudge/as_of` tag, else the end of the run's day
partition, else the run's creation time.

Every step of a run reads the same instant, so ingestion, dbt and the cohort evaluation agree,
and a re-execution of the run decides the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from nudge.asof import parse_as_of
from orchestration.defs.runtime.tags import AS_OF_TAG


def evaluation_instant(context: dg.AssetExecutionContext) -> datetime:
    tag = context.run.tags.get(AS_OF_TAG)
    if tag:
        return parse_as_of(tag)
    if context.has_partition_key:
        # A day partition evaluates at the end of its (last) day.
        return context.partition_time_window.end.astimezone(UTC).replace(tzinfo=None)
    record = context.instance.get_run_record_by_id(context.run.run_id)
    created = record.create_timestamp if record else datetime.now(UTC)
    return created.astimezone(UTC).replace(tzinfo=None, microsecond=0)
