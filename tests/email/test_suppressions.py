"""The suppression list (landing-folder CSVs and SendGrid's lists), the shared-address rule and
the frequency cap across campaigns: who is skipped, who waits, and that nobody is dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    suppressed_emails,
)
from email_jobs.suppressions import parse_suppression_csv, sync_suppressions
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse, connect

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


def test_sync_loads_csvs_and_never_lifts_what_it_stored(wh, tmp_path):  # noqa: F811
    """Fail closed: an unreadable file, an emptied file, a removed line, a removed file and a
    missing folder each leave every stored suppression active (the old sync replaced a
    source's rows and dropped them all)."""
    landing = landing_with(
        tmp_path,
        {
            "a.csv": "email,reason\nann@example.com,unsubscribed\nnot-an-email,x\n"
            "cid@example.com,asked\n",
            "b.csv": "\ufeffbob@example.com\n",  # Excel's BOM
        },
    )
    settings = Settings(_env_file=None, landing_dir=landing)
    sync = sync_suppressions(wh, settings)
    every = {
        ("ann@example.com", "unsubscribed", "csv:suppressions/a.csv"),
        ("cid@example.com", "asked", "csv:suppressions/a.csv"),
        ("bob@example.com", None, "csv:suppressions/b.csv"),
    }
    assert stored(wh) == every
    assert sync.problems == ["suppressions/a.csv, line 3: 'not-an-email' is not an email address"]
    assert (sync.metadata()["suppressions"], sync.added) == (3, 3)

    # a.csv caught half-rewritten (one line left), b.csv unreadable (not UTF-8): nothing goes.
    (landing / "suppressions" / "a.csv").write_text("email\nann@example.com\n", encoding="utf-8")
    (landing / "suppressions" / "b.csv").write_bytes(b"\xff\xfe\x00bad")
    sync = sync_suppressions(wh, settings)
    assert stored(wh) == every
    assert "suppressions/b.csv: cannot be read" in sync.problems[0]
    assert sync.added == 0
    # Emptied, then removed, then the whole folder gone: still all there, each row once.
    (landing / "suppressions" / "a.csv").write_text("", encoding="utf-8")
    sync_suppressions(wh, settings)
    (landing / "suppressions" / "b.csv").unlink()
    sync_suppressions(wh, settings)
    (landing / "suppressions" / "a.csv").unlink()
    (landing / "suppressions").rmdir()
    sync = sync_suppressions(wh, settings)
    assert stored(wh) == every
    assert wh.fetchone("select count(*) from nudge.suppressions")[0] == 3
    assert (
        wh.fetchone("select count(*) from nudge.suppressions where first_seen_at is null")[0] == 0
    )
    assert sync.by_source == {"csv:suppressions/a.csv": 2, "csv:suppressions/b.csv": 1}


def test_a_vanished_csv_line_does_not_make_the_next_evaluation_mail_it(wh, tmp_path):  # noqa: F811
    landing = landing_with(tmp_path, {"s.csv": "ann@example.com,unsubscribed\n"})
    settings = Settings(_env_file=None, landing_dir=landing)
    sync_suppressions(wh, settings)
    (landing / "suppressions" / "s.csv").write_text("", encoding="utf-8")  # mid-rewrite
    sync_suppressions(wh, settings)
    run(wh, 0, {})
    run(wh, 1, emails("ann", "bob"))
    assert ledger(wh)[("ann", "2026-01-02")] == ("skipped", "suppressed")
    assert ledger(wh)[("bob", "2026-01-02")] == ("pending", None)


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
        # An address gone from SendGrid's list (or a list that comes back empty) stays.
        sg.set_suppressions(bounces=[], unsubscribes=[], spam_reports=[])
        sync = sync_suppressions(wh, settings)
        assert sync.by_source["sendgrid:bounces"] == 1203
        assert ("bye@example.com", "unsubscribes", "sendgrid:unsubscribes") in stored(wh)


def test_suppressed_entries_are_skipped_case_insensitively(wh, tmp_path):  # noqa: F811
    landing = landing_with(tmp_path, {"s.csv": "ANN@example.COM,unsubscribed\n"})
    sync_suppressions(wh, Settings(_env_file=None, landing_dir=landing))
    run(wh, 0, {})
    result = run(wh, 1, {"ann": "ann@EXAMPLE.com", "bob": "bob@example.com"})
    assert result.skip_reasons == {"suppressed": 1}
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

    from support.scripted_backend import ScriptedBackend

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


# -- lifting, by hand -----------------------------------------------------------------------------


def test_a_lifted_address_stays_lifted_until_a_new_sighting(wh, tmp_path):  # noqa: F811
    """Re-reading the CSV line or the SendGrid entry a suppression came from does not undo its
    lift; another file, or a SendGrid entry newer than the lift, suppresses it again."""
    from datetime import UTC, datetime

    from email_jobs.suppressions import lift_suppression

    landing = landing_with(tmp_path, {"a.csv": "ann@example.com,unsubscribed\n"})
    with FakeSendGrid(api_key=API_KEY) as sg:
        sg.set_suppressions(bounces=[{"email": "bob@example.com", "created": 1700000000}])
        settings = Settings(
            _env_file=None,
            landing_dir=landing,
            email_backend="sendgrid",
            sendgrid_api_key=API_KEY,
            sendgrid_host=sg.url,
        )
        sync_suppressions(wh, settings)
        assert lift_suppression(wh, "Ann@Example.com", "asked us to", "alice") == [
            "csv:suppressions/a.csv"
        ]
        lift_suppression(wh, "bob@example.com", "mailbox fixed", "bob-the-operator")
        sync = sync_suppressions(wh, settings)  # the same line and bounce, read again
        assert (sync.added, sync.total) == (0, 0)
        run(wh, 0, {})
        run(wh, 1, emails("ann", "bob"))
        assert ledger(wh)[("ann", "2026-01-02")] == ("pending", None)  # mailable again
        assert ledger(wh)[("bob", "2026-01-02")] == ("pending", None)
        lifted = wh.fetchall(
            "select email, lifted_by, lifted_reason from nudge.suppressions "
            "where lifted_at is not null order by 1"
        )
        assert lifted == [
            ("ann@example.com", "alice", "asked us to"),
            ("bob@example.com", "bob-the-operator", "mailbox fixed"),
        ]

        # New sightings: a bounce after the lift, and another file naming ann.
        later = int(datetime.now(UTC).timestamp()) + 3600
        sg.set_suppressions(bounces=[{"email": "bob@example.com", "created": later}])
        (landing / "suppressions" / "b.csv").write_text("ann@example.com\n", encoding="utf-8")
        sync = sync_suppressions(wh, settings)
    assert sync.added == 2
    assert sync.by_source == {"csv:suppressions/b.csv": 1, "sendgrid:bounces": 1}
    run(wh, 2, {})
    run(wh, 40, emails("ann", "bob"))
    assert ledger(wh)[("ann", "2026-02-10")] == ("skipped", "suppressed")
    assert ledger(wh)[("bob", "2026-02-10")] == ("skipped", "suppressed")
    # The lifts stay on record beside the new rows.
    assert (
        wh.fetchone("select count(*) from nudge.suppressions where lifted_at is not null")[0] == 2
    )


def test_a_ledger_from_before_the_lift_columns_upgrades_with_its_rows_active(tmp_path):
    with connect(Settings(warehouse=f"duckdb:///{tmp_path}/old.duckdb", _env_file=None)) as w:
        with w.transaction():
            w.execute("create schema nudge")
            w.execute(
                "create table nudge.suppressions (email varchar not null, reason varchar, "
                "source varchar)"
            )
            w.execute(
                "insert into nudge.suppressions values "
                "('ann@example.com', 'x', 'csv:suppressions/a.csv')"
            )
        ensure_schema(w)
        assert suppressed_emails(w) == {"ann@example.com"}
        landing = landing_with(tmp_path, {"a.csv": "ann@example.com\n"})
        assert sync_suppressions(w, Settings(_env_file=None, landing_dir=landing)).added == 0


def nudge_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "nudge"
    return subprocess.run(
        [str(exe), "suppress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_nudge_suppress_add_list_and_remove(tmp_path):
    """The command, as an operator runs it: a lift needs a reason, is recorded, and an address
    that is not suppressed cannot be removed (one line, non-zero)."""
    warehouse = f"duckdb:///{tmp_path}/wh.duckdb"
    env = {
        **os.environ,
        "NUDGE_WAREHOUSE": warehouse,
        "NUDGE_LANDING_DIR": str(tmp_path / "landing"),
    }
    added = nudge_cli(env, "add", " Ann@Example.COM ", "--reason", "called support")
    assert added.returncode == 0, added.stderr
    assert nudge_cli(env, "add", "ann@example.com").stdout.strip().endswith("already suppressed")
    listed = json.loads(nudge_cli(env, "list", "--json").stdout)
    assert [(r["email"], r["source"], r["reason"]) for r in listed] == [
        ("ann@example.com", "manual", "called support")
    ]
    assert listed[0]["added_by"]

    missing = nudge_cli(env, "remove", "bob@example.com", "--reason", "typo")
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [
        "nudge: bob@example.com is not suppressed; nothing to remove"
    ]
    assert nudge_cli(env, "remove", "ann@example.com").returncode != 0  # no --reason
    assert nudge_cli(env, "add", "not-an-address").returncode != 0

    removed = nudge_cli(env, "remove", "ANN@example.com", "--reason", "re-subscribed", "--by", "al")
    assert removed.returncode == 0, removed.stderr
    assert nudge_cli(env, "list").stdout == ""
    (row,) = json.loads(nudge_cli(env, "list", "--all", "--json").stdout)
    assert (row["lifted_by"], row["lifted_reason"]) == ("al", "re-subscribed")
    assert row["lifted_at"]
    with connect(Settings(warehouse=warehouse, _env_file=None)) as w:
        assert suppressed_emails(w) == set()  # what evaluation and send read: mailable again
