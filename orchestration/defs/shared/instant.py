"""The evaluation instant of a step: the run's `nudge/as_of` tag, else the end of its day
partition (nudge.core.instant.instant_of), else the run's creation time.

Every step of a run reads the same instant, so ingestion, dbt and the cohort evaluation agree,
and a re-execution of the run decides the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from nudge.core.instant import instant_of

# The tag Dagster puts the partition key of a run in.
PARTITION_TAG = "dagster/partition"


def run_instant(run: dg.DagsterRun) -> datetime | None:
    """The instant a run evaluates at, from its tags alone (sensors read finished runs)."""
    return instant_of(run.tags, run.tags.get(PARTITION_TAG))


def evaluation_instant(context: dg.AssetExecutionContext) -> datetime:
    partition = context.partition_key if context.has_partition_key else None
    end = instant_of(context.run.tags, partition)
    if end is not None:
        return end
    record = context.instance.get_run_record_by_id(context.run.run_id)
    created = record.create_timestamp if record else datetime.now(UTC)
    return created.astimezone(UTC).replace(tzinfo=None, microsecond=0)
