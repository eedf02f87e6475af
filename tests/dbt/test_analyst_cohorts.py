"""What an analyst writes in a cohort's yml: the keys this issue adds (steps, recipients, CC/BCC
columns), every load-time mistake with a message naming the model and what is wrong, and the
shipped cohorts as the real dbt manifest declares them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from email_jobs.campaigns import CampaignError, Step
from email_jobs.render import TEMPLATES_DIR, render_email, render_parts
from email_jobs.template_columns import load_campaigns
from nudge.core.dbt_project import MANIFEST
from nudge.core.settings import Settings

WHERE = "model 'cohort_a' (models/cohorts/cohorts.yml)"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    for name, body in {
        "hello": "Hi {{ first_name }}",
        "later": "Still there, {{ first_name }}? {{ last_seen }}",
        "team": "Team {{ company_domain }}: {% for c in contacts %}{{ c.first_name }}{% endfor %}",
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "subject.txt").write_text("For {{ entity_id }}")
        (root / name / "body.html").write_text(f"<p>{body}</p>")
        (root / name / "body.txt").write_text(body)
    return root


def node(name: str, nudge: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    return {
        "resource_type": "model",
        "name": name,
        "unique_id": f"model.nudge.{name}",
        "relation_name": f'"wh"."analytics"."{name}"',
        "patch_path": "nudge://models/cohorts/cohorts.yml",
        "columns": {c: {"name": c} for c in columns},
        "config": {"meta": {"nudge": nudge} if nudge is not None else {}},
    }


USER_COLUMNS = ("entity_id", "email", "first_name", "last_seen", "owner_email")
COMPANY_COLUMNS = ("entity_id", "email", "company_domain", "se_email")
DRIP = {
    "entity": "user",
    "campaigns": [
        {
            "name": "come_back",
            "steps": [
                {"template": "hello", "delay_days": 0},
                {"template": "later", "delay_days": 3},
            ],
            "cc": ["owner_email", "team@vendor.example"],
            "bcc": "audit@vendor.example",
            "unsubscribe_group_id": 42,
        }
    ],
}
TEAM = {
    "entity": "company",
    "recipients": "users",
    "campaigns": [{"name": "team", "template": "team", "cc": "se_email"}],
}


def manifest(*nodes: dict[str, Any], with_users: bool = True) -> dict[str, Any]:
    all_nodes = list(nodes)
    if with_users:
        all_nodes.append(node("dim_users", None, ("user_id", "company_id", "email")))
    return {"nodes": {n["unique_id"]: n for n in all_nodes}}


def load(
    nudge: Any, columns: tuple[str, ...] = USER_COLUMNS, templates: Path | None = None, **kw: Any
):
    return load_campaigns(manifest(node("cohort_a", nudge, columns), **kw), templates)


def test_drip_cc_columns_and_unsubscribe_group_load(templates: Path) -> None:
    (c,) = load(DRIP, templates=templates)
    assert c.steps == (Step("hello", 0), Step("later", 3))
    assert c.template == "hello"  # step 0 is the entry email
    assert (c.cc, c.cc_columns) == (("team@vendor.example",), ("owner_email",))
    assert (c.bcc, c.bcc_columns) == (("audit@vendor.example",), ())
    assert c.unsubscribe_group_id == 42
    assert c.recipients == "column" and c.extra == {}


def test_company_cohort_mailing_its_users(templates: Path) -> None:
    (c,) = load(TEAM, COMPANY_COLUMNS, templates)
    assert (c.entity, c.recipients, c.cc_columns) == ("company", "users", ("se_email",))
    assert c.contacts_relation == '"wh"."analytics"."dim_users"'
    # `contacts` is provided to its templates: a company cohort need not declare it.
    row = {
        "entity_id": "c1",
        "email": None,
        "company_domain": "c1.example",
        "se_email": "se@vendor.example",
        "contacts": [
            {"email": "b@c1.example", "first_name": "Bo"},
            {"email": "a@c1.example", "first_name": "Al"},
            {"email": "B@C1.example", "first_name": "Bo again"},
        ],
    }
    message = render_email(c, row, Settings(_env_file=None), templates_dir=templates)
    assert message.to == ("b@c1.example", "a@c1.example")  # one address once, whatever its case
    assert message.cc == ("se@vendor.example",)
    assert "Team c1.example: BoAlBo again" in message.text


def _changed(base: dict[str, Any], **campaign_keys: Any) -> dict[str, Any]:
    nudge = copy.deepcopy(base)
    for key, value in campaign_keys.items():
        if value is None:
            nudge["campaigns"][0].pop(key, None)
        else:
            nudge["campaigns"][0][key] = value
    return nudge


def _steps(*steps: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"template": t, "delay_days": d} for t, d in steps]


@pytest.mark.parametrize(
    ("nudge", "columns", "message"),
    [
        # The three the issue names: entity id or email column missing, a template variable the
        # model does not provide, an unknown template (naming the templates that exist).
        (DRIP, ("email", "first_name", "last_seen", "owner_email"), "column(s) entity_id"),
        (DRIP, ("entity_id", "first_name", "last_seen", "owner_email"), "column(s) email"),
        (DRIP, ("entity_id", "email", "first_name", "owner_email"), "uses last_seen, which the"),
        (
            _changed(DRIP, steps=_steps(("hello", 0), ("nope", 3))),
            None,
            "template 'nope'; expected subject.txt, body.html, body.txt in it; existing "
            "templates: hello, later, team",
        ),
        # Steps.
        (_changed(DRIP, steps=[]), None, "steps must be a non-empty list"),
        (_changed(DRIP, steps=_steps(("hello", 1))), None, "steps[0]: the first step is sent"),
        (
            _changed(DRIP, steps=_steps(("hello", 0), ("later", 3), ("later", 3))),
            None,
            "steps[2]: delay_days 3 must be greater than the previous step's 3",
        ),
        (_changed(DRIP, steps=[{"template": "hello"}]), None, "steps[0]: delay_days is missing"),
        (
            _changed(DRIP, steps=[{"template": "hello", "delay_days": 0, "wait": 1}]),
            None,
            "steps[0]: unknown key(s) wait",
        ),
        (
            _changed(DRIP, steps=_steps(("hello", 0), ("later", "3"))),
            None,
            "delay_days must be a number, got '3'",
        ),
        (_changed(DRIP, template="later"), None, "differs from steps[0].template 'hello'"),
        # CC/BCC: an address or a declared column.
        (_changed(DRIP, cc=["ownr_email"]), None, "cc entry 'ownr_email' is neither an address"),
        (
            _changed(DRIP, bcc="audit@@vendor"),
            None,
            "bcc address 'audit@@vendor' is not a valid address",
        ),
        (_changed(DRIP, cc=[3]), None, "cc must be an address, a column name, or a list"),
        # Recipients.
        (_changed(DRIP, recipients="users"), None, "recipients: users is for company cohorts"),
        (_changed(DRIP, recipients="everyone"), None, "recipients must be 'column'"),
        (_changed(DRIP, unsubscribe_group_id="12"), None, "unsubscribe_group_id must be a whole"),
    ],
)
def test_mistakes_fail_at_load_naming_model_and_problem(
    templates: Path, nudge: dict[str, Any], columns: tuple[str, ...] | None, message: str
) -> None:
    with pytest.raises(CampaignError) as err:
        load(nudge, columns or USER_COLUMNS, templates)
    assert WHERE in str(err.value)
    assert message in str(err.value)


def test_company_template_variable_the_model_lacks(templates: Path) -> None:
    with pytest.raises(CampaignError, match="uses company_domain, which the model"):
        load(TEAM, ("entity_id", "email", "se_email"), templates)


def test_recipients_users_needs_dim_users(templates: Path) -> None:
    with pytest.raises(CampaignError, match="reads the company's users from the model 'dim_users'"):
        load(TEAM, COMPANY_COLUMNS, templates, with_users=False)


# -- the shipped cohorts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(dbt_manifest: None) -> dict[str, Any]:
    return {c.name: c for c in load_campaigns(json.loads(MANIFEST.read_text()))}


def test_only_the_seed_campaigns_ship_enabled(monkeypatch) -> None:
    monkeypatch.delenv("NUDGE_ENABLED_CAMPAIGNS", raising=False)
    campaigns = load_campaigns(json.loads(MANIFEST.read_text()))
    assert {c.name: c.enabled for c in campaigns} == {
        "not_activated_7d": True,
        "too_many_4xx_7d": True,
        "api_misuse": False,
        "quota_80pct": False,
        "quota_100pct": False,
    }


def test_the_two_playbooks_ship_as_company_cohorts(shipped) -> None:
    assert {"api_misuse", "quota_80pct", "quota_100pct"} <= set(shipped)
    misuse, q80, q100 = shipped["api_misuse"], shipped["quota_80pct"], shipped["quota_100pct"]
    assert (misuse.cohort, misuse.entity, misuse.recipients) == (
        "cohort_api_misuse",
        "company",
        "column",
    )
    for q, cohort in ((q80, "cohort_quota_80pct"), (q100, "cohort_quota_100pct")):
        assert (q.cohort, q.entity, q.recipients) == (cohort, "company", "users")
        assert q.contacts_relation.endswith('"dim_users"')
    # The demo's data must not mail hundreds: every playbook has its own, small limit.
    assert all(
        c.max_sends_per_evaluation and c.max_sends_per_evaluation <= 50 for c in (misuse, q80, q100)
    )


def test_every_shipped_template_renders_for_its_cohort_columns(shipped) -> None:
    """Every template folder is used by a shipped campaign and renders from a row holding just
    its cohort's columns (text values; `_json` columns as JSON)."""
    used = {s.template for c in shipped.values() for s in c.steps} | {
        c.template for c in shipped.values()
    }
    assert used == {p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir()}
    settings = Settings(_env_file=None)
    for c in shipped.values():
        row: dict[str, Any] = {col: None for col in c.columns}
        row.update(entity_id="e1", email="someone@example.com")
        row.update({col: "[]" for col in c.columns if col.endswith("_json")})
        if c.recipients == "users":
            row["contacts"] = [{"email": "a@example.com", "first_name": "Ada"}]
        subject, html, text = render_parts(c, row, settings)
        assert subject and "None" not in subject, c.name
        assert "unsubscribe" in text.lower() and "None" not in text, (c.name, text)
        assert "<html" in html, c.name
