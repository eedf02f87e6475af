"""The send loop against the local SendGrid stand-in, one test per retry class: what is waited,
what is retried, what fails with SendGrid's words, and what is left for the next run."""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter
from dataclasses import replace

import pytest
from support.fake_sendgrid import FakeSendGrid, Fault
from test_send_loop import (  # ledger fixtures of the send-loop tests
    CAMPAIGN,
    add_pending,
    open_wh,  # noqa: F401 - a fixture
    rows,
    settings,  # noqa: F401 - a fixture
    templates,  # noqa: F401 - a fixture
)

from email_jobs.backends.sendgrid import SendGridBackend
from email_jobs.ledger import claim_batch
from email_jobs.message import CredentialError
from email_jobs.render import render_email
from email_jobs.send import MAX_RETRY_AFTER_S, backoff_delay, send_campaign
from email_jobs.status import collect_status

API_KEY = "SG.retry-test"


@pytest.fixture
def sg():
    with FakeSendGrid(api_key=API_KEY) as fake:
        yield fake


def send(open_wh, sg, settings, templates, sleeps=None, campaign=CAMPAIGN, timeout=5.0, **kw):  # noqa: F811
    backend = SendGridBackend(API_KEY, host=sg.url, timeout=timeout)
    return send_campaign(
        open_wh,
        campaign,
        backend,
        settings,
        f"run-{uuid.uuid4().hex[:6]}",
        render=functools.partial(render_email, templates_dir=templates),
        sleep=sleeps.append if sleeps is not None else (lambda s: None),
        rand=lambda: 0.5,
        **kw,
    )


def accepted_keys(sg: FakeSendGrid) -> Counter[str]:
    return Counter(m["custom_args"]["nudge_key"] for m in sg.messages)


def test_429_waits_as_retry_after_says_then_sends(open_wh, sg, settings, templates):  # noqa: F811
    add_pending(open_wh, ["a"])
    sg.fail_next(Fault.rate_limited(retry_after=7))
    sleeps: list[float] = []
    report = send(open_wh, sg, settings, templates, sleeps)
    assert (report.sent, report.attempts, sleeps) == (1, 2, [7])
    row = rows(open_wh)["a"]
    assert (row["state"], row["attempts"]) == ("sent", 2)
    assert row["provider_message_id"] == sg.message_ids[0]


def test_429_waits_until_x_ratelimit_reset(open_wh, sg, settings, templates):  # noqa: F811
    add_pending(open_wh, ["a"])
    sg.fail_next(Fault.rate_limited(reset_at=time.time() + 30))
    sleeps: list[float] = []
    assert send(open_wh, sg, settings, templates, sleeps).sent == 1
    assert len(sleeps) == 1 and 27 <= sleeps[0] <= 31


def test_429_asking_for_too_long_a_pause_leaves_the_row_for_the_next_run(
    open_wh,  # noqa: F811
    sg,
    settings,  # noqa: F811
    templates,  # noqa: F811
):
    add_pending(open_wh, ["a"])
    sg.fail_next(Fault.rate_limited(retry_after=MAX_RETRY_AFTER_S + 1))
    sleeps: list[float] = []
    report = send(open_wh, sg, settings, templates, sleeps)
    assert (report.retry_later, sleeps) == (1, [])
    assert rows(open_wh)["a"]["state"] == "pending"
    assert send(open_wh, sg, settings, templates).sent == 1


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_backs_off_exponentially_with_jitter(open_wh, sg, settings, templates, status):  # noqa: F811
    add_pending(open_wh, ["a"])
    sg.fail_next(Fault.server_error(status), Fault.server_error(status))
    sleeps: list[float] = []
    report = send(open_wh, sg, settings, templates, sleeps)
    assert (report.sent, report.attempts) == (1, 3)
    assert sleeps == [backoff_delay(1, None, 0.5), backoff_delay(2, None, 0.5)]
    assert sleeps[1] == 2 * sleeps[0]
    assert accepted_keys(sg) == {"hello|a|2026-01-01T00:00:00Z|0": 1}


def test_a_dropped_connection_is_retried(open_wh, sg, settings, templates):  # noqa: F811
    add_pending(open_wh, ["a"])
    sg.fail_next(Fault.dropped())
    sleeps: list[float] = []
    report = send(open_wh, sg, settings, templates, sleeps)
    assert (report.sent, report.attempts, len(sleeps)) == (1, 2, 1)
    assert rows(open_wh)["a"]["state"] == "sent"


def test_a_timeout_is_retried_though_sendgrid_may_have_taken_it(open_wh, sg, settings, templates):  # noqa: F811
    """The documented risk: the slow answer may still be an acceptance. We retry (a rare
    duplicate over a silent loss); the ledger records one send."""
    add_pending(open_wh, ["a"])
    sg.fail_next(Fault.slow(3))
    sleeps: list[float] = []
    report = send(open_wh, sg, settings, templates, sleeps, timeout=0.5)
    assert (report.sent, report.attempts, len(sleeps)) == (1, 2, 1)
    row = rows(open_wh)["a"]
    assert (row["state"], row["attempts"]) == ("sent", 2)


@pytest.mark.parametrize(
    ("fault", "text"),
    [
        (Fault(400, {}, {"errors": [{"message": "Invalid from", "field": "from"}]}),
         "SendGrid 400: Invalid from (field: from)"),
        (Fault.too_large(), "SendGrid 413: The JSON payload you have included in your request "
         "is too large."),
    ],
)  # fmt: skip
def test_permanent_errors_fail_at_once_with_sendgrids_text(
    open_wh,  # noqa: F811
    sg,
    settings,  # noqa: F811
    templates,  # noqa: F811
    fault,
    text,
):
    add_pending(open_wh, ["a", "b"])
    sg.fail_next(fault)
    sleeps: list[float] = []
    report = send(
        open_wh, sg, settings.model_copy(update={"send_concurrency": 1}), templates, sleeps
    )
    assert (report.failed, report.sent, sleeps) == (1, 1, [])
    row = rows(open_wh)["a"]
    assert (row["state"], row["reason"], row["last_error"], row["attempts"]) == (
        "failed",
        "permanent_error",
        text,
        1,
    )


def test_still_failing_at_the_end_stays_pending_is_shown_then_gives_up(
    open_wh,  # noqa: F811
    sg,
    settings,  # noqa: F811
    templates,  # noqa: F811
):
    add_pending(open_wh, ["a"])
    sg.fail_next(*[Fault.server_error(503)] * 10)
    first = send(open_wh, sg, settings, templates)
    assert (first.retry_later, first.pending_left, first.attempts) == (1, 1, 4)
    with open_wh() as wh:
        [status] = collect_status(wh, [CAMPAIGN])["campaigns"]
    assert status["sends"]["pending"] == 1
    assert status["pending_reasons"] == {"retry_later": 1}
    assert status["retrying"] == [
        {
            "ledger_key": "hello|a|2026-01-01T00:00:00Z|0",
            "attempts": 4,
            "last_error": "SendGrid 503: Service Unavailable",
        }
    ]
    assert send(open_wh, sg, settings, templates).attempts == 4
    last = send(open_wh, sg, settings, templates)  # 2 attempts left of the total 10
    assert (last.failed, last.attempts) == (1, 2)
    row = rows(open_wh)["a"]
    assert (row["state"], row["reason"], row["attempts"]) == ("failed", "gave_up", 10)
    assert send(open_wh, sg, settings, templates).claimed == 0
    assert sg.messages == []


def test_many_rows_in_parallel_each_accepted_once(open_wh, sg, settings, templates):  # noqa: F811
    entities = [f"u{i:03}" for i in range(150)]
    add_pending(open_wh, entities)
    sg.fail_next(Fault.server_error(503), Fault.dropped(), Fault.rate_limited(retry_after=1))
    report = send(open_wh, sg, settings, templates, batch_size=16)
    assert (report.sent, report.claimed) == (150, 150)
    assert set(accepted_keys(sg).values()) == {1} and len(accepted_keys(sg)) == 150
    assert {r["state"] for r in rows(open_wh).values()} == {"sent"}


def test_on_unknown_resend_sends_a_dead_runs_claims_again(open_wh, sg, settings, templates):  # noqa: F811
    """The policy for teams that prefer a rare duplicate to a rare loss: what a dead run
    claimed goes out again, even the one it had already delivered."""
    add_pending(open_wh, ["a", "b"])
    with open_wh() as wh:
        dead = claim_batch(wh, CAMPAIGN.name, "dead-run", 10)
    # The dead run had delivered "a" before it died.
    SendGridBackend(API_KEY, host=sg.url).send(
        render_email(CAMPAIGN, dead[0].payload, settings, ledger_key=dead[0].ledger_key,
                     templates_dir=templates)
    )  # fmt: skip
    hold = send(open_wh, sg, settings, templates)
    assert (hold.recovered_unknown, hold.unknown, hold.sent) == (2, 2, 0)
    with open_wh() as wh:  # back to claimed by a dead run, this time under `resend`
        wh.execute("update nudge.send_ledger set state = 'claimed', claimed_by = 'dead-run'")
    resend = send(open_wh, sg, settings, templates, campaign=replace(CAMPAIGN, on_unknown="resend"))
    assert (resend.recovered_resend, resend.sent, resend.unknown) == (2, 2, 0)
    assert accepted_keys(sg) == {
        "hello|a|2026-01-01T00:00:00Z|0": 2,  # the rare duplicate the policy accepts
        "hello|b|2026-01-01T00:00:00Z|0": 1,
    }


def test_a_refused_key_stops_the_run_and_leaves_the_rows_pending(open_wh, sg, settings, templates):  # noqa: F811
    """A key revoked mid-run (401 on the second message): the run stops at once with one line
    naming SENDGRID_API_KEY, nothing more is tried, the rows not sent stay pending with no
    attempt counted; the next run sends each exactly once. (Before: failed(permanent_error),
    final, for every row that met the 401: the backlog burned.)"""
    add_pending(open_wh, ["a", "b", "c", "d", "e"])
    sg.fail_next(Fault(), Fault(401, {}, {"errors": [{"message": "revoked"}]}))
    serial = settings.model_copy(update={"send_concurrency": 1})
    with pytest.raises(CredentialError) as stopped:
        send(open_wh, sg, serial, templates, batch_size=2)
    assert str(stopped.value) == (
        "SENDGRID_API_KEY: SendGrid refused the API key (SendGrid 401: revoked); set a valid key "
        "with the mail.send permission"
    )
    assert API_KEY not in str(stopped.value)
    mail_sends = [r for r in sg.requests if r.path == "/v3/mail/send"]
    assert len(mail_sends) == 2  # the accepted one and the refused one: then nothing
    states = {e: (r["state"], r["attempts"]) for e, r in rows(open_wh).items()}
    assert states == {"a": ("sent", 1), "b": ("pending", 0), "c": ("pending", 0),
                      "d": ("pending", 0), "e": ("pending", 0)}  # fmt: skip
    report = send(open_wh, sg, settings, templates)
    assert report.sent == 4
    assert accepted_keys(sg) == Counter({k: 1 for k in accepted_keys(sg)})
    assert len(accepted_keys(sg)) == 5
    assert {r["state"] for r in rows(open_wh).values()} == {"sent"}


def test_a_wrong_key_is_refused_before_anything_is_claimed(open_wh, sg, settings, templates):  # noqa: F811
    add_pending(open_wh, ["a", "b"])
    backend = SendGridBackend("SG.not-the-key", host=sg.url)
    with pytest.raises(CredentialError, match=r"^SENDGRID_API_KEY: "):
        send_campaign(open_wh, CAMPAIGN, backend, settings, "run-wrong-key",
                      render=functools.partial(render_email, templates_dir=templates))  # fmt: skip
    assert {(r["state"], r["claimed_by"]) for r in rows(open_wh).values()} == {("pending", None)}
    assert sg.requests == []  # no mail send was tried
