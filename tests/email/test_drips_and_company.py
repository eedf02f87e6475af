"""Drip sequences and company cohorts through the real evaluation and send loop, on DuckDB and
Postgres.

The cohort tables are written as dbt would leave them; evaluations run at chosen instants; the
send loop delivers to the outbox. What is checked is what recipients would see: which emails, to
whom, with which template.
"""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from email_jobs.backends.outbox import OutboxBackend
from email_jobs.campaigns import Campaign, Step
from email_jobs.drips import step_campaign
from email_jobs.evaluate import evaluate_campaign
from email_jobs.guards import GuardLimits
from email_jobs.send import send_campaign
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect
from nudge.ingest.schema import DDL as RAW_DDL

D0 = datetime(2026, 3, 1)
DRIP = Campaign(
    name="onboarding",
    cohort="cohort_drip",
    relation_name='"wh"."analytics"."cohort_drip"',
    entity="user",
    template="d0",
    columns=("entity_id", "email", "first_name"),
    steps=(Step("d0", 0), Step("d3", 3), Step("d7", 7)),
)
COMPANY = Campaign(
    name="team_notice",
    cohort="cohort_teams",
    relation_name='"wh"."analytics"."cohort_teams"',
    entity="company",
    template="team",
    columns=("entity_id", "email", "cc", "company_domain"),
    recipients="users",
    contacts_relation='"wh"."analytics"."dim_users"',
    cc=("csm@vendor.example",),
)


def day(n: float) -> datetime:
    return D0 + timedelta(days=n)


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    bodies = {
        "d0": "Welcome {{ first_name }}",
        "d3": "Day three, {{ first_name }}",
        "d7": "Day seven, {{ first_name }}",
        "team": "Hello {{ company_domain }}: {{ contacts | map(attribute='email') | join(', ') }}",
    }
    for name, body in bodies.items():
        (root / name).mkdir(parents=True)
        (root / name / "subject.txt").write_text(f"{name} for {{{{ entity_id }}}}")
        (root / name / "body.html").write_text(f"<html><body><p>{body}</p></body></html>")
        (root / name / "body.txt").write_text(body)
    return root


@pytest.fixture
def settings(warehouse_url: str, tmp_path: Path) -> Settings:
    return Settings(
        warehouse=warehouse_url,
        outbox_dir=tmp_path / "outbox",
        send_concurrency=1,
        _env_file=None,
    )


@pytest.fixture
def open_wh(settings: Settings):
    @contextmanager
    def _open() -> Iterator[Warehouse]:
        with connect(settings) as wh:
            yield wh

    with _open() as wh:  # a steady stream of events, so the freshness guard lets evaluations be
        with wh.transaction():
            for stmt in RAW_DDL:
                wh.execute(stmt)
            wh.execute("create schema if not exists analytics")
        times = [D0 - timedelta(days=5) + timedelta(hours=6 * i) for i in range(4 * 40)]
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(times))
        with wh.transaction():
            wh.execute(
                "insert into raw.events (event_key, request_time, user_id, source_file, "
                f"source_line, ingested_at) values {values}",
                [v for i, t in enumerate(times) for v in (uuid.uuid4().hex, t, "bg", "f", i, t)],
            )
    return _open


def set_table(wh: Warehouse, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    with wh.transaction():
        wh.execute(
            f"create table if not exists analytics.{table} "
            f"({', '.join(f'{c} varchar' for c in columns)})"
        )
        wh.execute(f"delete from analytics.{table}")
        if rows:
            wh.execute(
                f"insert into analytics.{table} values "
                + ", ".join([f"({', '.join('?' * len(columns))})"] * len(rows)),
                [v for row in rows for v in row],
            )


def evaluate_and_send(
    open_wh,
    settings: Settings,
    templates: Path,
    campaign: Campaign,
    n: float,
    table: str,
    columns: tuple[str, ...],
    rows: list[tuple],
) -> list[email.message.EmailMessage]:
    """One evaluation at day n with the cohort holding `rows`, then the sends; the new emails."""
    before = set(settings.outbox_dir.glob("*.eml")) if settings.outbox_dir.exists() else set()
    with open_wh() as wh:
        set_table(wh, table, columns, rows)
        evaluate_campaign(wh, campaign, day(n), GuardLimits.from_settings(settings), f"run-{n}")

    def render(c, row, s, **kw):
        from email_jobs.render import render_email

        return render_email(c, row, s, templates_dir=templates, **kw)

    send_campaign(
        open_wh, campaign, OutboxBackend(settings.outbox_dir), settings, f"send-{n}", render=render
    )
    new = sorted(set(settings.outbox_dir.glob("*.eml")) - before)
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in new]


def drip_members(*users: str) -> list[tuple]:
    return [(u, f"{u}@example.com", u.title()) for u in users]


def sent(messages: list[email.message.EmailMessage]) -> set[tuple[str, str]]:
    """(entity, subject's template name) of each message."""
    return {(str(m["X-Nudge-Entity"]), str(m["Subject"]).split(" ")[0]) for m in messages}


# -- drips --------------------------------------------------------------------------------------


def test_drip_steps_go_out_on_time_and_stop_when_the_member_leaves(open_wh, settings, templates):
    cols = ("entity_id", "email", "first_name")

    def step(n: float, *users: str) -> set[tuple[str, str]]:
        return sent(
            evaluate_and_send(
                open_wh, settings, templates, DRIP, n, "cohort_drip", cols, drip_members(*users)
            )
        )

    assert step(0) == set()  # baseline
    assert step(1, "stay", "leave", "back") == {("stay", "d0"), ("leave", "d0"), ("back", "d0")}
    assert step(2, "stay", "back") == set()  # `leave` left; nothing is due yet
    # Day 3 after entry is day 4: due for those still in since the entry. `back` left on day 3
    # and came back: its drip stopped, and its re-entry is inside the cooldown (no new step 0).
    assert step(3, "stay") == set()
    assert step(4, "stay", "back") == {("stay", "d3")}
    assert step(4, "stay", "back") == set()  # the same instant again: nothing twice
    assert step(6, "stay", "back") == set()
    # Day 7 falls on day 8, but the next evaluation is at day 10: due then, once.
    assert step(10, "stay", "back") == {("stay", "d7")}
    assert step(12, "stay", "back") == set()  # the drip is over

    with open_wh() as wh:
        rows = wh.fetchall(
            "select entity_id, step, state, reason from nudge.send_ledger order by 1, 2"
        )
    assert [(e, s, st) for e, s, st, _ in rows if st == "sent"] == [
        ("back", 0, "sent"),
        ("leave", 0, "sent"),
        ("stay", 0, "sent"),
        ("stay", 1, "sent"),
        ("stay", 2, "sent"),
    ]
    assert ("back", 0, "skipped", "cooldown") in rows  # the re-entry on day 4


def test_one_step_per_evaluation_and_only_after_the_previous_was_sent(open_wh, settings, templates):
    cols = ("entity_id", "email", "first_name")
    with open_wh() as wh:
        set_table(wh, "cohort_drip", cols, [])
        evaluate_campaign(wh, DRIP, day(0), GuardLimits.from_settings(settings), "r0")
        set_table(wh, "cohort_drip", cols, drip_members("late"))
        evaluate_campaign(wh, DRIP, day(1), GuardLimits.from_settings(settings), "r1")
        # Step 0 has not been sent (no send run yet): step 1 waits, although it is due.
        evaluate_campaign(wh, DRIP, day(5), GuardLimits.from_settings(settings), "r5")
        steps = wh.fetchall("select step, state from nudge.send_ledger order by step")
    assert steps == [(0, "pending")]

    def step(n: float) -> set[tuple[str, str]]:
        return sent(
            evaluate_and_send(
                open_wh, settings, templates, DRIP, n, "cohort_drip", cols, drip_members("late")
            )
        )

    assert step(5) == {("late", "d0")}  # the send run delivers step 0
    # Ten days after the entry both later steps are due: one goes now, the next one next time.
    assert step(11) == {("late", "d3")}
    assert step(12) == {("late", "d7")}


def test_step_campaign_renders_the_steps_template():
    assert step_campaign(DRIP, 0).template == "d0"
    assert step_campaign(DRIP, 2).template == "d7"
    plain = Campaign(
        name="p", cohort="c", relation_name="r", entity="user", template="p", columns=()
    )
    assert step_campaign(plain, 3) is plain


# -- company cohorts ----------------------------------------------------------------------------


def test_company_cohort_mails_all_its_users_once_with_the_cc(open_wh, settings, templates):
    cols = ("entity_id", "email", "cc", "company_domain")
    with open_wh() as wh:
        set_table(
            wh,
            "dim_users",
            ("user_id", "company_id", "email", "first_name", "last_name"),
            [
                ("u1", "c_two", "Zed@Two.example", "Zed", "Z"),
                ("u2", "c_two", "amy@two.example", "Amy", "A"),
                ("u3", "c_two", None, "Nobody", "N"),
                ("u4", "c_two", "not an address", "Bad", "B"),
                ("u5", "c_none", None, "Nemo", "N"),
                ("u6", "c_other", "other@other.example", "Oz", "O"),
            ],
        )
    rows = [
        ("c_two", None, "se@vendor.example", "two.example"),
        ("c_none", None, None, "none.example"),
    ]
    baseline = evaluate_and_send(open_wh, settings, templates, COMPANY, 0, "cohort_teams", cols, [])
    assert baseline == []
    (message,) = evaluate_and_send(
        open_wh, settings, templates, COMPANY, 1, "cohort_teams", cols, rows
    )
    # One email per company: To every user with a valid address, the fixed and per-row CCs.
    assert str(message["To"]) == "amy@two.example, Zed@two.example"
    assert str(message["Cc"]) == "csm@vendor.example, se@vendor.example"
    assert str(message["X-Nudge-Entity"]) == "c_two"
    body = message.get_body(("plain",)).get_content()
    assert "Hello two.example: amy@two.example, Zed@two.example" in body
    with open_wh() as wh:
        ledger = wh.fetchall(
            "select entity_id, state, reason, recipient from nudge.send_ledger order by 1"
        )
    # The ledger holds one row per company; a company without a reachable user is skipped.
    assert ledger == [
        ("c_none", "skipped", "no_email", None),
        ("c_two", "sent", None, "amy@two.example"),
    ]
