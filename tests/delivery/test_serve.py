"""`nudge serve` over real HTTP (uvicorn in a thread), and the signed unsubscribe links the
backends put on every message: SendGrid-signed webhooks (a P-256 test key pair), tampered,
unsigned and replayed ones, a 10,000-event burst, GET/POST /u, the DuckDB spool the pipeline
loads, Postgres written directly, and the headers in an outbox file, an SMTP envelope and the
SendGrid stand-in's payload."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_send_loop import CAMPAIGN, add_pending  # ledger fixtures of the send-loop tests

from email_jobs.backends.outbox import OutboxBackend
from email_jobs.backends.sendgrid import SendGridBackend
from email_jobs.backends.smtp import SmtpBackend
from email_jobs.event_spool import READY, load_spool, spool_dir
from email_jobs.render import render_email
from email_jobs.send import send_campaign
from email_jobs.store import ensure_schema
from email_jobs.unsubscribe import make_token, verify_token
from nudge.app.serve import create_app, uvicorn_config
from nudge.core.settings import ConfigError, Settings
from nudge.core.warehouse import connect

try:
    from tests.support.fake_sendgrid import FakeSendGrid
    from tests.support.net import free_port
except ModuleNotFoundError:
    from support.fake_sendgrid import FakeSendGrid  # type: ignore[no-redef]
    from support.net import free_port  # type: ignore[no-redef]

SECRET = "serve-test-secret-0123456789abcdef"
PUBLIC = "https://nudge.example.test"
SIG = "X-Twilio-Email-Event-Webhook-Signature"
TS = "X-Twilio-Email-Event-Webhook-Timestamp"


# -- a SendGrid-like signer ------------------------------------------------------------------


class Signer:
    """Signs as SendGrid does: ECDSA P-256, SHA-256, over timestamp + raw body; base64 DER."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:  # as SendGrid shows it: base64 DER SubjectPublicKeyInfo
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: str = "1767312000") -> dict[str, str]:
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {SIG: base64.b64encode(signature).decode(), TS: timestamp}


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def make_settings(tmp_path: Path, signer: Signer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "warehouse": f"duckdb:///{tmp_path}/wh.duckdb",
        "outbox_dir": tmp_path / "outbox",
        "secret_key": SECRET,
        "public_url": PUBLIC,
        "sendgrid_webhook_public_key": signer.public_key,
        "_env_file": None,
    }
    return Settings(**{**values, **overrides})


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(settings), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # readiness, not timing: uvicorn sets it once it listens
        assert thread.is_alive() and time.monotonic() < deadline, "nudge serve did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def declared_only(url: str, length: int, headers: dict[str, str]) -> int:
    """POST headers declaring a `length`-byte body, send none, and read the answer: a server
    that refuses by the declared size answers at once (sending the megabyte would race its
    closing the connection)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("POST", parts.path)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def event(i: int, kind: str = "delivered", **extra: Any) -> dict[str, Any]:
    return {
        "email": f"user{i}@example.com",
        "timestamp": 1767312000 + i,
        "event": kind,
        "sg_event_id": f"ev-{i}-{time.monotonic_ns()}",  # differs on each delivery, as SendGrid's
        "sg_message_id": f"msg-{i}",
        "nudge_key": f"hello|u{i}|2026-01-01T00:00:00Z|0",
        "nudge_campaign": "hello",
        "nudge_entity": f"u{i}",
        **extra,
    }


def spooled(settings: Settings) -> list[Path]:
    folder = spool_dir(settings)
    assert folder is not None
    return sorted((folder / READY).glob("*.jsonl")) if (folder / READY).is_dir() else []


def load(settings: Settings) -> None:
    with connect(settings) as wh:
        ensure_schema(wh)
        load_spool(wh, settings)


def table(settings: Settings, sql: str) -> list[tuple]:
    with connect(settings) as wh:
        ensure_schema(wh)
        return wh.fetchall(sql)


# -- tokens ----------------------------------------------------------------------------------


def test_a_token_names_its_recipient_and_any_change_or_other_key_voids_it() -> None:
    token = make_token(SECRET, "hello", "u1", "Ann@Example.com")
    target = verify_token(SECRET, token)
    assert target is not None and (target.campaign, target.entity_id, target.address) == (
        "hello", "u1", "ann@example.com"
    )  # fmt: skip
    body, mac = token.split(".")
    forged_body = base64.urlsafe_b64encode(b'[1,"hello","u1","eve@example.com"]').decode()
    for bad in (
        forged_body.rstrip("=") + "." + mac,  # another address, the old MAC
        body + "." + mac[:-2] + ("AA" if not mac.endswith("AA") else "BB"),
        body + mac,
        token + "." + mac,
        "x" * 5000,
        "",
    ):
        assert verify_token(SECRET, bad) is None
    assert verify_token("another-secret-0123456789", token) is None


# -- the webhook -----------------------------------------------------------------------------


def test_signed_events_are_stored_once_and_tampered_or_unsigned_ones_are_refused(
    tmp_path: Path, signer: Signer
) -> None:
    settings = make_settings(tmp_path, signer)
    events = [event(1), event(2, "click", url="https://docs.example/x"), event(3, "bounce")]
    body = json.dumps(events).encode()
    hook = "/webhooks/sendgrid"
    with serving(settings) as base:
        assert request(base + "/healthz")[0] == 200
        tampered = body.replace(b"user1@", b"user9@")
        assert request(base + hook, "POST", tampered, signer.headers(body))[0] == 403
        assert request(base + hook, "POST", body)[0] == 403  # unsigned
        other = Signer().headers(body)
        assert request(base + hook, "POST", body, other)[0] == 403  # another key
        late = {**signer.headers(body), TS: "1767312001"}  # signature of another timestamp
        assert request(base + hook, "POST", body, late)[0] == 403
        assert spooled(settings) == []  # nothing refused reached the spool
        signed = signer.headers(body)
        status, answer = request(base + hook, "POST", body, signed)
        assert (status, json.loads(answer)) == (200, {"stored": 3, "ignored": 0})
        # SendGrid's retry: the same events, new sg_event_ids, signed again at another time.
        again = json.dumps([{**e, "sg_event_id": "retry"} for e in events]).encode()
        assert request(base + hook, "POST", again, signer.headers(again, "1767315600"))[0] == 200
        assert request(base + hook, "POST", body, signed)[0] == 200  # a replay, as captured
        assert request(base + hook, "POST", b"{", signer.headers(b"{"))[0] == 400
        # The byte-identical replay is answered without a second write; the retry is written.
        assert len(spooled(settings)) == 2
    load(settings)
    assert spooled(settings) == []
    rows = table(settings, "select nudge_key, email, event, url from nudge.email_events order by 1")
    assert rows == [
        ("hello|u1|2026-01-01T00:00:00Z|0", "user1@example.com", "delivered", ""),
        ("hello|u2|2026-01-01T00:00:00Z|0", "user2@example.com", "click", "https://docs.example/x"),
        ("hello|u3|2026-01-01T00:00:00Z|0", "user3@example.com", "bounce", ""),
    ]
    assert table(settings, "select email, source from nudge.suppressions") == [
        ("user3@example.com", "sendgrid_event:bounce")
    ]


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
def test_a_burst_of_10000_events_loses_and_doubles_none(
    store: str, request: pytest.FixtureRequest, tmp_path: Path, signer: Signer
) -> None:
    """DuckDB: accepted into the spool, then loaded; Postgres: written while answering."""
    if store == "postgres":
        settings = make_settings(
            tmp_path, signer, warehouse=request.getfixturevalue("postgres_database")
        )
    else:
        settings = make_settings(tmp_path, signer)
    batches = [
        json.dumps([event(b * 1000 + i, ("open", "delivered")[i % 2]) for i in range(1000)])
        for b in range(10)
    ]
    # Each batch twice, the second time re-signed later, as SendGrid's retry of a batch.
    bodies = [(b.encode(), signer.headers(b.encode())) for b in batches] + [
        (b.encode(), signer.headers(b.encode(), "1767315600")) for b in batches
    ]
    with serving(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        started = time.perf_counter()
        for body, headers in bodies:
            conn.request("POST", "/webhooks/sendgrid", body, headers)
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        took = time.perf_counter() - started
        conn.close()
    started = time.perf_counter()
    load(settings)
    load_took = time.perf_counter() - started
    print(
        f"\nwebhook on {store}: 20,000 events (10,000 distinct, each batch twice) answered in "
        f"{took:.2f}s = {20_000 / took:,.0f} events/s"
        + (
            f"; spool loaded into DuckDB in {load_took:.2f}s = {20_000 / load_took:,.0f} events/s"
            if store == "duckdb"
            else ""
        )
    )
    counts = "select count(*), count(distinct nudge_key) from nudge.email_events"
    assert table(settings, counts) == [(10_000, 10_000)]


def test_oversized_and_slow_inputs_are_bounded(tmp_path: Path, signer: Signer) -> None:
    settings = make_settings(tmp_path, signer)
    big = b"[" + b" " * (1 << 20) + b"]"
    with serving(settings) as base:
        assert declared_only(base + "/webhooks/sendgrid", len(big), signer.headers(big)) == 413
        token = make_token(SECRET, "hello", "u1", "a@example.com")
        assert request(f"{base}/u/{token}", "POST", b"x" * 5000)[0] == 413
        assert request(f"{base}/u/{'A' * 3000}")[0] == 404
    assert spooled(settings) == []


# -- unsubscribe -----------------------------------------------------------------------------


def test_get_changes_nothing_post_unsubscribes_once_and_the_next_send_skips_the_address(
    tmp_path: Path, signer: Signer
) -> None:
    settings = make_settings(tmp_path, signer)
    open_wh = lambda: connect(settings)  # noqa: E731
    with open_wh() as wh:
        ensure_schema(wh)
    add_pending(open_wh, ["a", "b"])
    token = make_token(SECRET, "hello", "a", "a@example.com")
    forged = make_token("not-our-secret-0123456789", "hello", "b", "b@example.com")
    with serving(settings) as base:
        status, page = request(f"{base}/u/{token}")
        assert status == 200 and b"a@example.com" in page and b'method="post"' in page
        assert spooled(settings) == []  # a mail scanner following the link changes nothing
        assert request(f"{base}/u/{forged}", "POST", b"List-Unsubscribe=One-Click")[0] == 404
        assert request(f"{base}/u/{token[:-3]}xyz", "POST", b"")[0] == 404
        assert spooled(settings) == []  # a bad token records nothing
        one_click = {"Content-Type": "application/x-www-form-urlencoded"}
        for _ in range(2):  # RFC 8058's one-click POST, then the button: idempotent
            status, page = request(
                f"{base}/u/{token}", "POST", b"List-Unsubscribe=One-Click", one_click
            )
            assert status == 200 and b"no more emails" in page
    # The send loads the spool before its claim-time screen: a is not mailed, b is.
    backend = OutboxBackend(settings.outbox_dir)
    report = send_campaign(open_wh, CAMPAIGN, backend, settings, "run-1", render=_render(tmp_path))
    assert (report.sent, report.suppressed) == (1, 1)
    sent = [message_from_bytes(p.read_bytes()) for p in settings.outbox_dir.glob("*.eml")]
    assert [m["To"] for m in sent] == ["b@example.com"]
    # The sighting keeps the member the link named: the outcomes credit that member's entry.
    active = "select email, source, entity_id from nudge.suppressions where lifted_at is null"
    assert table(settings, active) == [("a@example.com", "unsubscribe:hello", "a")]


def test_on_postgres_serve_writes_directly_and_replays_are_stored_once(
    postgres_database: str, tmp_path: Path, signer: Signer
) -> None:
    settings = make_settings(tmp_path, signer, warehouse=postgres_database)
    body = json.dumps([event(1, "spamreport"), event(2)]).encode()
    token = make_token(SECRET, "hello", "u5", "five@example.com")
    with serving(settings) as base:
        assert request(base + "/healthz")[0] == 200
        for _ in range(2):
            hook = request(base + "/webhooks/sendgrid", "POST", body, signer.headers(body))
            assert hook[0] == 200
            assert request(f"{base}/u/{token}", "POST", b"List-Unsubscribe=One-Click")[0] == 200
    assert spool_dir(settings) is None
    assert table(settings, "select event from nudge.email_events order by 1") == [
        ("delivered",), ("spamreport",)
    ]  # fmt: skip
    rows = "select email, source, entity_id from nudge.suppressions order by 1"
    assert table(settings, rows) == [
        ("five@example.com", "unsubscribe:hello", "u5"),
        ("user1@example.com", "sendgrid_event:spamreport", None),
    ]


def test_serve_refuses_to_start_without_its_keys(tmp_path: Path, signer: Signer) -> None:
    with pytest.raises(ConfigError, match=r"^NUDGE_SECRET_KEY: "):
        create_app(make_settings(tmp_path, signer, secret_key=None, public_url=None))
    with pytest.raises(ConfigError, match=r"^SENDGRID_WEBHOOK_PUBLIC_KEY: ") as bad:
        create_app(make_settings(tmp_path, signer, sendgrid_webhook_public_key="bm90IGEga2V5"))
    assert "\n" not in str(bad.value)


# -- the links on the messages -----------------------------------------------------------------


def _render(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "templates" / "hello"
    root.mkdir(parents=True, exist_ok=True)
    (root / "subject.txt").write_text("Hello {{ first_name }}")
    (root / "body.html").write_text("<p>Hi</p><a href='{{ unsubscribe_url }}'>Unsubscribe</a>")
    (root / "body.txt").write_text("Unsubscribe: {{ unsubscribe_url }}")
    return lambda *a, **kw: render_email(*a, templates_dir=tmp_path / "templates", **kw)


def _company_email(tmp_path: Path, settings: Settings):  # type: ignore[no-untyped-def]
    campaign = replace(CAMPAIGN, cc=("se@vendor.example",))
    row = {"entity_id": "u1", "email": "ann@example.com", "first_name": "Ann"}
    return _render(tmp_path)(campaign, row, settings, ledger_key="hello|u1|k|0")


def _link_target(link: str) -> str:
    assert link.startswith(f"{PUBLIC}/u/")
    target = verify_token(SECRET, link.removeprefix(f"{PUBLIC}/u/"))
    assert target is not None
    return target.address


def test_each_recipient_gets_their_own_link_in_the_outbox_over_smtp_and_on_sendgrid(
    tmp_path: Path, signer: Signer
) -> None:
    settings = make_settings(tmp_path, signer)
    email = _company_email(tmp_path, settings)
    assert "List-Unsubscribe" not in email.headers  # it is per copy

    # outbox: one file a message, the main To's copy, with its header and body link
    assert OutboxBackend(settings.outbox_dir).send(email).status == "sent"
    files = sorted(settings.outbox_dir.glob("*.eml"))
    assert len(files) == 1
    assert b"\nList-Unsubscribe: <https://nudge.example.test/u/" in files[0].read_bytes()
    msg = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    link = msg["List-Unsubscribe"].strip("<>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert link in msg.get_body(("plain",)).get_content()
    assert msg["To"] == "ann@example.com" and msg["Cc"] == "se@vendor.example"
    assert _link_target(link) == "ann@example.com"

    # smtp: one envelope per recipient; each copy's link is the envelope recipient's
    received: list[tuple[list[str], bytes]] = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            received.append((list(envelope.rcpt_tos), envelope.original_content))
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = SmtpBackend("127.0.0.1", controller.port, tls="none")
        assert smtp.send(email).status == "sent"
        smtp.close()
    finally:
        controller.stop()
    assert sorted(r for r, _ in received) == [["ann@example.com"], ["se@vendor.example"]]
    for rcpts, raw in received:
        assert b"\nList-Unsubscribe: <https://nudge.example.test/u/" in raw.replace(b"\r", b"")
        msg = message_from_bytes(raw, policy=policy.default)
        assert _link_target(msg["List-Unsubscribe"].strip("<>")) == rcpts[0]
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # sendgrid: one personalization per recipient, its link as a substitution and its headers
    with FakeSendGrid(api_key="SG.k") as sg:
        result = SendGridBackend("SG.k", host=sg.url).send(email)
        assert result.status == "sent", result.error
        (payload,) = sg.messages
    persos = payload["personalizations"]
    assert [p["to"] for p in persos] == [
        [{"email": "ann@example.com"}], [{"email": "se@vendor.example"}]
    ]  # fmt: skip
    for p in persos:
        ((placeholder, link),) = p["substitutions"].items()
        assert placeholder in payload["content"][0]["value"]
        assert p["headers"]["List-Unsubscribe"] == f"<{link}>"
        assert p["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert _link_target(link) == p["to"][0]["email"]
    assert "List-Unsubscribe" not in payload.get("headers", {})


def test_smtp_and_sendgrid_refuse_to_send_without_signed_links(
    tmp_path: Path, signer: Signer
) -> None:
    settings = make_settings(tmp_path, signer, secret_key=None, public_url=None)
    open_wh = lambda: connect(settings)  # noqa: E731
    with open_wh() as wh:
        ensure_schema(wh)
    add_pending(open_wh, ["a"])
    with FakeSendGrid(api_key="SG.k") as sg:
        backend = SendGridBackend("SG.k", host=sg.url)
        with pytest.raises(ConfigError) as refused:
            send_campaign(open_wh, CAMPAIGN, backend, settings, "r1", render=_render(tmp_path))
        assert sg.messages == []
        text = str(refused.value)
        assert text.startswith("NUDGE_SECRET_KEY and NUDGE_PUBLIC_URL: ") and "\n" not in text
        # A campaign with a SendGrid unsubscribe group may send: SendGrid adds the link.
        grouped = replace(CAMPAIGN, unsubscribe_group_id=42)
        report = send_campaign(open_wh, grouped, backend, settings, "r2", render=_render(tmp_path))
        assert report.sent == 1 and sg.messages[0]["asm"] == {"group_id": 42}
    with pytest.raises(ConfigError, match=r"^NUDGE_PUBLIC_URL: "):
        make_settings(tmp_path, signer, public_url=None).check()
    with pytest.raises(ConfigError) as short:
        from nudge.core.settings import load_settings

        load_settings(_env_file=None, secret_key="short", public_url=PUBLIC)
    assert "short" not in str(short.value).split(":", 1)[0] and "'short'" not in str(short.value)
