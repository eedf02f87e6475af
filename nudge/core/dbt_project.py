"""The one dbt project handle: where the project is, a current manifest, and what a dbt
invocation at an instant gets. The Dagster assets, `nudge diff-cohort`, `nudge preview` and the
CLI all use it.

The manifest is prebuilt (make install, the docker image); `dagster dev` re-parses it
(`prepare_if_dev`), and `nudge` re-parses it when a dbt file changed, so a new cohort (SQL + yml)
is picked up by the next run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from datetime import datetime
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from dagster_dbt.errors import DagsterDbtCliRuntimeError

from nudge.core.instant import to_iso
from nudge.core.settings import Settings, dbt_env

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
DBT_PROJECT = DbtProject(project_dir=DBT_PROJECT_DIR)
MANIFEST = DBT_PROJECT.manifest_path
_WATCHED = ("models", "macros", "tests", "seeds", "snapshots", "analyses")


AS_OF_VARIABLE = "NUDGE_AS_OF"
PARTIAL_PARSE_FILE = "partial_parse.msgpack"


def dbt_invocation_env(settings: Settings, as_of: datetime) -> dict[str, str]:
    """What a dbt invocation at an evaluation instant gets on top of this process's environment:
    the profile's variables (from NUDGE_WAREHOUSE) and the instant, which dbt_project.yml's var
    `nudge_as_of` reads.

    The instant goes as a variable, not as `--vars`: dbt 1.11 hashes `--vars` into its parse
    state, so a new instant each run would re-parse the whole project (seconds per evaluation).
    """
    return {**dbt_env(settings), AS_OF_VARIABLE: to_iso(as_of)}


@contextmanager
def dbt_environment(values: Mapping[str, str]) -> Iterator[None]:
    """dagster-dbt hands this process's environment to the dbt it starts: set the invocation's
    variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dbt_vars(**values: str) -> list[str]:
    """`--vars '{...}'` for vars other than the instant (diff-cohort's shadow model)."""
    return ["--vars", json.dumps(values)] if values else []


def keep_partial_parse(invocation_target: Path, project_target: Path) -> None:
    """Carry dbt's partial-parse state back to the project's target folder.

    dagster-dbt copies `target/partial_parse.msgpack` into each invocation's own folder. dbt
    discards it and parses the whole project (seconds) when the profile's connection differs
    from the one it was saved with: another warehouse path than at install time, say. Keeping
    the invocation's state means only the first run of a deployment pays that.
    """
    fresh = invocation_target / PARTIAL_PARSE_FILE
    if not fresh.exists():
        return
    project_target.mkdir(parents=True, exist_ok=True)
    tmp = project_target / f".{PARTIAL_PARSE_FILE}.{os.getpid()}"
    shutil.copyfile(fresh, tmp)
    # Atomic: a build starting meanwhile copies the old state or the new, never half of one.
    os.replace(tmp, project_target / PARTIAL_PARSE_FILE)


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
