"""The suppression list (landing-folder CSVs and SendGrid's lists), the shared-address rule and
the frequency cap across campaigns: who is skipped, who waits, and that nobody is dropped."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from support.fake_sendgrid import FakeSendGrid
from test_evaluate import (  # the evaluation fixtures: warehouse with events, cohort table
    CAMPAIGN,
    SETTINGS,
    day,
    emails,
    ledger,
    run,
    wh,  # noqa: F401 - a fixture
)

from email_jobs.ledger import (
    NewEntry,
    Outcome,
    Recorded,
    State,
    claim_for_send,
    ensure_schema,
    insert_entries,
    ledger_key,
    payload_json,
    record_outcomes,
)
from email_jobs.suppressions import parse_suppression_csv, sync_suppressions
from nudge.settings import Settings
from nudge.warehouse import Warehouse

API_KEY = "SG.suppressions-test"


def landing_with(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    folder = tmp_path / "landing" / "suppressions"
    folder.mkdir(parents=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return tmp_path / "landing"


def stored(w: Warehouse) -> set[tuple[str, str | None, str]]:
    return set(w.fetchall("select email, reason, source from nudge.suppressions"))


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_with_and_without_header_and_bad_lines_named_by_file_and_line():
    text = (
        "Reason,EMAIL\nunsubscribed, Ann@Example.COM \n\nbounced,not-an-address\n,bob@x.example\n"
    )
    entries, problems = parse_suppression_csv(text, "suppressions/a.csv")
    assert entries == [("ann@example.com", "unsubscribed"), ("bob@x.example", None)]
    assert problems == ["suppressions/a.csv, line 4: 'not-an-address' is not an email address"]

    entries, problems = parse_suppression_csv("c@x.example\nd@x.example,asked\n", "b.csv")
    assert (entries, problems) == ([("c@x.example", None), ("d@x.example", "asked")], [])

    _, problems = parse_suppression_csv("e@x.example,a,b\n", "c.csv")
    assert problems == [
        "c.csv, line 1: expected the columns email[, reason] (or a header row naming them), "
        "got 3 fields"
    ]


def test_sync_loads_csvs_replaces_them_and_keeps_an_unreadable_files_rows(wh, tmp_path):  # noqa: F811
    landing = landing_with(
        tmp_path,
        {
            "a.csv": "email,reason\nann@example.com,unsubscribed\nnot-an-email,x\n",
            "b.csv": "\ufeffbob@example.com\n",  # Excel's BOM
        },
    )
    settings = Settings(_env_file=None, landing_dir=landing)
    sync = sync_suppressions(wh, settings)
    assert stored(wh) == {
        ("ann@example.com", "unsubscribed", "csv:suppressions/a.csv"),
        ("bob@example.com", None, "csv:suppressions/b.csv"),
    }
    assert sync.problems == ["suppressions/a.csv, line 3: 'not-an-email' is not an email address"]
    assert sync.metadata()["suppressions"] == 2

    # b.csv is now unreadable (not UTF-8): its rows stay. a.csv loses a line: it goes.
    (landing / "suppressions" / "a.csv").write_text("email\n", encoding="utf-8")
    (landing / "suppressions" / "b.csv").write_bytes(b"\xff\xfe\x00bad")
    sync = sync_suppressions(wh, settings)
    assert stored(wh) == {("bob@example.com", None, "csv:suppressions/b.csv")}
    assert "suppressions/b.csv: cannot be read" in sync.problems[0]
    # A removed file takes its rows with it.
    (landing / "suppressions" / "b.csv").unlink()
    sync_suppressions(wh, settings)
    assert stored(wh) == set()


def test_sendgrid_lists_are_synced_with_their_source(wh, tmp_path):  # noqa: F811
    landing = landing_with(tmp_path, {"a.csv": "ann@example.com\n"})
    with FakeSendGrid(api_key=API_KEY) as sg:
        sg.set_suppressions(
            bounces=[
                {"email": f"Gone{i}@Example.com", "created": 1700000000, "reason": "550 no user"}
                for i in range(1203)  # three pages of 500
            ],
            unsubscribes=[{"email": "bye@example.com", "created": 1700000100}],
            spam_reports=[{"email": "spam@example.com", "created": 1700000200, "ip": "1.2.3.4"}],
        )
        settings = Settings(
            _env_file=None,
            landing_dir=landing,
            email_backend="sendgrid",
            sendgrid_api_key=API_KEY,
            sendgrid_host=sg.url,
        )
        sync = sync_suppressions(wh, settings)
        assert sync.by_source == {
            "csv:suppressions/a.csv": 1,
            "sendgrid:bounces": 1203,
            "sendgrid:spam_reports": 1,
            "sendgrid:unsubscribes": 1,
        }
        rows = stored(wh)
        assert ("gone7@example.com", "550 no user", "sendgrid:bounces") in rows
        assert ("bye@example.com", "unsubscribes", "sendgrid:unsubscribes") in rows

        # A list SendGrid refuses keeps what the last sync stored, and says why.
        wrong = settings.model_copy(update={"sendgrid_api_key": SecretStr("SG.wrong")})
        sync = sync_suppressions(wh, wrong)
        assert sync.by_source["sendgrid:bounces"] == 1203
        assert any("SendGrid bounces list not synced (SendGrid 401" in p for p in sync.problems)


def test_suppressed_entries_are_skipped_case_insensitively(wh, tmp_path):  # noqa: F811
    landing = landing_with(tmp_path, {"s.csv": "ANN@example.COM,unsubscribed\n"})
    sync_suppressions(wh, Settings(_env_file=None, landing_dir=landing))
    run(wh, 0, {})
    result = run(wh, 1, {"ann": "ann@EXAMPLE.com", "bob": "bob@example.com"})
    assert result.skip_reasons == {"suppressed": 1}
    assert ledger(wh)[("ann", "2026-01-02")] == ("skipped", "suppressed")
    assert ledger(wh)[("bob", "2026-01-02")] == ("pending", None)


def test_an_address_suppressed_after_its_evaluation_is_not_sent(wh, tmp_path):  # noqa: F811
    from email_jobs.ledger import skip_suppressed

    run(wh, 0, {})
    run(wh, 1, emails("ann", "bob"))
    landing = landing_with(tmp_path, {"late.csv": "ann@example.com\n"})
    sync_suppressions(wh, Settings(_env_file=None, landing_dir=landing))
    assert skip_suppressed(wh, CAMPAIGN.name) == 1  # what the send loop does before claiming
    assert ledger(wh)[("ann", "2026-01-02")] == ("skipped", "suppressed")
    assert ledger(wh)[("bob", "2026-01-02")] == ("pending", None)


# -- one address, several profiles ---------------------------------------------------------------


def test_one_address_on_two_profiles_that_enter_together_gets_one_email(wh):  # noqa: F811
    run(wh, 0, {})
    result = run(wh, 1, {"u1": "Shared@example.com", "u2": "shared@EXAMPLE.com", "u3": None})
    assert ledger(wh)[("u1", "2026-01-02")] == ("pending", None)
    assert ledger(wh)[("u2", "2026-01-02")] == ("skipped", "duplicate_address")
    assert result.skip_reasons == {"duplicate_address": 1, "no_email": 1}
    # Re-evaluating the instant with a third profile on the address decides the same way.
    run(wh, 1, {"u1": "shared@example.com", "u2": "shared@example.com", "u4": "shared@example.com"})
    assert ledger(wh)[("u4", "2026-01-02")] == ("skipped", "duplicate_address")
    # Each entry is its own: when u2 enters again later on its own, it is sent.
    run(wh, 2, {})
    run(wh, 40, {"u2": "shared@example.com"})
    assert ledger(wh)[("u2", "2026-02-10")] == ("pending", None)


# -- the frequency cap across campaigns --------------------------------------------------------


def pending_row(campaign: str, entity: str, email: str, entry_day: float) -> NewEntry:
    return NewEntry(
        ledger_key(campaign, entity, day(entry_day)),
        campaign,
        entity,
        day(entry_day),
        0,
        "ev",
        State.PENDING,
        None,
        email,
        payload_json({"entity_id": entity, "email": email}),
    )


def claim_all(w: Warehouse, campaign: str, as_of_day: float, cap: int = 1) -> tuple[list, int]:
    """Claim what the cap allows at that instant, and record it sent."""
    run_id = f"r-{uuid.uuid4().hex[:6]}"
    claim = claim_for_send(
        w, campaign, run_id, 100, as_of=day(as_of_day), max_per_recipient_per_day=cap
    )
    sent = [Recorded(r.ledger_key, Outcome(State.SENT), 1) for r in claim.rows]
    record_outcomes(w, run_id, sent)
    return sorted(r.entity_id for r in claim.rows), claim.deferred


def test_the_cap_defers_a_second_email_to_the_same_person_that_day_never_drops_it(wh):  # noqa: F811
    ensure_schema(wh)
    with wh.transaction():
        insert_entries(
            wh,
            [
                pending_row("a_campaign", "u1", "ann@example.com", 1),
                pending_row("b_campaign", "u1", "Ann@Example.com", 1),
                pending_row("b_campaign", "u2", "bob@example.com", 1),
            ],
        )
    assert claim_all(wh, "a_campaign", 1) == (["u1"], 0)
    assert claim_all(wh, "b_campaign", 1) == (["u2"], 1)
    row = wh.fetchdicts(
        "select state, reason, last_error from nudge.send_ledger where campaign = 'b_campaign' "
        "and entity_id = 'u1'"
    )[0]
    assert (row["state"], row["reason"]) == ("pending", "frequency_cap")
    assert "NUDGE_MAX_EMAILS_PER_RECIPIENT_PER_DAY" in row["last_error"]
    # A replay of the same instant decides the same way: still deferred.
    assert claim_all(wh, "b_campaign", 1) == ([], 1)
    # Half a day later is still within a day of the first send.
    assert claim_all(wh, "b_campaign", 1.5) == ([], 1)
    # The next evaluation sends it.
    assert claim_all(wh, "b_campaign", 2) == (["u1"], 0)
    sent_as_of = wh.fetchall(
        "select campaign, sent_as_of from nudge.send_ledger where entity_id = 'u1' order by 1"
    )
    assert sent_as_of == [("a_campaign", day(1)), ("b_campaign", day(2))]


def test_the_cap_counts_within_a_batch_and_can_be_raised_or_turned_off(wh):  # noqa: F811
    ensure_schema(wh)
    with wh.transaction():
        insert_entries(
            wh,
            [pending_row("c", f"u{i}", "same@example.com", 1 + i / 100) for i in range(4)],
        )
    assert claim_all(wh, "c", 1, cap=2) == (["u0", "u1"], 2)  # oldest entries first
    assert claim_all(wh, "c", 1, cap=0) == (["u2", "u3"], 0)


def test_the_default_cap_is_one_a_day_and_the_send_instant_is_the_evaluations(wh, tmp_path):  # noqa: F811
    """Two campaigns' entries for one person at one evaluation: one goes out, the other with
    the next evaluation, through the real send loop."""
    import functools

    from test_send_loop import ScriptedBackend

    from email_jobs.render import render_email
    from email_jobs.send import send_campaign

    templates = tmp_path / "templates"
    (templates / "x").mkdir(parents=True)
    for f, text in {"subject.txt": "Hi", "body.html": "<p>Hi</p>", "body.txt": "Hi"}.items():
        (templates / "x" / f).write_text(text)
    other = replace(CAMPAIGN, name="other_campaign")
    assert SETTINGS.max_emails_per_recipient_per_day == 1
    run(wh, 0, {})
    run(wh, 0, {}, other)
    run(wh, 1, emails("ann"))
    run(wh, 1, emails("ann"), other)
    backend = ScriptedBackend()

    def send(campaign, as_of=None):
        return send_campaign(
            lambda: _nullcontext(wh),
            campaign,
            backend,
            SETTINGS,
            f"run-{uuid.uuid4().hex[:6]}",
            as_of=as_of,
            render=functools.partial(render_email, templates_dir=templates),
            sleep=lambda s: None,
        )

    assert send(CAMPAIGN).sent == 1  # as_of: the campaign's newest evaluation, day 1
    report = send(other)
    assert (report.sent, report.deferred, report.pending_left) == (0, 1, 1)
    assert send(other, as_of=day(1) + timedelta(hours=23)).sent == 0
    assert send(other, as_of=day(2)).sent == 1
    assert len(backend.sent) == 2


def _nullcontext(w: Warehouse):
    from contextlib import nullcontext

    return nullcontext(w)


@pytest.mark.parametrize("cap", [1, 3])
def test_the_cap_knob_comes_from_the_environment(monkeypatch, cap):
    monkeypatch.setenv("NUDGE_MAX_EMAILS_PER_RECIPIENT_PER_DAY", str(cap))
    assert Settings(_env_file=None).max_emails_per_recipient_per_day == cap
