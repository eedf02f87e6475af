"""Ingestion of the landing folder into the warehouse's `raw` schema.

`run_ingest(wh, landing_dir, run_id=None, progress=None) -> IngestReport`; the DDL of the raw
tables is in `nudge.ingest.schema`.
"""

from nudge.ingest.report import FileResult, IngestReport, KindTotals
from nudge.ingest.run import run_ingest

__all__ = ["FileResult", "IngestReport", "KindTotals", "run_ingest"]
