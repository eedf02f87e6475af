"""Resources every domain uses: Nudge's settings, warehouse and state store, dbt's CLI, the
evaluation lock.

Each is bound with an empty config schema: nothing a run launch sets decides which program runs,
which project is built or where mail goes.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource

from nudge.core.dbt_project import DBT_PROJECT, dbt_executable
from nudge.core.evaluation_lock import HeldLock, evaluation_lock
from nudge.core.settings import Settings, load_settings
from nudge.core.warehouse import Warehouse, connect, connect_both, connect_state


class NudgeResource(dg.ConfigurableResource):
    """Nudge's settings, read from the NUDGE_* environment (and `.env`) when a step runs."""

    def settings(self) -> Settings:
        return load_settings()

    @contextmanager
    def warehouse(self) -> Iterator[Warehouse]:
        """The warehouse: raw.*, the dbt models, the cohorts."""
        with connect(self.settings()) as wh:
            yield wh

    @contextmanager
    def state(self) -> Iterator[Warehouse]:
        """The state store: the nudge.* tables (ledger, membership, evaluations...)."""
        with connect_state(self.settings()) as state:
            yield state

    @contextmanager
    def both(self) -> Iterator[tuple[Warehouse, Warehouse]]:
        """(warehouse, state store), one connection when one database holds both roles."""
        with connect_both(self.settings()) as pair:
            yield pair


def locked(value: Any, description: str) -> dg.ResourceDefinition:
    """A resource whose value is fixed here: its config schema is empty, so run config naming
    any field of it (from the UI, GraphQL or `execute_in_process`) fails validation.

    A `ConfigurableResource` bound as is exposes its fields (dbt's `dbt_executable`,
    `project_dir`, `global_config_flags`, ...) to whoever launches a run, which would let them
    choose the program the code server runs. `hardcoded_resource` ignores config but accepts
    any, so it would not refuse such a launch.
    """
    return dg.ResourceDefinition(
        resource_fn=lambda _: value, config_schema={}, description=description
    )


@dg.io_manager(config_schema={}, description="Dagster's filesystem IO manager, not configurable")
def locked_io_manager(context: dg.InitResourceContext) -> dg.IOManager:
    # The default IO manager takes `base_dir` (a path it writes to) from run config.
    return dg.FilesystemIOManager().create_io_manager(context)


@dg.resource(
    config_schema={},
    description="Held from a run's dbt build until its evaluations are recorded: one evaluation "
    "at a time per warehouse (nudge.core.evaluation_lock).",
)
def evaluation_lock_resource(_: dg.InitResourceContext) -> Iterator[HeldLock]:
    # A run's steps run in one process (in-process executor), so this is initialized once per
    # run and torn down when the run ends, crash included (the OS or Postgres drops the lock).
    with evaluation_lock(load_settings()) as held:
        yield held


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "nudge": locked(NudgeResource(), "Nudge's settings, from the environment only"),
            "dbt": locked(
                DbtCliResource(project_dir=DBT_PROJECT, dbt_executable=dbt_executable()),
                "dbt's CLI on the project and executable baked into the code location",
            ),
            "io_manager": locked_io_manager,
            "evaluation_lock": evaluation_lock_resource,
        },
        # The implicit job of ad-hoc materializations would otherwise run the multiprocess
        # executor, whose run config names modules for its forkserver to import.
        executor=dg.in_process_executor,
    )
