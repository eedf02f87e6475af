"""The floor: settings, warehouse access, the evaluation instant, the dbt project handle, the
evaluation lock. Imports nothing of Nudge above it."""
