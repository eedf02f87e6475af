"""Ingestion of the landing folder into the warehouse's `raw` schema.

`run_ingest(wh, landing_dir, run_id=None, progress=None) -> IngestReport`; the DDL of the raw
tables is in `nudge.ingest.schema`.
"""

from nudge.ingest.report import FileResult, IngestReport, KindTotals
from nudge.ingest.run import pending_event_dts, run_ingest

__all__ = ["FileResult", "IngestReport", "KindTotals", "pending_event_dts", "run_ingest"]
