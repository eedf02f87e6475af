"""Rendering the two seed templates, the sandbox's guarantees, and address checks."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from premailer import Premailer

from email_jobs.addresses import is_valid_address, normalize_address, split_addresses
from email_jobs.campaigns import Campaign
from email_jobs.render import (
    MAX_SUBJECT_CHARS,
    PREMAILER_OPTIONS,
    RenderError,
    TemplateError,
    check_template,
    inline_css,
    missing_columns,
    render_email,
    render_parts,
    template_variables,
)
from nudge.core.settings import Settings

NOT_ACTIVATED_COLUMNS = ("entity_id", "email", "first_name", "last_name", "company_id", "signup_at")
TOO_MANY_4XX_COLUMNS = (
    "entity_id", "email", "cc", "first_name", "last_name", "company_id", "calls_4xx",
    "top_failing_endpoints_json",
)  # fmt: skip
ENDPOINTS = [
    {"verb": "POST", "endpoint": "/v1/orders", "status": 400, "calls": 1812},
    {"verb": "GET", "endpoint": "/v1/widgets/{id}", "status": 404, "calls": 301},
    {"verb": "DELETE", "endpoint": "/v1/orders/{id}", "status": 405, "calls": 12},
]


def campaign(name: str, **kw: object) -> Campaign:
    return Campaign(
        name=name, cohort=f"cohort_{name}", relation_name=f'"analytics"."cohort_{name}"',
        entity="user", template=name, **kw,
    )  # fmt: skip


@pytest.fixture
def settings() -> Settings:
    return Settings(
        from_email="Acme API <hello@acme.example>",
        unsubscribe_url="https://acme.example/unsub?c={campaign}&e={entity}",
    )


def not_activated_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "entity_id": "cap-user-1", "email": "ada@cap-co-1.example", "first_name": "Ada",
        "last_name": "Lovelace", "company_id": "cap-co-1", "signup_at": "2026-01-02T09:00:00",
    }  # fmt: skip
    row.update(overrides)
    return row


def too_many_4xx_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "entity_id": "cap-user-2", "email": "bob@cap-co-1.example", "cc": "se-1@vendor.example",
        "first_name": "Bob", "last_name": "Two", "company_id": "cap-co-1", "calls_4xx": 2125,
        "top_failing_endpoints_json": json.dumps(ENDPOINTS),
    }  # fmt: skip
    row.update(overrides)
    return row


# --------------------------------------------------------------------------- not_activated_7d


def test_not_activated_greets_by_name_and_shows_a_first_call(settings: Settings) -> None:
    email = render_email(
        campaign("not_activated_7d"), not_activated_row(), settings, ledger_key="k-1"
    )
    assert email.to == ("ada@cap-co-1.example",)
    assert email.cc == () and email.bcc == ()
    assert email.from_addr == "Acme API <hello@acme.example>"
    assert email.subject.startswith("Ada, ")
    assert "\n" not in email.subject
    for body in (email.html, email.text):
        assert "Ada" in body
        assert "curl https://api.example.com/v1/widgets" in body
        assert "January 2, 2026" in body
    assert "https://acme.example/unsub?c=not_activated_7d&e=cap-user-1" in email.text
    assert 'href="https://acme.example/unsub?c=not_activated_7d&amp;e=cap-user-1"' in email.html
    assert email.headers == {
        "X-Nudge-Campaign": "not_activated_7d",
        "X-Nudge-Entity": "cap-user-1",
        "X-Nudge-Key": "k-1",
        "List-Unsubscribe": "<https://acme.example/unsub?c=not_activated_7d&e=cap-user-1>",
    }
    assert email.categories == ("not_activated_7d",)
    assert email.ledger_key == "k-1"


def test_css_is_inlined_and_media_queries_kept(settings: Settings) -> None:
    _, html, _ = render_parts(campaign("not_activated_7d"), not_activated_row(), settings)
    assert '<td class="content" style=' in html
    assert "@media only screen" in html  # cannot be inlined, stays for clients that read it


@pytest.mark.parametrize("template", ["not_activated_7d", "too_many_4xx_7d"])
def test_cached_css_inlining_matches_premailer(template: str, settings: Settings) -> None:
    row = {**not_activated_row(), **too_many_4xx_row()}
    camp = campaign(template)
    raw = render_parts(camp, row, settings, inline=False)[1]
    expected = Premailer(raw, **PREMAILER_OPTIONS).transform()
    assert inline_css(raw) == expected
    assert inline_css(raw) == expected  # and again, from the cache


def test_nullable_columns_never_print_none(settings: Settings) -> None:
    row = not_activated_row(first_name=None, last_name=None, company_id=None, signup_at=None)
    subject, html, text = render_parts(campaign("not_activated_7d"), row, settings)
    assert subject.startswith("Your first")
    assert "Hi there," in text
    assert "Ready for your first call?" in html
    for part in (subject, html, text):
        assert "None" not in part


def test_test_send_without_ledger_key_has_no_key_header(settings: Settings) -> None:
    email = render_email(campaign("not_activated_7d"), not_activated_row(), settings)
    assert "X-Nudge-Key" not in email.headers


# --------------------------------------------------------------------------- too_many_4xx_7d


def test_4xx_lists_failing_endpoints_and_mentions_the_cc(settings: Settings) -> None:
    email = render_email(campaign("too_many_4xx_7d"), too_many_4xx_row(), settings)
    assert email.subject == "2,125 of your Acme API requests failed in the last 7 days"
    assert email.cc == ("se-1@vendor.example",)
    assert "POST /v1/orders  ->  400  (1,812 calls)" in email.text
    assert "GET /v1/widgets/{id}  ->  404  (301 calls)" in email.text
    assert "se-1@vendor.example (your solutions engineer) is copied" in email.text
    # the HTML table: one row per endpoint, in the cohort's order
    positions = [email.html.index(e["endpoint"]) for e in ENDPOINTS]
    assert positions == sorted(positions)
    assert ">1,812</td>" in email.html and ">405</span>" in email.html
    assert "your solutions engineer, is copied" in email.html
    assert "405 Method Not Allowed" in email.text


def test_4xx_without_cc_or_endpoints(settings: Settings) -> None:
    row = too_many_4xx_row(
        cc=None, first_name=None, calls_4xx=None, top_failing_endpoints_json=None
    )
    email = render_email(campaign("too_many_4xx_7d"), row, settings)
    assert email.cc == ()
    assert "copied" not in email.text and "copied" not in email.html
    assert "Where they happen most" not in email.html
    assert email.subject == "Some of your Acme API requests are failing"
    assert "None" not in email.html + email.text


def test_json_column_already_parsed_by_the_driver(settings: Settings) -> None:
    # psycopg2 hands a json column over as a list already
    row = too_many_4xx_row(top_failing_endpoints_json=ENDPOINTS[:1])
    _, _, text = render_parts(campaign("too_many_4xx_7d"), row, settings)
    assert "POST /v1/orders  ->  400" in text and "/v1/widgets" not in text


def test_bad_json_column_names_the_column(settings: Settings) -> None:
    row = too_many_4xx_row(top_failing_endpoints_json="[{oops")
    with pytest.raises(RenderError, match="top_failing_endpoints_json is not valid JSON"):
        render_parts(campaign("too_many_4xx_7d"), row, settings)


def test_recipients_merge_campaign_and_row_cc_without_duplicates(settings: Settings) -> None:
    camp = campaign(
        "too_many_4xx_7d",
        cc=("team@acme.example", "SE-1@vendor.example"),
        bcc=("log@acme.example",),
    )
    row = too_many_4xx_row(
        cc="se-1@vendor.example; bob@cap-co-1.example, not an address",
        bcc="log@acme.example,audit@acme.example",
    )
    email = render_email(camp, row, settings)
    assert email.to == ("bob@cap-co-1.example",)
    assert email.cc == ("team@acme.example", "SE-1@vendor.example")
    assert email.bcc == ("log@acme.example", "audit@acme.example")


def test_no_valid_address_is_an_error(settings: Settings) -> None:
    with pytest.raises(RenderError, match="no valid email address"):
        render_email(campaign("not_activated_7d"), not_activated_row(email="  "), settings)


# --------------------------------------------------------------------------- sandbox and escaping


def test_missing_column_is_an_error_naming_the_variable(settings: Settings) -> None:
    row = not_activated_row()
    del row["first_name"]
    with pytest.raises(RenderError, match="'first_name' is undefined") as err:
        render_parts(campaign("not_activated_7d"), row, settings)
    assert "not_activated_7d/subject.txt, line 3" in str(err.value)


def test_values_are_data_never_template_code(settings: Settings) -> None:
    row = too_many_4xx_row(
        first_name="<script>alert(1)</script>",
        last_name="{{ 7*7 }}",
        top_failing_endpoints_json=json.dumps(
            [
                {
                    "verb": "GET",
                    "endpoint": "/v1/{{ 7*7 }}/{% if 1 %}x{% endif %}",
                    "status": 404,
                    "calls": 5,
                }
            ]
        ),
    )
    _, html, text = render_parts(campaign("too_many_4xx_7d"), row, settings)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "/v1/{{ 7*7 }}/{% if 1 %}x{% endif %}" in text
    assert "/v1/{{ 7*7 }}/{% if 1 %}x{% endif %}" in html
    assert "49" not in html + text


def test_line_breaks_in_names_never_reach_the_subject_or_headers(settings: Settings) -> None:
    row = not_activated_row(first_name="Ada\r\nBcc: victim@evil.example\x00", entity_id="u\r\n1")
    email = render_email(campaign("not_activated_7d"), row, settings)
    assert "\r" not in email.subject and "\n" not in email.subject and "\x00" not in email.subject
    assert email.subject.startswith("Ada Bcc: victim@evil.example, your first")
    assert all("\r" not in v and "\n" not in v for v in email.headers.values())
    assert "e=u%0D%0A1" in email.headers["List-Unsubscribe"]


def test_rtl_and_unicode_names_are_intact(settings: Settings) -> None:
    row = not_activated_row(first_name="مريم", last_name="Ωμέγα", email="maryam@cap-co-1.example")
    subject, html, text = render_parts(campaign("not_activated_7d"), row, settings)
    assert subject.startswith("مريم, ")
    assert '<span dir="auto">مريم</span>' in html
    assert "Hi مريم," in text
    row = not_activated_row(first_name="山田 太郎 👋")
    subject, html, _ = render_parts(campaign("not_activated_7d"), row, settings)
    assert "山田 太郎 👋" in subject and "山田 太郎 👋" in html


def test_unsubscribe_url_quotes_campaign_and_entity(settings: Settings) -> None:
    row = not_activated_row(entity_id="user/7 & co?")
    email = render_email(campaign("not_activated_7d"), row, settings)
    assert email.headers["List-Unsubscribe"] == (
        "<https://acme.example/unsub?c=not_activated_7d&e=user%2F7%20%26%20co%3F>"
    )


def test_long_subject_is_trimmed(settings: Settings) -> None:
    row = not_activated_row(first_name="Bartholomew " * 40)
    subject, _, _ = render_parts(campaign("not_activated_7d"), row, settings)
    assert len(subject) <= MAX_SUBJECT_CHARS and subject.endswith("…")


# --------------------------------------------------------------------------- validation helpers


def test_templates_use_only_their_cohort_columns() -> None:
    assert missing_columns("not_activated_7d", NOT_ACTIVATED_COLUMNS) == set()
    assert missing_columns("too_many_4xx_7d", TOO_MANY_4XX_COLUMNS) == set()
    assert "top_failing_endpoints" in template_variables("too_many_4xx_7d")
    assert missing_columns("too_many_4xx_7d", ("entity_id", "email")) >= {"cc", "calls_4xx"}


def test_check_template_names_folder_and_file(tmp_path: Path) -> None:
    check_template(campaign("not_activated_7d"))
    check_template(campaign("too_many_4xx_7d"))
    with pytest.raises(TemplateError, match=r"templates_here/nope does not exist"):
        check_template(campaign("nope"), templates_dir=tmp_path / "templates_here")
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "subject.txt").write_text("Hi", encoding="utf-8")
    (folder / "body.html").write_text("<p>Hi</p>", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"missing file .*half/body\.txt"):
        check_template(campaign("half"), templates_dir=tmp_path)
    (folder / "body.txt").write_text("line one\n{% if x %}\nnever closed\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"half/body\.txt, line 3"):
        check_template(campaign("half"), templates_dir=tmp_path)


def test_custom_template_folder_renders(tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "plan_upgrade"
    folder.mkdir()
    (folder / "subject.txt").write_text("Your {{ plan }} plan", encoding="utf-8")
    (folder / "body.html").write_text("<p>{{ plan }} for {{ entity_id }}</p>", encoding="utf-8")
    (folder / "body.txt").write_text("{{ plan }} via {{ campaign }}", encoding="utf-8")
    camp = campaign("plan_upgrade")
    subject, html, text = render_parts(
        camp, {"entity_id": "c1", "plan": "<pro>"}, settings, templates_dir=tmp_path
    )
    assert (subject, text) == ("Your <pro> plan", "<pro> via plan_upgrade\n")
    assert "&lt;pro&gt; for c1" in html
    assert template_variables("plan_upgrade", tmp_path) == {"plan", "entity_id", "campaign"}


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ada@example.com", "ada@example.com"),
        ("  Ada.Lovelace+nudge@Example.COM ", "Ada.Lovelace+nudge@example.com"),
        ("jose@bücher.example", "jose@xn--bcher-kva.example"),
        ("nudge@localhost", "nudge@localhost"),
        (None, None),
        ("", None),
        ("   ", None),
        ("no-at-sign", None),
        ("two@@example.com", None),
        ("a@b@example.com", None),
        ("has space@example.com", None),
        ("ada@example.com\r\nBcc: x@y.example", None),
        ("ada@exam\nple.com", None),
        (".ada@example.com", None),
        ("ada..l@example.com", None),
        ("ada@-example.com", None),
        ("ada@example", None),
        ("ada@10.0.0.1", None),
        ("ada@[10.0.0.1]", None),
        ("\u200bada@example.com", None),
        ("x" * 65 + "@example.com", None),
        ("a@" + ("b" * 64) + ".com", None),
        ("Ada <ada@example.com>", None),
        ("josé@example.com", None),
    ],
)
def test_normalize_address(raw: str | None, expected: str | None) -> None:
    assert normalize_address(raw) == expected
    assert is_valid_address(raw) is (expected is not None)


def test_split_addresses() -> None:
    assert split_addresses(None) == []
    assert split_addresses("a@x.example; b@x.example ,,c@x.example") == [
        "a@x.example", "b@x.example", "c@x.example",
    ]  # fmt: skip
    assert split_addresses(["a@x.example", None, " "]) == ["a@x.example"]


@given(st.text())
def test_no_control_character_ever_passes(s: str) -> None:
    normalized = normalize_address(s)
    if normalized is not None:
        assert not any(ord(c) < 32 or ord(c) == 127 for c in normalized)
        assert "\r" not in s.strip() and "\n" not in s.strip()
        assert normalize_address(normalized) == normalized  # idempotent


_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"


@given(
    local=st.text(alphabet=_ATEXT, min_size=1, max_size=30),
    label=st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=20),
    junk=st.sampled_from(["\r", "\n", "\r\n", "\x00", "\t", " "]),
    where=st.integers(min_value=0, max_value=60),
)
def test_valid_addresses_pass_and_any_line_break_fails(
    local: str, label: str, junk: str, where: int
) -> None:
    address = f"{local}@{label}.example"
    assert normalize_address(address) == address
    pos = min(where, len(address) - 1) or 1  # inside, not at the ends that strip() trims
    assert not is_valid_address(address[:pos] + junk + address[pos:])


# --------------------------------------------------------------------------- layout and quota


def quota_row(pct: int, calls: int) -> dict[str, object]:
    return {
        "entity_id": "co_q", "email": None, "cc": None, "company_domain": "globex.example",
        "plan": "starter", "quota_calls_per_month": 15000, "quota_source": "plan",
        "calls_this_month": calls, "quota_used_pct": pct, "month_start": "2026-03-01T00:00:00",
        "resets_at": "2026-04-01T00:00:00",
        "contacts": [{"email": "a@g.example", "first_name": "Ana"}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("pct", "calls", "subject", "shown"),
    [
        (84, 12746, "You've used 84% of your Acme API quota for March",
         ["used 84%", "Calls left", "2,254", "Compare plans"]),
        (103, 15561, "You've reached your Acme API quota for March",
         ["reached", "Calls over the quota", "561", "Upgrade your plan"]),
    ],
)  # fmt: skip
def test_both_quota_campaigns_share_one_template(
    pct: int, calls: int, subject: str, shown: list[str], settings: Settings
) -> None:
    """quota_80pct and quota_100pct name the folder `quota`; the usage decides what it says."""
    for name in ("quota_80pct", "quota_100pct"):
        camp = Campaign(name, f"cohort_{name}", "r", "company", "quota")
        got, html, text = render_parts(camp, quota_row(pct, calls), settings)
        assert got == subject
        for snippet in shown:
            assert snippet in html and snippet in text, snippet
    assert "calls_left" not in template_variables("quota")  # both cohorts provide what it reads


def test_the_layout_is_part_of_every_template(tmp_path: Path, settings: Settings) -> None:
    """What the layout reads is checked against the cohort's columns; what the template sets at
    its top level counts as provided in its blocks and in the layout."""
    (tmp_path / "_base.html").write_text(
        "<html><body>{% block content %}{% endblock %}<p>{{ plan }}</p>"
        "<p>{% block footer %}{{ email }}{% endblock %}</p></body></html>",
        encoding="utf-8",
    )
    folder = tmp_path / "upgrade"
    folder.mkdir()
    (folder / "subject.txt").write_text("Upgrade", encoding="utf-8")
    (folder / "body.txt").write_text("{{ unsubscribe_url }}", encoding="utf-8")
    (folder / "body.html").write_text(
        '{% extends "_base.html" %}{% set who = first_name or entity_id %}'
        "{% block content %}<h1>Hi {{ who }}</h1>{% endblock %}"
        "{% block footer %}{{ super() }} {{ company }}{% endblock %}",
        encoding="utf-8",
    )
    assert template_variables("upgrade", tmp_path) == {
        "first_name", "entity_id", "plan", "email", "company", "unsubscribe_url",
    }  # fmt: skip
    row = {"entity_id": "c1", "first_name": "Ada", "plan": "pro", "email": "a@x.example",
           "company": "Acme"}  # fmt: skip
    _, html, _ = render_parts(campaign("upgrade"), row, settings, templates_dir=tmp_path)
    assert "<h1>Hi Ada</h1>" in html and "<p>pro</p>" in html and "a@x.example Acme" in html
    (tmp_path / "_base.html").unlink()
    with pytest.raises(TemplateError, match=r"_base\.html does not exist"):
        check_template(campaign("upgrade"), templates_dir=tmp_path)


def test_a_shared_layout_is_never_a_campaign_template() -> None:
    with pytest.raises(TemplateError, match="shared layout"):
        check_template(Campaign("x", "cohort_x", "r", "user", "_base.html"))
    with pytest.raises(TemplateError, match=r"existing templates: .*quota") as exc:
        check_template(campaign("nope"))
    assert "_base" not in str(exc.value)
