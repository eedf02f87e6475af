"""The code location.

Loaded by workspace.yaml and by `dagster api grpc -m orchestration.definitions`."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    # Each domain folder under defs/ ends in its own small `@dg.definitions def defs()`.
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
