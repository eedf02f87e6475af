"""Nudge: behavioral email for API products (plain-Python core: settings, warehouse, ingestion)."""
