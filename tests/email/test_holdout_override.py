"""NUDGE_HOLDOUT_SHARES: holdout shares over the yml's, checked as the yml key is."""

from __future__ import annotations

import json

import pytest

from email_jobs.campaigns import (
    HOLDOUT_SHARES_ENV,
    CampaignError,
    holdout_shares,
    read_campaigns,
)
from nudge.core.dbt_project import MANIFEST


def test_the_override_sets_the_named_campaigns_share(
    dbt_manifest: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = json.loads(MANIFEST.read_text())
    shipped = {c.name: c.holdout_share for c in read_campaigns(manifest)}
    monkeypatch.setenv(HOLDOUT_SHARES_ENV, "not_activated_7d=0.3")
    shares = {c.name: c.holdout_share for c in read_campaigns(manifest)}
    assert shares == {**shipped, "not_activated_7d": 0.3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not_activated_7d", "is not campaign=share"),
        ("not_activated_7d=lots", "is not campaign=share"),
        ("not_activated_7d=0.7", "between 0 and 0.5"),
        ("no_such_campaign=0.2", "unknown campaign(s) no_such_campaign"),
    ],
)
def test_a_wrong_override_names_the_variable_and_the_mistake(
    dbt_manifest: None, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setenv(HOLDOUT_SHARES_ENV, text)
    with pytest.raises(CampaignError, match=HOLDOUT_SHARES_ENV) as err:
        read_campaigns(json.loads(MANIFEST.read_text()))
    assert message in str(err.value)


def test_an_empty_override_changes_nothing() -> None:
    assert holdout_shares(" , ") == {}
