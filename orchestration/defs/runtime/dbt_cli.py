"""dagster-dbt's CLI resource without the set-up Nudge does not use.

Before every `dbt.cli()`, `DbtCliResource` runs `dbt --version` in a subprocess and builds a dbt
adapter in this process (profile, project, macros). The adapter serves only
`fetch_column_metadata()` / `fetch_row_counts()`, which Nudge does not call; together they cost
3-5 s of every run's fixed cost. The `dbt build` itself runs as dagster-dbt runs it, in a
subprocess, except in the runs `nudge` executes itself (`dbt_in_process`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from dagster_dbt import DbtCliResource
from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation
from packaging import version

from orchestration.defs.runtime import dbt_in_process


class NudgeDbtCliResource(DbtCliResource):
    @cached_property
    def _cli_version(self) -> version.Version:
        # The executable is the dbt-core installed beside this package (nudge.manifest finds it).
        from dbt.version import __version__

        return version.parse(__version__)

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> Any:
        return None

    def cli(self, args: Sequence[str], **kwargs: Any) -> DbtCliInvocation:
        if not dbt_in_process.enabled():
            return super().cli(args, **kwargs)
        with dbt_in_process.popen_in_this_process():
            return super().cli(args, **kwargs)
