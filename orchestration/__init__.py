"""Nudge's Dagster code location: wiring only, no business logic."""
