"""What a campaign's templates use, checked against its cohort's columns.

The contract's yml needs no `columns:` list. Where the yml declares columns, the templates are
checked against them when the campaigns load (`load_campaigns`); where it declares none, they
are checked at evaluation against the columns of the model dbt built (`check_built_columns`),
before anything of the campaign is recorded or sent. Both say which model lacks which
variable(s).

Above `campaigns` (the yml) and `render` (the templates), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from email_jobs import render
from email_jobs.campaigns import REQUIRED_COLUMNS, Campaign, CampaignError, read_campaigns
from nudge.core.warehouse import Warehouse


def load_campaigns(
    manifest: dict[str, Any],
    templates_dir: Path | None = None,
    *,
    enable: Iterable[str] | None = None,
) -> list[Campaign]:
    """The manifest's campaigns (`campaigns.read_campaigns`), each template folder complete and
    parseable, and, where the yml declares columns, its variables among them. Raises
    CampaignError naming the model, its yml and what is wrong."""
    campaigns = read_campaigns(manifest, enable=enable)
    for campaign in campaigns:
        check_templates(campaign, campaign.columns or None, templates_dir)
    return campaigns


def check_built_columns(
    wh: Warehouse, campaign: Campaign, templates_dir: Path | None = None
) -> None:
    """At evaluation, for a cohort whose yml declares no columns: raise CampaignError when the
    built model lacks entity_id, email, a cc/bcc column, or a variable a template uses."""
    if campaign.columns:
        return  # checked against the declared columns at load
    built = built_columns(wh, campaign)
    where = f"{campaign.declared_at or f'model {campaign.cohort!r}'}, campaign {campaign.name!r}"
    missing = [
        c
        for c in (*REQUIRED_COLUMNS, *campaign.cc_columns, *campaign.bcc_columns)
        if c not in built
    ]
    if missing:
        raise CampaignError(
            f"{where}: the built model {campaign.cohort!r} has no column(s) "
            f"{', '.join(missing)} (its columns: {', '.join(built)})"
        )
    lacks = f"the built model {campaign.cohort!r} does not have among its columns"
    check_templates(campaign, built, templates_dir, lacks=lacks)


def built_columns(wh: Warehouse, campaign: Campaign) -> tuple[str, ...]:
    """The cohort relation's columns, as the warehouse knows them (no rows read)."""
    relation = wh.relation(campaign.relation_name)
    try:
        cur = wh.execute(f"select * from {relation} where 1 = 0")
        names = tuple(str(d[0]) for d in cur.description)
        cur.fetchall()
    except Exception as exc:
        wh.rollback()  # Postgres: the failed statement aborted the transaction
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CampaignError(
            f"campaign {campaign.name!r}: cannot read cohort {campaign.cohort!r} at {relation} "
            f"({first}); has dbt built it?"
        ) from exc
    return names


def check_templates(
    campaign: Campaign,
    columns: tuple[str, ...] | None,
    templates_dir: Path | None = None,
    *,
    lacks: str = "the model does not declare among its columns",
) -> None:
    """Each template of the campaign (every drip step's) is a complete folder that parses, and,
    with `columns`, reads only variables those columns or Nudge provide."""
    where = f"{campaign.declared_at or f'model {campaign.cohort!r}'}, campaign {campaign.name!r}"
    provided = (columns or ()) + (("contacts",) if campaign.recipients == "users" else ())
    for template in [s.template for s in campaign.steps] or [campaign.template]:
        try:
            render.check_template(replace(campaign, template=template), templates_dir)
            missing = (
                render.missing_columns(template, provided, templates_dir)
                if columns is not None
                else set()
            )
        except render.TemplateError as exc:
            raise CampaignError(f"{where}: {exc}") from None
        if missing:
            raise CampaignError(
                f"{where}: template {template!r} uses {', '.join(sorted(missing))}, which "
                f"{lacks} ({', '.join(columns or ())})"
            )
