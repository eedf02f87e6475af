"""The ingest job: event dumps of dt= folders, one partition per folder."""

import dagster as dg

from orchestration.defs.shared.partitions import days
from orchestration.defs.shared.tags import WRITER_TAGS

ingest_job = dg.define_asset_job(
    "nudge_ingest",
    selection=dg.AssetSelection.assets(dg.AssetKey(["raw", "events"])),
    description="Ingest the event dumps of dt= folders (one partition per folder).",
    executor_def=dg.in_process_executor,
    tags=WRITER_TAGS,
    partitions_def=days,
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[ingest_job])
