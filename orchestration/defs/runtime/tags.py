"""Run tags Nudge reads; `nudge run` sets them, so do schedules and sensors where relevant."""

# The evaluation instant, ISO 8601 UTC.
AS_OF_TAG = "nudge/as_of"
# Comma-separated ids of the ingest runs an evaluation follows (for the broken-export share).
INGEST_RUNS_TAG = "nudge/ingest_runs"
