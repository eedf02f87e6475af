"""Campaigns from a dbt manifest: what an analyst writes in a cohort's yml, and its mistakes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from email_jobs.campaigns import CampaignError
from email_jobs.template_columns import check_built_columns, load_campaigns
from nudge.core.settings import Settings
from nudge.core.warehouse import connect


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    for name, body in {
        "welcome": "Hi {{ first_name }}, {% for e in endpoints %}{{ e }}{% endfor %} "
        "{{ unsubscribe_url }} {{ campaign }} {{ entity_id }}",
        "plain": "Hello",
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "subject.txt").write_text("Subject for {{ entity_id }}")
        (root / name / "body.html").write_text(f"<p>{body}</p>")
        (root / name / "body.txt").write_text(body)
    return root


def model(
    name: str,
    nudge: Any,
    columns: tuple[str, ...] = ("entity_id", "email", "first_name", "endpoints_json"),
    *,
    top_level_meta: bool = False,
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "resource_type": "model",
        "name": name,
        "unique_id": f"model.nudge.{name}",
        "relation_name": f'"warehouse"."analytics"."{name}"',
        "patch_path": "nudge://models/cohorts/cohorts.yml",
        "original_file_path": f"models/cohorts/{name}.sql",
        "columns": {c: {"name": c} for c in columns},
        "config": {"meta": {}},
        "meta": {},
        "description": f"{name} description",
    }
    if nudge is not None:
        meta = node["meta"] if top_level_meta else node["config"]["meta"]
        meta["nudge"] = nudge
    return node


def manifest(*nodes: dict[str, Any]) -> dict[str, Any]:
    seed = {"resource_type": "seed", "name": "s", "unique_id": "seed.nudge.s", "config": {}}
    return {"nodes": {n["unique_id"]: n for n in (*nodes, seed)}}


GOOD = {
    "entity": "user",
    "campaigns": [
        {
            "name": "welcome_back",
            "template": "welcome",
            "cooldown_days": 14,
            "max_sends_per_evaluation": 50,
        }
    ],
}


def test_loads_campaigns_with_defaults_and_declared_values(templates):
    nodes = manifest(
        model(
            "cohort_b",
            {
                "entity": "company",
                "campaigns": [
                    {
                        "name": "plain",
                        "cc": "se@example.com",
                        "on_unknown": "resend",
                        "drip": [1, 2],
                    },
                ],
            },
        ),
        model("cohort_a", GOOD),
        model("dim_users", None),
    )
    first, second = load_campaigns(nodes, templates)
    assert (first.name, first.cohort, first.entity, first.template) == (
        "welcome_back",
        "cohort_a",
        "user",
        "welcome",
    )
    assert first.relation_name == '"warehouse"."analytics"."cohort_a"'
    assert (first.cooldown_days, first.max_sends_per_evaluation, first.baseline_first_run) == (
        14,
        50,
        True,
    )
    assert first.columns == ("entity_id", "email", "first_name", "endpoints_json")
    assert first.dbt_unique_id == "model.nudge.cohort_a"
    # Defaults: template = name, cooldown 30, limits from settings; unknown keys kept.
    assert (second.template, second.cooldown_days, second.max_sends_per_evaluation) == (
        "plain",
        30,
        None,
    )
    assert (second.entity, second.cc, second.on_unknown) == (
        "company",
        ("se@example.com",),
        "resend",
    )
    assert second.extra == {"drip": [1, 2]}
    assert second.description == "cohort_b description"


def test_top_level_meta_is_accepted(templates):
    (campaign,) = load_campaigns(manifest(model("cohort_a", GOOD, top_level_meta=True)), templates)
    assert campaign.name == "welcome_back"


def _bad(**changes: Any) -> dict[str, Any]:
    nudge = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if key == "entity":
            nudge["entity"] = value
        else:
            nudge["campaigns"][0][key] = value
    return nudge


@pytest.mark.parametrize(
    ("nudge", "columns", "message"),
    [
        (_bad(entity="account"), None, "meta.nudge.entity must be 'user' or 'company'"),
        (GOOD, ("email", "first_name", "endpoints_json"), "declare the column(s) entity_id"),
        (GOOD, ("entity_id", "first_name", "endpoints_json"), "declare the column(s) email"),
        (_bad(cooldown_days="30"), None, "cooldown_days must be a number, got '30'"),
        (_bad(cooldown_days=True), None, "cooldown_days must be a number"),
        (_bad(cooldown_days=-1), None, "cooldown_days must be >= 0"),
        (_bad(max_sends_per_evaluation=2.5), None, "max_sends_per_evaluation must be a whole"),
        (_bad(max_entry_share=2), None, "max_entry_share must be between 0 and 1"),
        (_bad(baseline_first_run="yes"), None, "baseline_first_run must be true or false"),
        (_bad(on_unknown="retry"), None, "on_unknown must be 'hold' or 'resend'"),
        (_bad(template="missing"), None, "template folder"),
        (_bad(name=""), None, "a campaign has no name"),
        ({"entity": "user", "campaigns": []}, None, "campaigns must be a non-empty list"),
        (GOOD, ("entity_id", "email", "endpoints_json"), "uses first_name, which the model"),
        (GOOD, ("entity_id", "email", "first_name"), "uses endpoints, which the model"),
    ],
)
def test_mistakes_name_the_model_and_what_is_wrong(templates, nudge, columns, message):
    node = model("cohort_a", nudge, columns) if columns else model("cohort_a", nudge)
    with pytest.raises(CampaignError) as err:
        load_campaigns(manifest(node), templates)
    assert "model 'cohort_a' (models/cohorts/cohorts.yml)" in str(err.value)
    assert message in str(err.value)


def test_an_incomplete_template_folder_names_the_missing_file(templates):
    (templates / "welcome" / "body.txt").unlink()
    with pytest.raises(CampaignError, match=r"missing file .*welcome/body\.txt"):
        load_campaigns(manifest(model("cohort_a", GOOD)), templates)


def test_campaign_names_are_unique_across_models(templates):
    with pytest.raises(CampaignError, match="'welcome_back' is already used by model 'cohort_a'"):
        load_campaigns(manifest(model("cohort_a", GOOD), model("cohort_b", GOOD)), templates)


def test_not_a_manifest():
    with pytest.raises(CampaignError, match="no 'nodes'"):
        load_campaigns({"metadata": {}})


# -- campaign switches (contract, "Campaign switches") ----------------------------------------


def with_enabled(value: Any) -> dict[str, Any]:
    nudge = copy.deepcopy(GOOD)
    nudge["campaigns"][0]["enabled"] = value
    return nudge


def test_enabled_defaults_to_true_and_false_turns_a_campaign_off(templates, monkeypatch):
    monkeypatch.delenv("NUDGE_ENABLED_CAMPAIGNS", raising=False)
    (on,) = load_campaigns(manifest(model("cohort_a", GOOD)), templates)
    (off,) = load_campaigns(manifest(model("cohort_a", with_enabled(False))), templates)
    assert (on.enabled, on.enabled_by, off.enabled, off.enabled_by) == (True, "yml", False, "yml")
    assert "enabled" not in off.extra


@pytest.mark.parametrize("value", ["false", "no", 0, None])
def test_a_non_bool_enabled_names_the_model_and_file(templates, value):
    with pytest.raises(CampaignError) as err:
        load_campaigns(manifest(model("cohort_a", with_enabled(value))), templates)
    msg = str(err.value)
    assert "model 'cohort_a' (models/cohorts/cohorts.yml)" in msg
    assert f"enabled must be true or false, got {value!r}" in msg


def test_the_operator_turns_a_disabled_campaign_on_without_editing_the_yml(
    templates, monkeypatch, tmp_path
):
    nodes = manifest(model("cohort_a", with_enabled(False)))
    monkeypatch.setenv("NUDGE_ENABLED_CAMPAIGNS", " welcome_back ")
    (campaign,) = load_campaigns(nodes, templates)
    assert (campaign.enabled, campaign.enabled_by) == (True, "NUDGE_ENABLED_CAMPAIGNS")
    # From a `.env` file in the working folder too, like every other setting.
    monkeypatch.delenv("NUDGE_ENABLED_CAMPAIGNS")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("NUDGE_ENABLED_CAMPAIGNS=welcome_back\n")
    assert load_campaigns(nodes, templates)[0].enabled
    # A typo does not silently leave the playbook off.
    with pytest.raises(CampaignError, match="NUDGE_ENABLED_CAMPAIGNS names unknown campaign"):
        load_campaigns(nodes, templates, enable=["welcome-back"])


# -- a yml without `columns:` (the contract's block as it stands) --------------------------------


def test_a_yml_without_columns_loads_and_is_checked_against_the_built_model(
    templates: Path, tmp_path: Path
) -> None:
    nudge = copy.deepcopy(GOOD)
    nudge["campaigns"][0]["cc"] = ["owner_email"]  # a column, taken on trust until evaluation
    (campaign,) = load_campaigns(manifest(model("cohort_a", nudge, ())), templates)
    assert (campaign.columns, campaign.cc_columns) == ((), ("owner_email",))

    settings = Settings(warehouse=f"duckdb:///{tmp_path}/w.duckdb", _env_file=None)
    with connect(settings) as wh:
        wh.execute("create schema analytics")
        wh.execute(
            "create table analytics.cohort_a (entity_id varchar, email varchar, "
            "owner_email varchar, endpoints_json varchar)"
        )
        with pytest.raises(CampaignError) as err:
            check_built_columns(wh, campaign, templates)
        assert str(err.value) == (
            "model 'cohort_a' (models/cohorts/cohorts.yml), campaign 'welcome_back': template "
            "'welcome' uses first_name, which the built model 'cohort_a' does not have among "
            "its columns (entity_id, email, owner_email, endpoints_json)"
        )
        wh.execute("alter table analytics.cohort_a drop column owner_email")
        with pytest.raises(CampaignError, match=r"has no column\(s\) owner_email "):
            check_built_columns(wh, campaign, templates)
        wh.execute("alter table analytics.cohort_a add column owner_email varchar")
        wh.execute("alter table analytics.cohort_a add column first_name varchar")
        check_built_columns(wh, campaign, templates)  # every variable found: no error
