"""The one dbt project handle: where the project is, a current manifest, and dbt's arguments for
an instant. The Dagster assets, `nudge diff-cohort`, `nudge preview` and the CLI all use it.

The manifest is prebuilt (make install, the docker image); `dagster dev` re-parses it
(`prepare_if_dev`), and `nudge` re-parses it when a dbt file changed, so a new cohort (SQL + yml)
is picked up by the next run.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from contextlib import redirect_stdout
from datetime import datetime
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from dagster_dbt.errors import DagsterDbtCliRuntimeError

from nudge.asof import to_iso

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"
DBT_PROJECT = DbtProject(project_dir=DBT_PROJECT_DIR)
MANIFEST = DBT_PROJECT.manifest_path
_WATCHED = ("models", "macros", "tests", "seeds", "snapshots", "analyses")


def dbt_vars(as_of: datetime, **more: str) -> list[str]:
    """dbt's arguments for an evaluation instant (and any other var): `--vars '{...}'`.

    Without them dbt_project.yml's `nudge_as_of` is empty, which the macros read as now: a
    `dbt build` by hand evaluates at its own start.
    """
    return ["--vars", json.dumps({"nudge_as_of": to_iso(as_of), **more})]


def _newest_source_mtime(project_dir: Path) -> float:
    newest = 0.0
    for name in ("dbt_project.yml", "profiles.yml"):
        f = project_dir / name
        if f.exists():
            newest = max(newest, f.stat().st_mtime)
    for folder in _WATCHED:
        root = project_dir / folder
        if root.exists():
            # Folders too: deleting or renaming a model changes only its folder's mtime.
            for f in (root, *root.rglob("*")):
                newest = max(newest, f.stat().st_mtime)
    return newest


def manifest_is_stale(project_dir: Path = DBT_PROJECT_DIR) -> bool:
    manifest = project_dir / "target" / "manifest.json"
    return not manifest.exists() or manifest.stat().st_mtime < _newest_source_mtime(project_dir)


def dbt_executable() -> str:
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


def ensure_manifest(project: DbtProject = DBT_PROJECT) -> bool:
    """Re-parse the dbt project when a model, macro or config changed. Returns True if it did."""
    if not manifest_is_stale(project.project_dir):
        return False
    log.info("dbt project changed: re-parsing %s", project.project_dir)
    # The `dbt parse` dagster-dbt's preparer runs under `dagster dev`, with the dbt installed
    # beside Nudge (which need not be on PATH).
    dbt = DbtCliResource(project_dir=project, dbt_executable=dbt_executable())
    try:
        # dagster-dbt echoes dbt's log lines on stdout, where `nudge status --json` writes.
        with redirect_stdout(io.StringIO()):
            dbt.cli(["parse", "--quiet"], target_path=project.target_path).wait()
    except DagsterDbtCliRuntimeError as exc:
        raise RuntimeError(f"dbt parse failed:\n{exc}") from None
    return True
