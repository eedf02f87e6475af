"""Landing folder -> raw tables. One step ingests every file not yet ingested."""

from collections.abc import Iterator

import dagster as dg

from nudge.ingest import run_ingest
from orchestration.defs.runtime.resources import NudgeResource

RAW_TABLES = {
    "events": "API-call events from events/dt=*/ dumps, deduplicated by transaction_id.",
    "users": "Every user profile version from users/*.jsonl[.gz].",
    "companies": "Every company profile version from companies/*.jsonl[.gz].",
}
OWNERS = ["team:data"]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["raw", kind],
            group_name="ingest",
            description=description,
            owners=OWNERS,
            kinds={"duckdb"},
        )
        for kind, description in RAW_TABLES.items()
    ],
)
def raw_landing(
    context: dg.AssetExecutionContext, nudge: NudgeResource
) -> Iterator[dg.MaterializeResult]:
    settings = nudge.settings()
    with nudge.warehouse() as wh:
        report = run_ingest(
            wh, settings.landing_dir, run_id=context.run.run_id, progress=context.log.info
        )
    for kind in RAW_TABLES:
        t = report.totals[kind]
        yield dg.MaterializeResult(
            asset_key=["raw", kind],
            metadata={
                "files": dg.MetadataValue.int(t.files),
                "lines_read": dg.MetadataValue.int(t.lines_read),
                "loaded": dg.MetadataValue.int(t.loaded),
                "duplicates": dg.MetadataValue.int(t.duplicates),
                "rejected": dg.MetadataValue.int(t.rejected),
            },
        )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[raw_landing])
