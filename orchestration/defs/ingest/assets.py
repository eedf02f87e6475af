"""Landing folder -> raw tables: event dumps by dt= partition, profiles whole."""

from collections.abc import Iterator
from datetime import date

import dagster as dg

from nudge.core.evaluation_lock import ingest_lock
from nudge.ingest import IngestReport, ingest_pending
from orchestration.defs.shared.partitions import days
from orchestration.defs.shared.resources import NudgeResource

OWNERS = ["team:data"]


def _metadata(report: IngestReport, kind: str) -> dict[str, dg.MetadataValue]:
    t = report.totals[kind]
    return {
        "files": dg.MetadataValue.int(t.files),
        "lines_read": dg.MetadataValue.int(t.lines_read),
        "loaded": dg.MetadataValue.int(t.loaded),
        "duplicates": dg.MetadataValue.int(t.duplicates),
        "rejected": dg.MetadataValue.int(t.rejected),
    }


@dg.asset(
    key=["raw", "events"],
    group_name="ingest",
    description="API-call events from events/dt=*/ dumps, deduplicated by transaction_id. "
    "Partition D is the dt=D folder (the day the dump was written, not the events' day).",
    owners=OWNERS,
    kinds={"duckdb"},
    partitions_def=days,
    # A range of days (a backfill, or `nudge run` catching up) is one run: unchanged files skip.
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def raw_events(context: dg.AssetExecutionContext, nudge: NudgeResource) -> dg.MaterializeResult:
    settings = nudge.settings()
    dts = [date.fromisoformat(k) for k in context.partition_keys]
    with ingest_lock(settings), nudge.warehouse() as wh:
        report = ingest_pending(
            wh,
            settings.landing_dir,
            run_id=context.run.run_id,
            progress=context.log.info,
            kinds=["events"],
            dts=dts,
        )
    return dg.MaterializeResult(metadata=_metadata(report, "events"))


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["raw", kind],
            group_name="ingest",
            description=f"Every {kind[:-1]} profile version from {kind}/*.jsonl[.gz].",
            owners=OWNERS,
            kinds={"duckdb"},
        )
        for kind in ("users", "companies")
    ],
)
def raw_profiles(
    context: dg.AssetExecutionContext, nudge: NudgeResource
) -> Iterator[dg.MaterializeResult]:
    settings = nudge.settings()
    with ingest_lock(settings), nudge.warehouse() as wh:
        report = ingest_pending(
            wh,
            settings.landing_dir,
            run_id=context.run.run_id,
            progress=context.log.info,
            kinds=["users", "companies"],
        )
    for kind in ("users", "companies"):
        yield dg.MaterializeResult(asset_key=["raw", kind], metadata=_metadata(report, kind))


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[raw_events, raw_profiles])
