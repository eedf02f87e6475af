"""Days: the partitions of raw events (by dt= folder) and of evaluations (as of the day's end).

Partition D of the evaluation job ingests dt=D, builds the models and evaluates every campaign at
the end of D (D + 1 day, 00:00 UTC), so a backfill of past days from the UI re-ingests and
re-evaluates them, and the stale-evaluation guard keeps it from mailing anyone.
"""

import os

import dagster as dg

# Today is a partition too (end_offset=1): `nudge run` without --as-of evaluates now.
days = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("NUDGE_PARTITIONS_START", "2020-01-01"),
    end_offset=1,
    timezone="UTC",
)
