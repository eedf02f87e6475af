"""The shell people and scripts face: the `nudge` command, the runner that executes Dagster jobs
in-process, the demo, preview, diff-cohort, `nudge serve`."""
