"""Keeps dbt's manifest current, so a new cohort (SQL + yml) is picked up by the next run.

dbt's partial parsing makes the re-parse cheap; it only happens when a dbt file changed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"
MANIFEST = DBT_PROJECT_DIR / "target" / "manifest.json"
_WATCHED = ("models", "macros", "tests", "seeds", "snapshots", "analyses")


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


def ensure_manifest(project_dir: Path = DBT_PROJECT_DIR) -> bool:
    """Re-parse the dbt project when a model, macro or config changed. Returns True if it did."""
    if not manifest_is_stale(project_dir):
        return False
    log.info("dbt project changed: re-parsing %s", project_dir)
    proc = subprocess.run(
        [
            dbt_executable(),
            "parse",
            "--quiet",
            "--project-dir",
            str(project_dir),
            "--profiles-dir",
            str(project_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError("dbt parse failed:\n" + "\n".join(detail))
    return True
