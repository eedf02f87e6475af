"""What a template says about the CC must match who is really copied (issue 7, injection)."""

from __future__ import annotations

import json

import pytest

from email_jobs.campaigns import Campaign
from email_jobs.render import render_email
from nudge.core.settings import Settings

CAMPAIGN = Campaign(
    name="too_many_4xx_7d",
    cohort="cohort_too_many_4xx_7d",
    relation_name='"analytics"."cohort_too_many_4xx_7d"',
    entity="user",
    template="too_many_4xx_7d",
)


def row(cc: object) -> dict[str, object]:
    return {
        "entity_id": "u1", "email": "bob@acme.example", "cc": cc, "first_name": "Bob",
        "last_name": "Two", "company_id": "c1", "calls_4xx": 1000,
        "top_failing_endpoints_json": json.dumps(
            [{"verb": "GET", "endpoint": "/v1/x", "status": 404, "calls": 1000}]
        ),
    }  # fmt: skip


@pytest.mark.parametrize(
    "cc",
    [
        "se@vendor.example\r\nBcc: victim@evil.example",  # injected lines: not an address
        "<script>alert(1)</script>",
        "not an address",
    ],
)
def test_an_invalid_cc_is_neither_copied_nor_claimed_in_the_body(cc: str) -> None:
    email = render_email(CAMPAIGN, row(cc), Settings(_env_file=None))
    assert email.cc == ()
    for body in (email.text, email.html):
        assert "victim" not in body and "<script>" not in body
        assert "copied" not in body  # the "your solutions engineer is copied" line is left out


def test_the_body_names_only_the_valid_part_of_a_cc_list() -> None:
    email = render_email(
        CAMPAIGN, row("se@vendor.example; x@y@z; ops@vendor.example"), Settings(_env_file=None)
    )
    assert email.cc == ("se@vendor.example", "ops@vendor.example")
    assert "se@vendor.example, ops@vendor.example (your solutions engineer) is copied" in (
        email.text
    )
    assert "x@y@z" not in email.text + email.html
