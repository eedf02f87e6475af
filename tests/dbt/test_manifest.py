"""The dbt manifest is parsed again whenever the project changed, removals included."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nudge.core.dbt_project import manifest_is_stale


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "models" / "cohorts").mkdir(parents=True)
    (tmp_path / "dbt_project.yml").write_text("name: p\n")
    (tmp_path / "models" / "cohorts" / "cohort_a.sql").write_text("select 1 as entity_id\n")
    (tmp_path / "models" / "cohorts" / "cohort_b.sql").write_text("select 2 as entity_id\n")
    (tmp_path / "target").mkdir()
    manifest = tmp_path / "target" / "manifest.json"
    manifest.write_text("{}")
    # The project as it was an hour ago; the manifest parsed from it since.
    past = time.time() - 3600
    for path in [tmp_path / "dbt_project.yml", *(tmp_path / "models").rglob("*")]:
        os.utime(path, (past, past))
    os.utime(tmp_path / "models", (past, past))
    os.utime(manifest, (past + 60, past + 60))
    return tmp_path


def test_an_untouched_project_keeps_its_manifest(project: Path) -> None:
    assert not manifest_is_stale(project)


def test_an_edited_model_makes_the_manifest_stale(project: Path) -> None:
    (project / "models" / "cohorts" / "cohort_a.sql").write_text("select 3 as entity_id\n")
    assert manifest_is_stale(project)


def test_a_removed_model_makes_the_manifest_stale(project: Path) -> None:
    (project / "models" / "cohorts" / "cohort_b.sql").unlink()
    assert manifest_is_stale(project)


def test_a_renamed_model_makes_the_manifest_stale(project: Path) -> None:
    cohorts = project / "models" / "cohorts"
    (cohorts / "cohort_b.sql").rename(cohorts / "cohort_c.sql")
    assert manifest_is_stale(project)
