"""A copy of this repository to edit as an analyst would (a new cohort, a yml key), without
touching the working tree: the tests that run `nudge` on an edited project use it."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "data", ".pytest_cache", ".hypothesis", ".ruff_cache", "artifacts"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in SKIP or n == "__pycache__"}
    if Path(folder).name == "dbt_project":
        skip |= {"target", "logs"}  # the copy parses its own project
    return skip


def copy_project(dest: Path) -> Path:
    """The repository's code, dbt project and templates at `dest` (no venv, data or dbt state)."""
    shutil.copytree(REPO, dest, ignore=_ignore)
    return dest
