"""Synthetic Moesif dumps for the demo, the tests and the benchmarks (`nudge generate`).
Not part of the pipeline: nothing in nudge.core, the domains or orchestration imports it."""
