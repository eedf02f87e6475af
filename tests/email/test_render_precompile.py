"""CSS inlined once per template gives the same message as premailer run on each message."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from email_jobs.campaigns import Campaign
from email_jobs.css_precompile import Precompiled, normalized, precompile_source
from email_jobs.render import TEMPLATES_DIR, inline_css, render_parts
from nudge.core.settings import Settings

SETTINGS = Settings(_env_file=None)
ENDPOINTS = [
    {"verb": "GET", "endpoint": "/v1/widgets/{id}", "status": 404, "calls": 1000},
    {"verb": "POST", "endpoint": "/v1/orders", "status": 400, "calls": 12},
    {"verb": "PUT", "endpoint": "/v1/x", "status": 405, "calls": 3},
]
ROWS = {
    "too_many_4xx_7d": [
        {"entity_id": "u1", "email": "a@x.example", "first_name": "Ann", "cc": "se@v.example",
         "calls_4xx": 1234, "top_failing_endpoints_json": json.dumps(ENDPOINTS)},
        {"entity_id": "u2", "email": None, "first_name": None, "cc": None, "calls_4xx": None,
         "top_failing_endpoints_json": None},
        {"entity_id": "u3", "email": "z@x.example", "first_name": "Zoë 'Q' <b>&", "cc": None,
         "calls_4xx": 5, "top_failing_endpoints_json": json.dumps(ENDPOINTS[:1])},
    ],
    "not_activated_7d": [
        {"entity_id": "u1", "email": "a@x.example", "first_name": "Ann",
         "signup_at": "2026-01-02T03:04:05"},
        {"entity_id": "u2", "email": None, "first_name": "", "signup_at": None},
    ],
}  # fmt: skip


def campaign(template: str) -> Campaign:
    return Campaign(template, f"cohort_{template}", "r", "user", template)


@pytest.mark.parametrize(("template", "row"), [(t, r) for t, rows in ROWS.items() for r in rows])
def test_seed_templates_inline_once_exactly_as_per_message(template: str, row: dict) -> None:
    once = render_parts(campaign(template), row, SETTINGS)[1]
    per_message = inline_css(render_parts(campaign(template), row, SETTINGS, inline=False)[1])
    if "'" in str(row.get("first_name")):
        # Jinja writes &#39;, lxml writes ': the same document.
        assert normalized(once) == normalized(per_message)
    else:
        assert once == per_message
    assert 'style="' in once and "@media" in once


def test_the_seed_templates_are_precompiled() -> None:
    for template in ROWS:
        source = Path(f"email_jobs/templates/{template}/body.html").read_text()
        assert precompile_source(source, inline_css) is not None, template


@pytest.mark.parametrize(
    "body",
    [
        # A class from the data: which rules match depends on the member.
        "<html><head><style>.s404 {color: red}</style></head>"
        "<body><p class='s{{ code }}'>x</p></body></html>",
        # A sibling selector and a loop: the match depends on how many rows there are.
        "<html><head><style>tr + tr td {color: red}</style></head><body><table>"
        "{% for i in rows %}<tr><td>{{ i }}</td></tr>{% endfor %}</table></body></html>",
        # Branches that open different elements.
        "<html><head><style>.a p {color: red}</style></head><body>"
        "{% if x %}<div class='a'>{% else %}<div>{% endif %}<p>x</p></div></body></html>",
        # Output before the document.
        "{{ greeting }}<html><head><style>p {color: red}</style></head>"
        "<body><p>x</p></body></html>",
    ],
)
def test_templates_whose_css_depends_on_the_data_are_inlined_per_message(body: str) -> None:
    assert precompile_source(body, inline_css) is None


def test_a_difference_on_the_first_message_turns_precompiling_off(tmp_path, caplog) -> None:
    """The safety net: a template that passes the static rules but inlines differently."""
    import jinja2

    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "body.html").write_text(
        "<html><head><style>p {color: red}</style></head><body>{{ tail }}</body></html>"
    )
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tmp_path)), autoescape=False)
    template = env.get_template("t/body.html")

    def render(t, context, where):
        return t.render(context)

    pre = Precompiled()
    context = {"tail": "<p>from the data</p>"}  # markup from data: styled only per message
    with caplog.at_level(logging.WARNING):
        html = pre.render(env, template, context, render, inline_css, "here")
    assert html == inline_css(template.render(context))
    assert "inlining per message from now on" in caplog.text
    assert pre.render(env, template, context, render, inline_css, "here") == html


def test_every_shipped_template_is_precompiled_through_the_layout() -> None:
    """The campaign templates extend _base.html; flattened with it, all inline once."""
    folders = [p for p in TEMPLATES_DIR.iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        source = (folder / "body.html").read_text()
        assert source.startswith('{% extends "_base.html" %}'), folder.name
        assert precompile_source(source, inline_css) is not None, folder.name


QUOTA = {
    "entity_id": "co_q", "email": None, "cc": "se@v.example", "company_domain": "g.example",
    "plan": "starter", "quota_calls_per_month": 15000, "quota_source": "metadata",
    "month_start": "2026-03-01T00:00:00", "resets_at": "2026-04-01T00:00:00",
    "contacts": [{"email": "a@g.example", "first_name": "Zoë 'Q' <b>&"}],
}  # fmt: skip
MISUSE = {
    "entity_id": "co_s", "email": "sec@s.example", "cc": None, "recipient_role": "security_contact",
    "company_domain": "s.example", "plan": "pro", "trigger_kind": "spike", "refused_calls": 1834,
    "calls_401": 1610, "calls_403": 224, "api_calls": 5120, "baseline_refused_calls": 336,
    "baseline_days": 28, "window_end": "2026-03-11T00:00:00",
    "top_users_json": json.dumps([{"user_id": "u1", "email": None, "calls": 3}]),
}  # fmt: skip


@pytest.mark.parametrize(
    ("template", "row"),
    [
        ("quota", {**QUOTA, "calls_this_month": 12746, "quota_used_pct": 84}),
        ("quota", {**QUOTA, "calls_this_month": 15561, "quota_used_pct": 103}),
        ("api_misuse", MISUSE),
        ("api_misuse", {**MISUSE, "recipient_role": "solutions_engineer", "top_users_json": None}),
    ],
)
def test_layout_templates_inline_once_exactly_as_per_message(template: str, row: dict) -> None:
    once = render_parts(campaign(template), row, SETTINGS)[1]
    per_message = inline_css(render_parts(campaign(template), row, SETTINGS, inline=False)[1])
    assert normalized(once) == normalized(per_message)
    assert '<td class="footer" style=' in once and "@media" in once


def test_an_edited_layout_is_picked_up_on_the_next_message(tmp_path: Path) -> None:
    layout = tmp_path / "_base.html"
    layout.write_text(
        "<html><head><style>p {color: red}</style></head><body>"
        "{% block content %}{% endblock %}</body></html>"
    )
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "subject.txt").write_text("Hi")
    (folder / "body.txt").write_text("Hi")
    (folder / "body.html").write_text(
        '{% extends "_base.html" %}{% block content %}<p>{{ entity_id }}</p>{% endblock %}'
    )
    first = render_parts(campaign("t"), {"entity_id": "e1"}, SETTINGS, templates_dir=tmp_path)[1]
    assert '<p style="color:red">e1</p>' in first
    layout.write_text(layout.read_text().replace("red", "blue"))
    mtime = layout.stat().st_mtime + 10  # a later edit, whatever the clock's resolution
    os.utime(layout, (mtime, mtime))
    again = render_parts(campaign("t"), {"entity_id": "e1"}, SETTINGS, templates_dir=tmp_path)[1]
    assert '<p style="color:blue">e1</p>' in again


@pytest.mark.parametrize(
    "child",
    [
        # Nested blocks, and a block reading another through self: not flattened.
        '{% extends "_base.html" %}{% block content %}{% block inner %}x{% endblock %}'
        "{% endblock %}",
        '{% extends "_base.html" %}{% block content %}{{ self.title() }}{% endblock %}',
        # A top-level block set: its body is text that flattening would drop.
        '{% extends "_base.html" %}{% set note %}<p>x</p>{% endset %}'
        "{% block content %}{{ note }}{% endblock %}",
    ],
)
def test_children_flattening_cannot_reproduce_are_inlined_per_message(child: str) -> None:
    assert precompile_source(child, inline_css) is None
