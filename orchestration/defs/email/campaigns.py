"""Campaigns discovered from the dbt manifest (a cohort's yml `meta.nudge`), at load time."""

from __future__ import annotations

import json

from email_jobs.campaigns import Campaign
from email_jobs.template_columns import load_campaigns
from orchestration.defs.transform.project import nudge_dbt_project


def manifest_campaigns() -> list[Campaign]:
    manifest = json.loads(nudge_dbt_project.manifest_path.read_text())
    return load_campaigns(manifest)
