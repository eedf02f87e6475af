"""dagster-dbt's CLI resource without the set-up Nudge does not use.

Before every `dbt.cli()`, `DbtCliResource` runs `dbt --version` in a subprocess and builds a dbt
adapter in this process (profile, project, macros). The adapter serves only
`fetch_column_metadata()` / `fetch_row_counts()`, which Nudge does not call; together they cost
3-5 s of every run's fixed cost. The `dbt build` itself still runs as dagster-dbt runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from dagster_dbt import DbtCliResource
from packaging import version


class NudgeDbtCliResource(DbtCliResource):
    @cached_property
    def _cli_version(self) -> version.Version:
        # The executable is the dbt-core installed beside this package (nudge.manifest finds it).
        from dbt.version import __version__

        return version.parse(__version__)

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> Any:
        return None
