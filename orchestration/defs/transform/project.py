"""The dbt project, as dagster-dbt sees it. The manifest is prebuilt (make install, the docker
image, or `nudge run` when models changed); `dagster dev` re-parses it."""

from pathlib import Path

from dagster_dbt import DbtProject

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"

nudge_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)
nudge_dbt_project.prepare_if_dev()
