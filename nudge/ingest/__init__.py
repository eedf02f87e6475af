"""Ingestion of the landing folder into the warehouse's `raw` schema."""
