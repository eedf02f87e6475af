"""The email jobs: evaluate (ingest -> dbt -> cohort evaluations, for one day) and send."""

import dagster as dg

from orchestration.defs.email.assets import EMAIL_EVENTS_KEY, STATE_COPY_KEYS
from orchestration.defs.shared.partitions import days
from orchestration.defs.shared.tags import SENDER_TAGS, WRITER_TAGS

evaluate_job = dg.define_asset_job(
    "nudge_evaluate",
    # Not the delivery events, the state's copy and the outcomes either: they follow the sends
    # (orchestration/defs/email/outcomes.py).
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.key_prefixes(["sends"], ["outcomes"])
    - dg.AssetSelection.assets(EMAIL_EVENTS_KEY, *STATE_COPY_KEYS),
    description="For day D: ingest dt=D and the profiles, build the dbt models and evaluate every "
    "campaign's cohort at the end of D (or at the run's nudge/as_of tag).",
    executor_def=dg.in_process_executor,
    tags=WRITER_TAGS,
    partitions_def=days,
)

send_job = dg.define_asset_job(
    "nudge_send",
    selection=dg.AssetSelection.key_prefixes(["sends"]),
    description="Deliver the pending entries of every campaign's send ledger.",
    executor_def=dg.in_process_executor,
    tags=SENDER_TAGS,
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[evaluate_job, send_job])
