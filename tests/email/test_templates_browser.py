"""Every shipped email template, rendered for a realistic member and opened in headless Chromium
the way a webmail client shows it: what a person sees, at desktop and phone widths, kept as
screenshots under tests/artifacts/emails/."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from email_jobs.render import render_parts
from email_jobs.template_columns import load_campaigns
from nudge.core.dbt_project import MANIFEST
from nudge.core.settings import Settings

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the test says why it skips (or fails, on CI)
    sync_playwright = None

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "emails"
WIDTHS = {"desktop": 1000, "phone": 375}

# A realistic member of each shipped campaign's cohort, and text the email must show.
MEMBERS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "not_activated_7d": (
        {
            "entity_id": "usr_7f3a",
            "email": "chloe.dubois@brightwave.example",
            "first_name": "Chloé",
            "last_name": "Dubois",
            "company_id": "co_bright",
            "signup_at": "2026-03-02T09:14:00",
            "days_since_signup": 8,
            "window_start": "2026-02-11T00:00:00",
            "window_end": "2026-03-11T00:00:00",
        },
        ["Chloé"],
    ),
    "too_many_4xx_7d": (
        {
            "entity_id": "usr_91bc",
            "email": "max@acme.example",
            "first_name": "Max",
            "last_name": "Müller",
            "company_id": "co_acme",
            "company_domain": "acme.example",
            "cc": "priya.raman@widgets-api.example",
            "calls_4xx": 4210,
            "top_failing_endpoints_json": json.dumps(
                [
                    {"verb": "GET", "endpoint": "/v1/widgets/{id}", "status": 404, "calls": 3100},
                    {"verb": "POST", "endpoint": "/v1/orders", "status": 400, "calls": 980},
                    {"verb": "DELETE", "endpoint": "/v1/widgets", "status": 405, "calls": 130},
                ]
            ),
            "window_start": "2026-03-04T00:00:00",
            "window_end": "2026-03-11T00:00:00",
        },
        ["4,210", "/v1/widgets/{id}", "priya.raman@widgets-api.example"],
    ),
    "api_misuse": (
        {
            "entity_id": "co_sec",
            "email": "security@hooli.example",
            "cc": "tom.becker@widgets-api.example",
            "recipient_role": "security_contact",
            "company_domain": "hooli.example",
            "plan": "enterprise",
            "trigger_kind": "spike",
            "refused_calls": 1834,
            "calls_401": 1610,
            "calls_403": 224,
            "api_calls": 5120,
            "baseline_refused_calls": 336,
            "baseline_days": 28,
            "top_users_json": json.dumps(
                [
                    {"user_id": "usr_a1", "email": "ci-bot@hooli.example", "calls": 1702},
                    {"user_id": "usr_b2", "email": None, "calls": 132},
                ]
            ),
            "window_start": "2026-03-10T00:00:00",
            "window_end": "2026-03-11T00:00:00",
        },
        ["1,834", "ci-bot@hooli.example", "usual 12 a day", "Review API keys"],
    ),
    "quota_80pct": (
        {
            "entity_id": "co_q",
            "email": None,
            "cc": "lucia.fernandez@widgets-api.example",
            "company_domain": "globex.example",
            "plan": "starter",
            "quota_calls_per_month": 15000,
            "quota_source": "plan",
            "calls_this_month": 12746,
            "quota_used_pct": 84,
            "calls_left": 2254,
            "month_start": "2026-03-01T00:00:00",
            "resets_at": "2026-04-01T00:00:00",
            "window_end": "2026-03-24T00:00:00",
            "contacts": [
                {"user_id": "u1", "email": "ana@globex.example", "first_name": "Ana"},
                {"user_id": "u2", "email": "joao@globex.example", "first_name": "João"},
            ],
        },
        ["Hi Ana and João", "84%", "2,254", "April 1, 2026"],
    ),
    "quota_100pct": (
        {
            "entity_id": "co_q",
            "email": None,
            "cc": None,
            "company_domain": "globex.example",
            "plan": "starter",
            "quota_calls_per_month": 15000,
            "quota_source": "metadata",
            "calls_this_month": 15561,
            "quota_used_pct": 103,
            "calls_over": 561,
            "month_start": "2026-03-01T00:00:00",
            "resets_at": "2026-04-01T00:00:00",
            "window_end": "2026-03-28T00:00:00",
            "contacts": [{"user_id": "u1", "email": "ana@globex.example", "first_name": None}],
        },
        ["Hi globex.example team", "reached this month", "561", "Upgrade your plan"],
    ),
}


def _require_browser() -> None:
    """Skip with the reason when Chromium or Playwright is missing; on CI that is a failure."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if sync_playwright is None:
        missing.append("the playwright Python package (pip install playwright)")
    if not missing:
        return
    reason = "browser test needs " + " and ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true: CI must run the browser tests")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def campaigns(dbt_manifest: None) -> dict[str, Any]:
    return {c.name: c for c in load_campaigns(json.loads(MANIFEST.read_text()))}


def test_every_shipped_campaign_has_a_realistic_member_here(campaigns) -> None:
    assert set(MEMBERS) == set(campaigns)
    for name, (row, _) in MEMBERS.items():
        assert set(campaigns[name].columns) <= set(row), name


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_template_looks_right_in_chromium(name: str, campaigns) -> None:
    _require_browser()
    campaign = campaigns[name]
    row, must_show = MEMBERS[name]
    subject, html, text = render_parts(campaign, row, Settings(_env_file=None))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.html").write_text(html, encoding="utf-8")
    (ARTIFACTS / f"{name}.txt").write_text(f"Subject: {subject}\n\n{text}", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="nudge-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": WIDTHS["desktop"], "height": 900},
        )
        # The email must not reach out for anything: no remote images, fonts or stylesheets.
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        try:
            page = context.new_page()
            page.set_content(html, wait_until="load")
            seen = page.inner_text("body")
            for snippet in must_show:
                assert snippet in seen, f"{name}: {snippet!r} not shown"
            assert "None" not in seen and "{{" not in seen, name
            unsubscribe = page.get_by_role("link", name="Unsubscribe", exact=False)
            assert unsubscribe.first.is_visible(), f"{name}: no visible unsubscribe link"
            href = unsubscribe.first.get_attribute("href") or ""
            assert "unsubscribe" in href and row["entity_id"] in href
            for label, width in WIDTHS.items():
                page.set_viewport_size({"width": width, "height": 900})
                # Nothing wider than the screen: no sideways scrolling on a phone.
                overflow = page.evaluate(
                    "() => document.documentElement.scrollWidth - window.innerWidth"
                )
                assert overflow <= 0, f"{name} at {width}px scrolls sideways by {overflow}px"
                shot = ARTIFACTS / f"{name}.{label}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 5_000
        finally:
            context.close()
    assert [u for u in requests if not u.startswith(("about:", "data:"))] == []
