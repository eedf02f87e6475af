"""Reading the settings never writes the environment; dbt's variables are handed over explicitly."""

from __future__ import annotations

import os

import pytest

from nudge.core.settings import dbt_env, load_settings
from orchestration.defs.shared.resources import NudgeResource


def test_loading_settings_leaves_the_environment_as_it_was(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(os.path.dirname(__file__))  # no .env here
    monkeypatch.setenv("NUDGE_WAREHOUSE", "postgresql://nudge@db.example:5433/wh")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in [k for k in os.environ if k.startswith("NUDGE_DBT_")]:
        monkeypatch.delenv(name)
    before = dict(os.environ)
    settings = load_settings()
    assert NudgeResource().settings() == settings
    assert dict(os.environ) == before
    # What a step that runs dbt hands it (orchestration.defs.transform.assets).
    assert dbt_env(settings) == {
        "NUDGE_DBT_TARGET": "postgres",
        "NUDGE_DBT_PG_HOST": "db.example",
        "NUDGE_DBT_PG_PORT": "5433",
        "NUDGE_DBT_PG_USER": "nudge",
        "NUDGE_DBT_PG_PASSWORD": "",
        "NUDGE_DBT_PG_DATABASE": "wh",
    }
