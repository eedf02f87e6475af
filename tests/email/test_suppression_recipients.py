"""Suppression covers every address a message reaches (contract "Suppression"): the contacts of
a company email, CC and BCC, static or from a column; checked at evaluation and again when a send
claims the row. Through the real evaluation and send loop, the outbox writing the messages."""

from __future__ import annotations

import email.message
import json
from pathlib import Path

import pytest
from test_drips_and_company import (  # the cohort tables, templates and evaluate-then-send
    COMPANY,
    day,
    evaluate_and_send,
    open_wh,  # noqa: F401 - a fixture
    set_table,
    templates,  # noqa: F401 - a fixture
)

from email_jobs.backends.outbox import OutboxBackend
from email_jobs.campaigns import Campaign
from email_jobs.evaluate import evaluate_campaign
from email_jobs.guards import GuardLimits
from email_jobs.ledger import ensure_schema
from email_jobs.send import send_campaign
from email_jobs.suppressions import suppression_address
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse

TEAM_COLS = ("entity_id", "email", "cc", "company_domain")
USER_COLS = ("entity_id", "email", "cc", "first_name")
# A user campaign CC'd to the row's solutions engineer (the `cc` column, like too_many_4xx_7d),
# with a static CC and a static BCC.
ERRORS = Campaign(
    name="errors",
    cohort="cohort_errors",
    relation_name='"wh"."analytics"."cohort_errors"',
    entity="user",
    template="errors",
    columns=USER_COLS,
    cc=("csm@vendor.example",),
    bcc=("audit@vendor.example",),
)


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """DuckDB unless a test asks for Postgres (`indirect` parametrization)."""
    kind = getattr(request, "param", "duckdb")
    url = (
        f"duckdb:///{tmp_path}/wh.duckdb"
        if kind == "duckdb"
        else request.getfixturevalue("postgres_database")  # tests/conftest.py
    )
    return Settings(
        warehouse=url, outbox_dir=tmp_path / "outbox", send_concurrency=1, _env_file=None
    )


@pytest.fixture
def errors_template(templates: Path) -> Path:  # noqa: F811
    (templates / "errors").mkdir()
    (templates / "errors" / "subject.txt").write_text("errors for {{ entity_id }}")
    (templates / "errors" / "body.html").write_text("<p>Hi {{ first_name }}; cc: {{ cc }}</p>")
    (templates / "errors" / "body.txt").write_text("Hi {{ first_name }}; cc: {{ cc }}")
    return templates


def team(wh: Warehouse, *users: tuple[str, str]) -> None:
    """dim_users: (user_id, email) of company c1."""
    set_table(
        wh,
        "dim_users",
        ("user_id", "company_id", "email", "first_name", "last_name"),
        [(u, "c1", e, u.title(), "X") for u, e in users],
    )


def suppress(open_wh, *addresses: str) -> None:  # noqa: F811
    """Rows as a sync or an unsubscribe leaves them (the table's original columns)."""
    with open_wh() as wh:
        ensure_schema(wh)
        with wh.transaction():
            for a in addresses:
                wh.execute(
                    "insert into nudge.suppressions (email, reason, source) values (?, ?, ?)",
                    [suppression_address(a), "test", "csv:suppressions/test.csv"],
                )


def ledger_row(open_wh, entity: str) -> dict:  # noqa: F811
    with open_wh() as wh:
        (row,) = wh.fetchdicts(
            "select state, reason, recipient, suppressed_recipients from nudge.send_ledger "
            "where entity_id = ? and step = 0",
            [entity],
        )
    drops = row.pop("suppressed_recipients")
    row["dropped"] = sorted((d["address"], d["role"]) for d in json.loads(drops)) if drops else []
    return row


def header(message: email.message.EmailMessage, name: str) -> str | None:
    value = message[name]
    return None if value is None else str(value)


def body(message: email.message.EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()


# -- company emails -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_suppressed_first_contact_is_dropped_and_the_others_are_mailed(
    open_wh,  # noqa: F811
    settings,
    templates,  # noqa: F811
):
    with open_wh() as wh:
        team(wh, ("u1", "ann@c1.example"), ("u2", "bob@c1.example"), ("u3", "cid@c1.example"))
    suppress(open_wh, "ANN@c1.example", "se@vendor.example")
    rows = [("c1", None, "se@vendor.example", "c1.example")]
    evaluate_and_send(open_wh, settings, templates, COMPANY, 0, "cohort_teams", TEAM_COLS, [])
    (message,) = evaluate_and_send(
        open_wh, settings, templates, COMPANY, 1, "cohort_teams", TEAM_COLS, rows
    )
    assert header(message, "To") == "bob@c1.example, cid@c1.example"
    assert header(message, "Cc") == "csm@vendor.example"  # the suppressed SE is not copied
    # The template's `contacts` name only the people mailed.
    assert "Hello c1.example: bob@c1.example, cid@c1.example" in body(message)
    assert ledger_row(open_wh, "c1") == {
        "state": "sent",
        "reason": None,
        "recipient": "bob@c1.example",
        "dropped": [("ann@c1.example", "to"), ("se@vendor.example", "cc")],
    }


def test_a_company_with_every_contact_suppressed_is_skipped(open_wh, settings, templates):  # noqa: F811
    with open_wh() as wh:
        team(wh, ("u1", "ann@c1.example"), ("u2", "bob@c1.example"))
    suppress(open_wh, "ann@c1.example", "bob@c1.example")
    rows = [("c1", None, None, "c1.example")]
    evaluate_and_send(open_wh, settings, templates, COMPANY, 0, "cohort_teams", TEAM_COLS, [])
    sent = evaluate_and_send(
        open_wh, settings, templates, COMPANY, 1, "cohort_teams", TEAM_COLS, rows
    )
    assert sent == []  # not even to the static CC: a message needs a To
    assert ledger_row(open_wh, "c1") == {
        "state": "skipped",
        "reason": "suppressed",
        "recipient": "ann@c1.example",
        "dropped": [("ann@c1.example", "to"), ("bob@c1.example", "to")],
    }


# -- CC and BCC ---------------------------------------------------------------------------------


def test_a_suppressed_cc_column_and_static_bcc_are_dropped_the_user_is_mailed(
    open_wh,  # noqa: F811
    settings,
    errors_template,
):
    suppress(open_wh, "se@vendor.example", "Audit@Vendor.example")
    rows = [
        ("u1", "ann@x.example", "se@vendor.example; other-se@vendor.example", "Ann"),
        ("u2", "bob@x.example", "se@vendor.example", "Bob"),
    ]
    evaluate_and_send(open_wh, settings, errors_template, ERRORS, 0, "cohort_errors", USER_COLS, [])
    messages = evaluate_and_send(
        open_wh, settings, errors_template, ERRORS, 1, "cohort_errors", USER_COLS, rows
    )
    by_entity = {str(m["X-Nudge-Entity"]): m for m in messages}
    ann, bob = by_entity["u1"], by_entity["u2"]
    assert header(ann, "To") == "ann@x.example"
    assert header(ann, "Cc") == "csm@vendor.example, other-se@vendor.example"
    assert header(ann, "Bcc") is None  # the only BCC is suppressed
    # The template's `cc` names only who is really copied from the column.
    assert body(ann).strip() == "Hi Ann; cc: other-se@vendor.example"
    assert header(bob, "Cc") == "csm@vendor.example"
    assert body(bob).strip() == "Hi Bob; cc: None"
    assert ledger_row(open_wh, "u1")["dropped"] == [
        ("audit@vendor.example", "bcc"),
        ("se@vendor.example", "cc"),
    ]
    assert ledger_row(open_wh, "u2")["state"] == "sent"


# -- suppressed between the evaluation and the send ---------------------------------------------


def test_an_address_suppressed_after_the_evaluation_is_dropped_at_the_send(
    open_wh,  # noqa: F811
    settings,
    templates,  # noqa: F811
    errors_template,
):
    """Suppressions added after the evaluation recorded the rows: the send leaves those
    addresses out of the written messages, records it, and skips a row with no To left."""
    with open_wh() as wh:
        team(wh, ("u1", "ann@c1.example"), ("u2", "bob@c1.example"))
        set_table(wh, "cohort_teams", TEAM_COLS, [])
        evaluate_campaign(wh, COMPANY, day(0), GuardLimits.from_settings(settings), "r0")
        set_table(wh, "cohort_teams", TEAM_COLS, [("c1", None, "se@vendor.example", "c1")])
        evaluate_campaign(wh, COMPANY, day(1), GuardLimits.from_settings(settings), "r1")
        set_table(wh, "cohort_errors", USER_COLS, [])
        evaluate_campaign(wh, ERRORS, day(0), GuardLimits.from_settings(settings), "r0")
        set_table(wh, "cohort_errors", USER_COLS, [("gone", "gone@x.example", None, "G")])
        evaluate_campaign(wh, ERRORS, day(1), GuardLimits.from_settings(settings), "r1")
        pending = wh.fetchall("select state, suppressed_recipients from nudge.send_ledger")
    assert pending == [("pending", None), ("pending", None)]
    suppress(open_wh, "bob@c1.example", "se@vendor.example", "gone@x.example")

    def render(c, row, s, **kw):
        from email_jobs.render import render_email

        return render_email(c, row, s, templates_dir=errors_template, **kw)

    outbox = OutboxBackend(settings.outbox_dir)
    team_report = send_campaign(open_wh, COMPANY, outbox, settings, "s1", render=render)
    errors_report = send_campaign(open_wh, ERRORS, outbox, settings, "s2", render=render)
    assert (team_report.sent, team_report.suppressed) == (1, 0)
    assert (errors_report.sent, errors_report.suppressed) == (0, 1)
    (path,) = settings.outbox_dir.glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert header(message, "To") == "ann@c1.example"
    assert header(message, "Cc") == "csm@vendor.example"
    assert "bob@c1.example" not in path.read_text()
    assert ledger_row(open_wh, "c1")["dropped"] == [
        ("bob@c1.example", "to"),
        ("se@vendor.example", "cc"),
    ]
    assert ledger_row(open_wh, "gone") == {
        "state": "skipped",
        "reason": "suppressed",
        "recipient": "gone@x.example",
        "dropped": [("gone@x.example", "to")],
    }


def test_a_drip_step_suppressed_before_its_send_is_skipped_at_the_claim(
    open_wh,  # noqa: F811
    settings,
    templates,  # noqa: F811
):
    """A drip step recorded while its member was mailable, suppressed before its send."""
    from test_drips_and_company import DRIP, drip_members

    cols = ("entity_id", "email", "first_name")
    evaluate_and_send(open_wh, settings, templates, DRIP, 0, "cohort_drip", cols, [])
    first = evaluate_and_send(
        open_wh, settings, templates, DRIP, 1, "cohort_drip", cols, drip_members("ann")
    )
    assert len(first) == 1
    with open_wh() as wh:
        set_table(wh, "cohort_drip", cols, drip_members("ann"))
        evaluate_campaign(
            wh, DRIP, day(4), GuardLimits.from_settings(settings), "r4"
        )  # step 1 due: pending
    suppress(open_wh, "ann@example.com")
    sent = evaluate_and_send(
        open_wh, settings, templates, DRIP, 4, "cohort_drip", cols, drip_members("ann")
    )
    assert sent == []
    with open_wh() as wh:
        steps = wh.fetchall("select step, state, reason from nudge.send_ledger order by step")
    assert steps == [(0, "sent", None), (1, "skipped", "suppressed")]
