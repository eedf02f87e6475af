"""`nudge diff-cohort MODEL`: who would enter and who would exit if the edited cohort shipped.

The model's SQL as it is now on disk is built into `<model>__shadow` (beside the live relation;
its upstream models are read as they are) at the instant of the cohort's last evaluation, and its
members are compared with the membership recorded at that evaluation. Nothing is sent, and the
ledger, the membership history and the live cohort table are not touched. dbt writes its
manifest to a temporary target folder, so the pipeline's manifest stays as it is.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dagster_dbt import DbtCliInvocation, DbtCliResource, DbtProject

from nudge.core.dbt_project import (
    DBT_PROJECT,
    dbt_environment,
    dbt_executable,
    dbt_invocation_env,
    dbt_vars,
)
from nudge.core.instant import to_iso
from nudge.core.settings import ConfigError, Settings
from nudge.core.warehouse import Warehouse, connect, connect_state, writer_lock

log = logging.getLogger(__name__)

SHADOW_SUFFIX = "__shadow"
MAX_LISTED = 50  # members listed per side; the counts are always complete


@dataclass
class CohortDiff:
    model: str
    as_of: datetime
    baseline_of: str | None  # the campaign whose recorded membership is "current"; None: none
    current: dict[str, str | None]  # entity_id -> email
    shadow: dict[str, str | None]
    shadow_relation: str
    notes: list[str] = field(default_factory=list)

    @property
    def entering(self) -> list[str]:
        return sorted(set(self.shadow) - set(self.current))

    @property
    def exiting(self) -> list[str]:
        return sorted(set(self.current) - set(self.shadow))

    def lines(self) -> list[str]:
        """The report `nudge diff-cohort` prints."""
        source = (
            f"the membership recorded by campaign {self.baseline_of}"
            if self.baseline_of
            else "no recorded membership"
        )
        out = [
            f"cohort {self.model} at {to_iso(self.as_of)}: {len(self.current)} member(s) now "
            f"({source}), {len(self.shadow)} with the edited SQL ({self.shadow_relation})",
            *self.notes,
        ]
        for title, sign, ids, emails in (
            ("would enter", "+", self.entering, self.shadow),
            ("would exit", "-", self.exiting, self.current),
        ):
            out.append(f"{title}: {len(ids)}")
            out += [f"  {sign} {i} <{emails[i] or 'no email'}>" for i in ids[:MAX_LISTED]]
            if len(ids) > MAX_LISTED:
                out.append(f"  ... and {len(ids) - MAX_LISTED} more")
        return out


def _last_evaluation(wh: Warehouse, model: str) -> tuple[datetime, str] | None:
    if not wh.table_exists("nudge", "evaluations"):
        return None
    row = wh.fetchone(
        "select as_of, campaign from nudge.evaluations where cohort = ? "
        "order by as_of desc, campaign limit 1",
        [model],
    )
    return (row[0], row[1]) if row else None


def _evaluation_at(wh: Warehouse, model: str, as_of: datetime) -> str | None:
    if not wh.table_exists("nudge", "evaluations"):
        return None
    row = wh.fetchone(
        "select min(campaign) from nudge.evaluations where cohort = ? and as_of = ?",
        [model, as_of],
    )
    return row[0] if row and row[0] else None


def _recorded_members(wh: Warehouse, campaign: str, as_of: datetime) -> dict[str, str | None]:
    rows = wh.fetchall(
        "select entity_id, email from nudge.cohort_membership where campaign = ? and as_of = ?",
        [campaign, as_of],
    )
    return {str(e): m for e, m in rows}


def _dbt_args(model: str) -> list[str]:
    """`dbt run` of the one model into its shadow relation."""
    return ["run", "--select", model, *dbt_vars(nudge_shadow_model=model)]


def build_shadow(
    settings: Settings, model: str, as_of: datetime, project: DbtProject = DBT_PROJECT
) -> str:
    """Build `model` (its SQL as on disk) into `<model>__shadow` at `as_of`; its relation name."""
    dbt = DbtCliResource(project_dir=project, dbt_executable=dbt_executable())
    with tempfile.TemporaryDirectory(prefix="nudge-shadow-") as tmp:
        work = Path(tmp)
        # dagster-dbt echoes dbt's log lines on stdout, where the report goes: kept out of it.
        with (
            writer_lock(settings),
            dbt_environment(dbt_invocation_env(settings, as_of)),
            redirect_stdout(io.StringIO()),
        ):
            # Its own target folder: the pipeline's manifest stays as it is.
            invocation = dbt.cli(
                _dbt_args(model), target_path=work / "target", raise_on_error=False
            ).wait()
        manifest_path = work / "target" / "manifest.json"
        nodes: dict[str, Any] = (
            json.loads(manifest_path.read_text())["nodes"] if manifest_path.exists() else {}
        )
        node = next(
            (n for n in nodes.values() if n.get("resource_type") == "model" and n["name"] == model),
            None,
        )
        if not invocation.is_successful():
            raise ConfigError(f"dbt could not build {model}:\n{_dbt_errors(invocation)}")
        if node is None:
            raise ConfigError(f"the dbt project has no model {model!r}")
        return str(node["relation_name"])


def _dbt_errors(invocation: DbtCliInvocation) -> str:
    """dagster-dbt's account of the failure (the error events dbt logged), its last 20 lines."""
    error = invocation.get_error()
    return "\n".join(str(error or "dbt failed").strip().splitlines()[-20:])


def _members_of(wh: Warehouse, relation: str, model: str) -> dict[str, str | None]:
    rows = wh.fetchdicts(f"select * from {wh.relation(relation)}")
    if rows and ("entity_id" not in rows[0] or "email" not in rows[0]):
        raise ConfigError(f"the edited {model} has no entity_id or email column")
    return {str(r["entity_id"]): r["email"] for r in rows if r["entity_id"] is not None}


def diff_cohort(
    settings: Settings,
    model: str,
    as_of: datetime | None = None,
    *,
    keep: bool = False,
    project: DbtProject = DBT_PROJECT,
) -> CohortDiff:
    """Build the edited `model` beside the live one and compare its members with those the
    pipeline recorded at the cohort's last evaluation (or at `as_of`)."""
    notes: list[str] = []
    with connect_state(settings) as wh:  # what the pipeline recorded
        last = _last_evaluation(wh, model)
        if as_of is None:
            if last is None:
                raise ConfigError(
                    f"{model} has not been evaluated yet, so there is no membership to compare "
                    "with; give --as-of DATE to see who it would hold then"
                )
            as_of, campaign = last
        else:
            campaign = _evaluation_at(wh, model, as_of)
        current = _recorded_members(wh, campaign, as_of) if campaign else {}
    if campaign is None:
        notes.append(
            f"note: no evaluation of {model} at {to_iso(as_of)}: every member counts as entering "
            "(a campaign's first evaluation is a baseline and sends nothing by default)"
        )
    relation = build_shadow(settings, model, as_of, project)
    with connect(settings) as wh:
        try:
            shadow = _members_of(wh, relation, model)
        finally:
            if not keep:
                with wh.transaction():
                    wh.execute(f"drop table if exists {wh.relation(relation)}")
    log.info("shadow of %s at %s: %d members", model, to_iso(as_of), len(shadow))
    return CohortDiff(
        model=model,
        as_of=as_of,
        baseline_of=campaign,
        current=current,
        shadow=shadow,
        shadow_relation=relation if keep else f"{relation}, dropped",
        notes=notes,
    )
