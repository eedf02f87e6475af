"""Resources: Nudge's settings and warehouse, dbt's CLI."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from nudge.manifest import dbt_executable
from nudge.settings import Settings, export_runtime_env, load_settings
from nudge.warehouse import Warehouse, connect
from orchestration.defs.runtime.dbt_cli import NudgeDbtCliResource
from orchestration.defs.transform.project import nudge_dbt_project


class NudgeResource(dg.ConfigurableResource):
    """Nudge's settings, read from the NUDGE_* environment (and `.env`) when a step runs."""

    def settings(self) -> Settings:
        settings = load_settings()
        export_runtime_env(settings)
        return settings

    @contextmanager
    def warehouse(self) -> Iterator[Warehouse]:
        with connect(self.settings()) as wh:
            yield wh


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "nudge": NudgeResource(),
            "dbt": NudgeDbtCliResource(
                project_dir=nudge_dbt_project, dbt_executable=dbt_executable()
            ),
        }
    )
