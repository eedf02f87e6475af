"""Delivery backends against real local things: a folder, an aiosmtpd server, a fake SendGrid."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from email_jobs.backends import make_backend
from email_jobs.backends.outbox import OutboxBackend
from email_jobs.backends.sendgrid import SendGridBackend, mail_send_payload
from email_jobs.backends.smtp import SmtpBackend
from email_jobs.message import CredentialError, OutgoingEmail
from nudge.core.settings import Settings

try:
    from tests.support.fake_sendgrid import FakeSendGrid, Fault
except ModuleNotFoundError:  # the repo root is not on sys.path; pytest put tests/ there instead
    from support.fake_sendgrid import FakeSendGrid, Fault  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
API_KEY = "SG.test-key"


def make_email(**overrides: Any) -> OutgoingEmail:
    email = OutgoingEmail(
        campaign="too_many_4xx_7d",
        entity_id="cap-user-2",
        ledger_key="too_many_4xx_7d|cap-user-2|2026-01-08T00:00:00Z|0",
        from_addr="Acme API <hello@acme.example>",
        to=("bob@cap-co-1.example",),
        cc=("se-1@vendor.example",),
        bcc=("audit@acme.example",),
        subject="2,125 of your requests failed — مريم 👋",
        html="<p>Hi <b>Bob</b></p>",
        text="Hi Bob\n",
        headers={
            "X-Nudge-Campaign": "too_many_4xx_7d",
            "X-Nudge-Entity": "cap-user-2",
            "X-Nudge-Key": "too_many_4xx_7d|cap-user-2|2026-01-08T00:00:00Z|0",
            "List-Unsubscribe": "<https://acme.example/unsub?c=too_many_4xx_7d&e=cap-user-2>",
        },
        categories=("too_many_4xx_7d",),
    )
    return replace(email, **overrides)


def parse(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


# --------------------------------------------------------------------------- outbox


def test_outbox_writes_a_parseable_message(tmp_path: Path) -> None:
    email = make_email()
    result = OutboxBackend(tmp_path / "outbox").send(email)
    assert result.status == "sent"
    [path] = (tmp_path / "outbox").iterdir()
    assert path.suffix == ".eml"
    msg = parse(path.read_bytes())
    assert msg["From"] == "Acme API <hello@acme.example>"
    assert msg["To"] == "bob@cap-co-1.example"
    assert msg["Cc"] == "se-1@vendor.example"
    assert msg["Bcc"] == "audit@acme.example"  # kept in the file as a record
    assert msg["Subject"] == email.subject
    assert msg["X-Nudge-Campaign"] == "too_many_4xx_7d"
    assert msg["X-Nudge-Entity"] == "cap-user-2"
    assert msg["X-Nudge-Key"] == email.ledger_key
    assert msg["List-Unsubscribe"] == email.headers["List-Unsubscribe"]
    assert msg["Message-ID"] == result.provider_message_id
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg.get_body(("plain",)).get_content() == "Hi Bob\n"
    assert "<b>Bob</b>" in msg.get_body(("html",)).get_content()


def test_outbox_retry_of_the_same_key_overwrites(tmp_path: Path) -> None:
    backend = OutboxBackend(tmp_path)
    first = backend.send(make_email())
    second = backend.send(make_email(subject="second attempt"))
    assert first.provider_message_id == second.provider_message_id
    [path] = tmp_path.iterdir()
    assert parse(path.read_bytes())["Subject"] == "second attempt"
    backend.send(make_email(ledger_key="too_many_4xx_7d|cap-user-3|2026-01-08T00:00:00Z|0"))
    assert len(list(tmp_path.iterdir())) == 2


def test_outbox_names_files_safely(tmp_path: Path) -> None:
    backend = OutboxBackend(tmp_path)
    for key in ("../../etc/passwd", "a/b", "a:b", "a b", "\x00\r\n"):
        assert backend.send(make_email(ledger_key=key)).status == "sent"
    files = list(tmp_path.iterdir())
    assert len(files) == 5  # keys that sanitize alike stay apart
    assert all(f.parent == tmp_path and f.name.endswith(".eml") for f in files)
    assert not any(f.name.startswith(".tmp") for f in files)


def test_outbox_test_sends_never_overwrite(tmp_path: Path) -> None:
    backend = OutboxBackend(tmp_path)
    backend.send(make_email(ledger_key=""))
    backend.send(make_email(ledger_key=""))
    assert len(list(tmp_path.iterdir())) == 2


def test_header_injection_never_creates_a_header(tmp_path: Path) -> None:
    email = make_email(
        subject="Hello\r\nBcc: victim@evil.example",
        headers={"X-Nudge-Entity": "u1\r\nBcc: victim@evil.example", "X-Nudge-Campaign": "c"},
        bcc=(),
    )
    assert OutboxBackend(tmp_path).send(email).status == "sent"
    [path] = tmp_path.iterdir()
    msg = parse(path.read_bytes())
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hello Bcc: victim@evil.example"
    assert msg["X-Nudge-Entity"] == "u1 Bcc: victim@evil.example"


def test_make_backend_picks_by_setting(tmp_path: Path) -> None:
    assert make_backend(Settings(email_backend="outbox", outbox_dir=tmp_path)).name == "outbox"
    assert make_backend(Settings(email_backend="smtp")).name == "smtp"
    sg = make_backend(Settings(email_backend="sendgrid", sendgrid_api_key="SG.x"))
    assert sg.name == "sendgrid"


# --------------------------------------------------------------------------- SMTP


class RecordingHandler:
    """aiosmtpd handler: records envelopes; refuses chosen recipients or DATA with a reply."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], bytes]] = []
        self.sessions: set[int] = set()
        self.refuse_rcpt: dict[str, str] = {}
        self.refuse_data: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.refuse_data:
            return self.refuse_data
        self.sessions.add(id(session))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


class PortZeroController(Controller):
    """aiosmtpd's Controller on an OS-chosen port (it wants the port before it knows it)."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp_server():
    handler = RecordingHandler()
    controller = PortZeroController(handler, hostname="127.0.0.1", port=0)
    controller.start()
    yield handler, controller
    controller.stop()


def test_smtp_delivers_with_cc_and_bcc_in_the_envelope_only(smtp_server) -> None:
    handler, controller = smtp_server
    backend = SmtpBackend("127.0.0.1", controller.port, timeout=5)
    try:
        results = [backend.send(make_email()), backend.send(make_email(ledger_key="k2"))]
    finally:
        backend.close()
    assert [r.status for r in results] == ["sent", "sent"]
    mail_from, rcpts, content = handler.envelopes[0]
    assert mail_from == "hello@acme.example"
    assert rcpts == ["bob@cap-co-1.example", "se-1@vendor.example", "audit@acme.example"]
    msg = parse(content)
    assert msg["Bcc"] is None
    assert msg["Cc"] == "se-1@vendor.example"
    assert msg["X-Nudge-Entity"] == "cap-user-2"
    assert msg["Message-ID"] == results[0].provider_message_id
    assert len(handler.sessions) == 1  # one connection served both messages


@pytest.mark.parametrize(
    ("reply", "status"),
    [("550 5.1.1 No such user here", "failed"), ("450 4.2.1 Mailbox busy, try later", "retryable")],
)
def test_smtp_recipient_refused(smtp_server, reply: str, status: str) -> None:
    handler, controller = smtp_server
    handler.refuse_rcpt = {a: reply for a in ("bob@cap-co-1.example", "se-1@vendor.example")}
    handler.refuse_rcpt["audit@acme.example"] = reply
    backend = SmtpBackend("127.0.0.1", controller.port, timeout=5)
    result = backend.send(make_email())
    backend.close()
    assert result.status == status
    assert reply.split(" ", 1)[1] in (result.error or "")
    assert handler.envelopes == []


def test_smtp_only_the_member_refused_is_failed_not_retried(smtp_server) -> None:
    handler, controller = smtp_server
    handler.refuse_rcpt = {"bob@cap-co-1.example": "550 5.1.1 No such user"}
    backend = SmtpBackend("127.0.0.1", controller.port, timeout=5)
    result = backend.send(make_email())
    backend.close()
    # the cc already got it: a retry would send them a second copy
    assert result.status == "failed"
    assert "No such user" in (result.error or "")


@pytest.mark.parametrize(
    ("reply", "status"),
    [("554 5.7.1 Message rejected as spam", "failed"), ("451 4.3.0 Local error", "retryable")],
)
def test_smtp_data_refused(smtp_server, reply: str, status: str) -> None:
    handler, controller = smtp_server
    handler.refuse_data = reply
    backend = SmtpBackend("127.0.0.1", controller.port, timeout=5)
    result = backend.send(make_email())
    assert result.status == status
    assert reply.split(" ", 2)[2] in (result.error or "")
    handler.refuse_data = None  # the same connection goes on working after a refusal
    assert backend.send(make_email()).status == "sent"
    backend.close()


def test_smtp_reconnects_after_the_server_went_away() -> None:
    handler = RecordingHandler()
    first = PortZeroController(handler, hostname="127.0.0.1", port=0)
    first.start()
    backend = SmtpBackend("127.0.0.1", first.port, timeout=5)
    assert backend.send(make_email()).status == "sent"
    first.stop()  # the pooled connection dies with the server
    assert backend.send(make_email()).status == "retryable"
    second = Controller(handler, hostname="127.0.0.1", port=first.port)
    second.start()
    try:
        assert backend.send(make_email()).status == "sent"
    finally:
        backend.close()
        second.stop()
    assert len(handler.envelopes) == 2


def test_smtp_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    result = SmtpBackend("127.0.0.1", port, timeout=5).send(make_email())
    assert result.status == "retryable"
    assert "Connection refused" in (result.error or "") or "Errno" in (result.error or "")


# --------------------------------------------------------------------------- SendGrid


@pytest.fixture
def fake_sg():
    with FakeSendGrid(api_key=API_KEY) as fake:
        yield fake


def sg_backend(fake: FakeSendGrid, **kw: Any) -> SendGridBackend:
    return SendGridBackend(kw.pop("api_key", API_KEY), host=fake.url, **kw)


def test_sendgrid_accepted(fake_sg: FakeSendGrid) -> None:
    result = sg_backend(fake_sg).send(make_email(unsubscribe_group_id=4242))
    assert result.status == "sent"
    assert result.provider_message_id == fake_sg.message_ids[0]
    [body] = fake_sg.messages
    assert body["custom_args"] == {
        "nudge_campaign": "too_many_4xx_7d",
        "nudge_entity": "cap-user-2",
        "nudge_key": "too_many_4xx_7d|cap-user-2|2026-01-08T00:00:00Z|0",
    }
    assert body["categories"] == ["too_many_4xx_7d"]
    assert body["asm"] == {"group_id": 4242}
    assert body["from"] == {"email": "hello@acme.example", "name": "Acme API"}
    assert body["personalizations"] == [
        {
            "to": [{"email": "bob@cap-co-1.example"}],
            "cc": [{"email": "se-1@vendor.example"}],
            "bcc": [{"email": "audit@acme.example"}],
        }
    ]
    assert body["headers"]["X-Nudge-Entity"] == "cap-user-2"
    assert "List-Unsubscribe" not in body["headers"]  # the ASM group's own header is used
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "mail_settings" not in body
    request = fake_sg.requests[0]
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_sendgrid_sandbox_mode(fake_sg: FakeSendGrid) -> None:
    result = sg_backend(fake_sg, sandbox=True).send(make_email())
    assert result.status == "sent"
    assert fake_sg.messages[0]["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert fake_sg.messages[0]["headers"]["List-Unsubscribe"].startswith("<https://")


def test_sendgrid_bad_request_fails_with_sendgrids_text(fake_sg: FakeSendGrid) -> None:
    result = sg_backend(fake_sg).send(make_email(to=("not-an-address",)))
    assert result.status == "failed"
    assert result.error == (
        "SendGrid 400: Does not contain a valid address. (field: personalizations.0.to.0.email)"
    )
    assert fake_sg.messages == []


def test_sendgrid_wrong_key_is_a_credential_problem_not_the_messages(
    fake_sg: FakeSendGrid,
) -> None:
    result = sg_backend(fake_sg, api_key="SG.wrong-secret").send(make_email())
    assert result.status == "credential"  # was "failed": a final state for the row
    assert result.error is not None and result.error.startswith("SENDGRID_API_KEY: ")
    assert "authorization grant is invalid" in result.error
    assert "SG.wrong-secret" not in result.error and "\n" not in result.error


def test_sendgrid_verify_reads_the_keys_scopes(fake_sg: FakeSendGrid) -> None:
    sg_backend(fake_sg).verify()  # the right key, with mail.send
    with pytest.raises(CredentialError, match=r"^SENDGRID_API_KEY: SendGrid refused") as bad:
        sg_backend(fake_sg, api_key="SG.wrong-secret").verify()
    assert "SG.wrong-secret" not in str(bad.value)
    fake_sg.scopes = ["suppression.read"]
    with pytest.raises(CredentialError, match=r"lacks the mail\.send permission"):
        sg_backend(fake_sg).verify()
    assert [r.path for r in fake_sg.requests] == []  # no mail send was tried


def test_sendgrid_payload_too_large_fails() -> None:
    with FakeSendGrid(api_key=API_KEY, max_body_bytes=2_000) as fake:
        result = sg_backend(fake).send(make_email(html="<p>" + "x" * 5_000 + "</p>"))
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("SendGrid 413: ")
    assert "too large" in result.error


def test_sendgrid_429_retry_after(fake_sg: FakeSendGrid) -> None:
    fake_sg.fail_next(Fault.rate_limited(retry_after=7))
    result = sg_backend(fake_sg).send(make_email())
    assert (result.status, result.retry_after_s) == ("retryable", 7.0)
    assert "too many requests" in (result.error or "")


def test_sendgrid_429_ratelimit_reset(fake_sg: FakeSendGrid) -> None:
    reset_at = time.time() + 30
    fake_sg.fail_next(Fault.rate_limited(reset_at=reset_at))
    result = sg_backend(fake_sg).send(make_email())
    assert result.status == "retryable"
    assert result.retry_after_s is not None and 20 < result.retry_after_s <= 30


@pytest.mark.parametrize("status", [500, 503])
def test_sendgrid_server_errors_are_retryable(fake_sg: FakeSendGrid, status: int) -> None:
    fake_sg.fail_next(Fault.server_error(status))
    backend = sg_backend(fake_sg)
    result = backend.send(make_email())
    assert result.status == "retryable"
    assert result.error is not None and result.error.startswith(f"SendGrid {status}")
    assert backend.send(make_email()).status == "sent"  # one fault, then back to normal


def test_sendgrid_dropped_connection_is_retryable(fake_sg: FakeSendGrid) -> None:
    fake_sg.fail_next(Fault.dropped())
    result = sg_backend(fake_sg).send(make_email())
    assert result.status == "retryable"
    assert "unreachable" in (result.error or "")
    assert fake_sg.messages == []


def test_sendgrid_timeout_is_retryable(fake_sg: FakeSendGrid) -> None:
    fake_sg.fail_next(Fault.slow(60))  # released when the fake stops
    result = sg_backend(fake_sg, timeout=0.3).send(make_email())
    assert result.status == "retryable"
    assert "timed out" in (result.error or "")


def test_sendgrid_unreachable_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = SendGridBackend(API_KEY, host=f"http://127.0.0.1:{port}").send(make_email())
    assert result.status == "retryable"


def test_sendgrid_from_a_thread_pool(fake_sg: FakeSendGrid) -> None:
    backend = sg_backend(fake_sg)
    emails = [make_email(entity_id=f"u{i}", ledger_key=f"k{i}") for i in range(24)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(backend.send, emails))
    assert {r.status for r in results} == {"sent"}
    assert len({r.provider_message_id for r in results}) == 24
    assert sorted(m["custom_args"]["nudge_key"] for m in fake_sg.messages) == sorted(
        e.ledger_key for e in emails
    )


def test_sendgrid_payload_never_repeats_an_address() -> None:
    email = make_email(cc=("BOB@cap-co-1.example", "se@vendor.example"), bcc=("se@vendor.example",))
    payload = mail_send_payload(email)
    assert payload["personalizations"][0] == {
        "to": [{"email": "bob@cap-co-1.example"}],
        "cc": [{"email": "se@vendor.example"}],
    }


def test_fake_sendgrid_suppression_lists(fake_sg: FakeSendGrid) -> None:
    fake_sg.set_suppressions(
        bounces=[{"email": "gone@x.example", "created": 1700000000, "reason": "550 no user"}],
        unsubscribes=[{"email": "bye@x.example", "created": 1700000100}],
    )

    def get(path: str, key: str = API_KEY) -> Any:
        req = urllib.request.Request(fake_sg.url + path, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    assert get("/v3/suppression/bounces")[0]["email"] == "gone@x.example"
    assert get("/v3/suppression/unsubscribes?start_time=1700000050")[0]["email"] == "bye@x.example"
    assert get("/v3/suppression/spam_reports") == []
    with pytest.raises(urllib.error.HTTPError) as err:
        get("/v3/suppression/bounces", key="SG.wrong")
    assert err.value.code == 401


def test_fake_sendgrid_as_a_process(tmp_path: Path) -> None:
    record = tmp_path / "sent.jsonl"
    faults = json.dumps([{"status": 503}])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_sendgrid", "--api-key", API_KEY,
         "--record", str(record), "--faults", faults],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        backend = SendGridBackend(API_KEY, host=f"http://127.0.0.1:{port}")
        assert backend.send(make_email()).status == "retryable"
        sent = backend.send(make_email())
        assert sent.status == "sent"
        [line] = record.read_text(encoding="utf-8").splitlines()
        assert json.loads(line)["message_id"] == sent.provider_message_id
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/messages", timeout=5) as r:
            assert len(json.loads(r.read())) == 1
    finally:
        proc.kill()
        proc.wait()
