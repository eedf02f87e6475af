"""Plain-Python email jobs (no Dagster here): campaigns, membership diffs, the send ledger,
rendering and delivery backends."""
