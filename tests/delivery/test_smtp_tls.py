"""SMTP over TLS only when it logs in (NUDGE_SMTP_TLS), certificates verified, and a refused
login (535) that stops the send instead of failing the rows. Real aiosmtpd servers on
127.0.0.1 with a self-signed certificate the client is pointed at (NUDGE_SMTP_CA_FILE)."""

from __future__ import annotations

import functools
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from support.tls import self_signed, server_context
from test_backends import PortZeroController, RecordingHandler, make_email
from test_send_loop import (  # ledger fixtures of the send-loop tests
    CAMPAIGN,
    add_pending,
    open_wh,  # noqa: F401 - a fixture
    rows,
    settings,  # noqa: F401 - a fixture
    templates,  # noqa: F401 - a fixture
)

from email_jobs.backends.smtp import SmtpBackend
from email_jobs.message import CredentialError
from email_jobs.render import render_email
from email_jobs.send import send_campaign
from nudge.app.preflight import check_credentials
from nudge.core.settings import ConfigError, Settings, load_settings

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


class Logins:
    """An aiosmtpd authenticator: accepts nudge/PASSWORD while `accept`; counts attempts."""

    def __init__(self) -> None:
        self.accept = True
        self.tries = 0

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.tries += 1
        ok = self.accept and auth_data.login == b"nudge" and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535


@contextmanager
def relay(cert: tuple[Path, Path], mode: str, logins: Logins) -> Iterator[tuple[Any, int]]:
    """An aiosmtpd relay: `starttls` (offers STARTTLS, refuses AUTH and MAIL before it),
    `implicit` (TLS from the first byte), `plain` (no TLS at all, AUTH allowed in clear)."""
    handler = RecordingHandler()
    ctx = server_context(*cert)
    # aiosmtpd does not see its own implicit TLS (it would hide AUTH): only STARTTLS needs it.
    kwargs: dict[str, Any] = {"authenticator": logins, "auth_require_tls": mode == "starttls"}
    if mode == "starttls":
        kwargs |= {"tls_context": ctx, "require_starttls": True}
    elif mode == "implicit":
        kwargs |= {"ssl_context": ctx}
    controller = PortZeroController(handler, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def backend(port: int, cert: tuple[Path, Path], tls: str, password: str = PASSWORD) -> SmtpBackend:
    return SmtpBackend("127.0.0.1", port, user="nudge", password=password, tls=tls,
                       ca_file=str(cert[0]), timeout=5)  # fmt: skip


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_login_and_delivery_over_verified_tls(cert, tls: str) -> None:
    logins = Logins()
    with relay(cert, tls, logins) as (handler, port):
        smtp = backend(port, cert, tls)
        smtp.verify()  # preflight: connect, TLS, login
        assert smtp.send(make_email()).status == "sent"
        smtp.close()
    assert len(handler.envelopes) == 1
    assert logins.tries == 1  # the verified connection served the send


def test_an_untrusted_certificate_is_refused_before_any_login(cert) -> None:
    logins = Logins()
    with relay(cert, "starttls", logins) as (handler, port):
        smtp = SmtpBackend("127.0.0.1", port, user="nudge", password=PASSWORD, tls="starttls")
        result = smtp.send(make_email())  # the system's CAs do not know the test certificate
        assert result.status == "retryable"
        assert "CERTIFICATE_VERIFY_FAILED" in (result.error or "")
    assert (logins.tries, handler.envelopes) == (0, [])


def test_starttls_required_never_falls_back_to_a_login_in_clear(cert) -> None:
    logins = Logins()
    with relay(cert, "plain", logins) as (handler, port):  # offers no STARTTLS
        smtp = backend(port, cert, "starttls")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.verify()
        assert smtp.send(make_email()).status != "sent"
    assert (logins.tries, handler.envelopes) == (0, [])  # the password never left


def smtp_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in ("NUDGE_SMTP_TLS", "NUDGE_SMTP_STARTTLS", "NUDGE_SMTP_USER", "NUDGE_SMTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NUDGE_EMAIL_BACKEND", "smtp")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "none"),
        ({"NUDGE_SMTP_USER": "nudge", "NUDGE_SMTP_PASSWORD": PASSWORD}, "starttls"),
        ({"NUDGE_SMTP_PASSWORD": PASSWORD, "NUDGE_SMTP_TLS": "implicit"}, "implicit"),
        ({"NUDGE_SMTP_STARTTLS": "true", "NUDGE_SMTP_PASSWORD": PASSWORD}, "starttls"),
        ({"NUDGE_SMTP_STARTTLS": "false"}, "none"),
    ],
)
def test_tls_mode_from_the_settings(monkeypatch, env: dict[str, str], mode: str) -> None:
    smtp_env(monkeypatch, **env)
    assert load_settings(_env_file=None).smtp_tls_mode == mode


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"NUDGE_SMTP_TLS": "none", "NUDGE_SMTP_USER": "nudge", "NUDGE_SMTP_PASSWORD": PASSWORD},
         "NUDGE_SMTP_TLS=none"),
        ({"NUDGE_SMTP_STARTTLS": "false", "NUDGE_SMTP_PASSWORD": PASSWORD},
         "NUDGE_SMTP_STARTTLS=false"),
        ({"NUDGE_SMTP_TLS": "plain"}, "NUDGE_SMTP_TLS"),
    ],
)  # fmt: skip
def test_a_password_over_a_plain_connection_is_refused_at_load(
    monkeypatch, env: dict[str, str], variable: str
) -> None:
    smtp_env(monkeypatch, **env)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    text = str(refused.value)
    assert text.startswith(variable) and "\n" not in text and PASSWORD not in text


# -- a refused login (535) stops; it does not burn the backlog -----------------------------------


def test_a_refused_login_is_a_credential_problem(cert) -> None:
    logins = Logins()
    with relay(cert, "starttls", logins) as (handler, port):
        result = backend(port, cert, "starttls", password="wrong-pw").send(make_email())
        settings = Settings(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port,
                            smtp_user="nudge", smtp_password="wrong-pw",
                            smtp_ca_file=cert[0], _env_file=None)  # fmt: skip
        with pytest.raises(ConfigError) as preflight:
            check_credentials(settings)
    assert result.status == "credential"  # was "failed": final for the row
    for text in (result.error or "", str(preflight.value)):
        assert text.startswith("NUDGE_SMTP_USER/NUDGE_SMTP_PASSWORD: ")
        assert "535" in text and "wrong-pw" not in text and "\n" not in text
    assert handler.envelopes == []


def test_a_refused_login_leaves_the_rows_pending_then_a_good_one_sends_each_once(
    cert,
    open_wh,  # noqa: F811
    settings,  # noqa: F811
    templates,  # noqa: F811
) -> None:
    add_pending(open_wh, ["a", "b", "c"])
    logins = Logins()
    logins.accept = False
    send = functools.partial(
        send_campaign,
        open_wh,
        CAMPAIGN,
        render=functools.partial(render_email, templates_dir=templates),
    )
    with relay(cert, "starttls", logins) as (handler, port):
        with pytest.raises(CredentialError, match=r"^NUDGE_SMTP_USER/NUDGE_SMTP_PASSWORD: "):
            send(backend(port, cert, "starttls"), settings, "run-refused")
        assert {(r["state"], r["attempts"]) for r in rows(open_wh).values()} == {("pending", 0)}
        assert handler.envelopes == []
        logins.accept = True
        report = send(backend(port, cert, "starttls"), settings, "run-good")
    assert report.sent == 3
    assert sorted(rcpts[0] for _, rcpts, _ in handler.envelopes) == [
        "a@example.com", "b@example.com", "c@example.com"
    ]  # fmt: skip
