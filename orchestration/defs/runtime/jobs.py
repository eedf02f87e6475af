"""The jobs: ingest (dt= folders), evaluate (ingest -> dbt -> cohort evaluations), send."""

from __future__ import annotations

import dagster as dg

from orchestration.defs.runtime.partitions import days

# One writer at a time on a DuckDB warehouse: steps run in the run's own process, one after the
# other, and the instance's run queue limits runs tagged as writers (see dagster.yaml).
WRITER_TAGS = {"nudge/warehouse_writer": "true"}
# Send runs never overlap (see dagster.yaml): claims of a live run must not look like a crash's.
SENDER_TAGS = {**WRITER_TAGS, "nudge/sender": "true"}

ingest_job = dg.define_asset_job(
    "nudge_ingest",
    selection=dg.AssetSelection.assets(dg.AssetKey(["raw", "events"])),
    description="Ingest the event dumps of dt= folders (one partition per folder).",
    executor_def=dg.in_process_executor,
    tags=WRITER_TAGS,
    partitions_def=days,
)

evaluate_job = dg.define_asset_job(
    "nudge_evaluate",
    # Not the outcomes either: they follow the sends (orchestration/defs/email/outcomes.py).
    selection=dg.AssetSelection.all() - dg.AssetSelection.key_prefixes(["sends"], ["outcomes"]),
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
    return dg.Definitions(jobs=[ingest_job, evaluate_job, send_job])
