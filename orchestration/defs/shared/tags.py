"""Run tags Nudge reads and sets: the instant's tag (nudge.core.instant), the runs an evaluation
follows, and the tags the instance's run queue limits writers and senders by (see dagster.yaml)."""

from nudge.core.instant import AS_OF_TAG

__all__ = ["AS_OF_TAG", "EVALUATION_RUN_TAG", "INGEST_RUNS_TAG", "SENDER_TAGS", "WRITER_TAGS"]

# Comma-separated ids of the ingest runs an evaluation follows (for the broken-export share).
INGEST_RUNS_TAG = "nudge/ingest_runs"
# The evaluation run a send run follows.
EVALUATION_RUN_TAG = "nudge/evaluation_run"

# One writer at a time on a DuckDB warehouse: steps run in the run's own process, one after the
# other, and the instance's run queue limits runs tagged as writers.
WRITER_TAGS = {"nudge/warehouse_writer": "true"}
# Send runs never overlap: claims of a live run must not look like a crash's.
SENDER_TAGS = {**WRITER_TAGS, "nudge/sender": "true"}
