"""`nudge preview` and `nudge test-send`: a member's email, rendered from the cohort row."""

from __future__ import annotations

import io
import json
import re
import tempfile
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Any

from dagster_dbt import DbtCliResource

from email_jobs.campaigns import Campaign
from email_jobs.message import DeliveryResult
from nudge.core.dbt_project import DBT_PROJECT, dbt_environment, dbt_executable, dbt_invocation_env
from nudge.core.evaluation_lock import evaluation_lock, forget_builds, record_builds
from nudge.core.instant import parse_as_of
from nudge.core.settings import ConfigError, Settings
from nudge.core.warehouse import connect, connect_state, writer_lock


def _build_cohort(settings: Settings, campaign: Campaign, as_of: str) -> None:
    """Rebuild just the cohort model at another instant (its marts stay as they are).

    It rewrites the live cohort table, so it takes the evaluation lock (an evaluation under way
    keeps its own instant's table) and records the instant it built, which a later evaluation of
    another instant then refuses (nudge.core.evaluation_lock)."""
    end = parse_as_of(as_of)
    dbt = DbtCliResource(project_dir=DBT_PROJECT, dbt_executable=dbt_executable())
    with evaluation_lock(settings):
        with connect_state(settings) as state:  # closed before dbt opens the (DuckDB) file
            forget_builds(state, [campaign.cohort])
        with tempfile.TemporaryDirectory(prefix="nudge-preview-") as tmp:
            # dagster-dbt echoes dbt's log lines on stdout, where the preview's paths go.
            with (
                writer_lock(settings),
                dbt_environment(dbt_invocation_env(settings, end)),
                redirect_stdout(io.StringIO()) as out,
            ):
                invocation = dbt.cli(
                    ["run", "--select", campaign.cohort],
                    target_path=Path(tmp) / "target",
                    raise_on_error=False,
                ).wait()
        if not invocation.is_successful():
            raise RuntimeError(f"dbt run of {campaign.cohort} failed:\n{out.getvalue()[-2000:]}")
        with connect_state(settings) as state:
            record_builds(state, [campaign.cohort], end, "nudge-preview")


def member_row(settings: Settings, campaign: Campaign, entity: str | None) -> dict[str, Any]:
    with connect(settings) as wh:
        rel = wh.relation(campaign.relation_name)
        schema, table = (p.strip('"') for p in rel.split(".")[-2:])
        if not wh.table_exists(schema, table):
            raise ConfigError(
                f"cohort {campaign.cohort} has not been built yet; run `nudge run` first"
            )
        if entity is None:
            rows = wh.fetchdicts(f"select * from {rel} order by entity_id limit 1")
        else:
            rows = wh.fetchdicts(f"select * from {rel} where entity_id = ?", [entity])
        if rows:
            return rows[0]
    if entity is None:
        raise ConfigError(f"no member in {campaign.cohort}; try another --entity or --as-of")
    with connect_state(settings) as state:
        if state.table_exists("nudge", "send_ledger"):
            # Not a member now: fall back to the row as it was when the entity last entered.
            stored = state.fetchone(
                "select payload from nudge.send_ledger where campaign = ? and entity_id = ? "
                "order by entry_as_of desc limit 1",
                [campaign.name, entity],
            )
            if stored:
                return json.loads(stored[0])
    raise ConfigError(
        f"entity {entity!r} is not a member of {campaign.cohort}; try another --entity or --as-of"
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100] or "_"


def preview(
    settings: Settings, campaign: Campaign, entity: str, as_of: str | None, out_dir: Path
) -> list[Path]:
    from email_jobs.render import render_parts

    if as_of:
        _build_cohort(settings, campaign, as_of)
    row = member_row(settings, campaign, entity)
    subject, html, text = render_parts(campaign, row, settings)
    folder = out_dir / campaign.name
    folder.mkdir(parents=True, exist_ok=True)
    html_path, text_path = folder / f"{_safe(entity)}.html", folder / f"{_safe(entity)}.txt"
    html_path.write_text(html, encoding="utf-8")
    text_path.write_text(f"Subject: {subject}\n\n{text}", encoding="utf-8")
    return [html_path, text_path]


def test_send(
    settings: Settings, campaign: Campaign, to: str, entity: str | None
) -> DeliveryResult:
    from email_jobs.backends import make_backend
    from email_jobs.render import render_email

    row = dict(member_row(settings, campaign, entity))
    row.update(email=to, cc=None, bcc=None)  # a test goes to the tester only
    from email_jobs.unsubscribe import check_unsubscribe_ready

    check_unsubscribe_ready(
        settings, settings.email_backend, [(campaign.name, campaign.unsubscribe_group_id)]
    )
    email = render_email(replace(campaign, cc=(), bcc=()), row, settings, ledger_key="")
    backend = make_backend(settings)
    try:
        return backend.send(email)
    finally:
        backend.close()
