"""Campaigns discovered from the dbt manifest (a cohort's yml `meta.nudge`), at load time."""

from __future__ import annotations

import json

from email_jobs.campaigns import Campaign
from email_jobs.template_columns import load_campaigns
from nudge.core.dbt_project import DBT_PROJECT


def manifest_campaigns() -> list[Campaign]:
    manifest = json.loads(DBT_PROJECT.manifest_path.read_text())
    return load_campaigns(manifest)
