"""Delivery through an SMTP relay (NUDGE_SMTP_*).

Connections are pooled: a send borrows an idle connection (or opens one) and returns it when the
server is still talking, so one connection serves many messages and a small thread pool gets
one connection per worker. A connection that fails is dropped and the next send opens a new one.

TLS (NUDGE_SMTP_TLS): `starttls` upgrades the connection before anything else and fails when the
relay does not offer it; `implicit` speaks TLS from the first byte (SMTP_SSL, port 465); `none`
never authenticates. Certificates and host names are verified (the system's CAs, or
NUDGE_SMTP_CA_FILE). A refused login (530/535) is a credential problem, not the message's.
"""

from __future__ import annotations

import logging
import queue
import smtplib
import ssl

from email_jobs.backends.copies import RecipientCopy, recipient_copies
from email_jobs.backends.mime import all_recipients, build_message, envelope_sender
from email_jobs.message import CredentialError, DeliveryResult, OutgoingEmail
from nudge.core.settings import ConfigError, Settings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
TLS_MODES = ("starttls", "implicit", "none")
# Authentication required / credentials invalid: fix the login, not the message.
_CREDENTIAL_CODES = frozenset({530, 535})


def credential_text(code: int, reply: bytes | str) -> str:
    """One line naming the settings to fix; the relay's words, never the password."""
    return (
        f"NUDGE_SMTP_USER/NUDGE_SMTP_PASSWORD: the SMTP relay refused the login "
        f"({_reply_text(code, reply)}); set a valid user and password"
    )


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {text}".strip()


def _refused_text(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{rcpt}: {_reply_text(code, reply)}" for rcpt, (code, reply) in refused.items()
    )


def _classify_reply(code: int, reply: bytes | str, what: str) -> DeliveryResult:
    text = f"{what}: {_reply_text(code, reply)}"
    if 400 <= code < 500:
        return DeliveryResult(status="retryable", error=text)
    return DeliveryResult(status="failed", error=text)


class SmtpBackend:
    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: str | None = None,
        password: str | None = None,
        tls: str | None = None,
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        tls = tls or ("starttls" if password else "none")
        if tls not in TLS_MODES:
            raise ConfigError(f"NUDGE_SMTP_TLS={tls!r}: use starttls, implicit or none")
        if tls == "none" and (user or password):
            raise ConfigError(
                "NUDGE_SMTP_TLS=none with NUDGE_SMTP_USER/NUDGE_SMTP_PASSWORD would send the "
                "password in clear; set NUDGE_SMTP_TLS=starttls or implicit"
            )
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.tls, self.timeout = tls, timeout
        self._context = ssl.create_default_context(cafile=ca_file)  # verifies cert and host
        self._idle: queue.SimpleQueue[smtplib.SMTP] = queue.SimpleQueue()

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpBackend:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            user=settings.smtp_user,
            password=password,
            tls=settings.smtp_tls_mode,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
        )

    def _open(self) -> smtplib.SMTP:
        if self.tls == "implicit":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self._context
            )
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            conn.ehlo()
            if self.tls == "starttls":
                # Raises SMTPNotSupportedError when the relay does not offer it: never go on
                # in clear.
                conn.starttls(context=self._context)
                conn.ehlo()
            if self.user:
                conn.login(self.user, self.password or "")
        except smtplib.SMTPResponseException as exc:
            _quietly_close(conn)
            if exc.smtp_code in _CREDENTIAL_CODES:
                raise CredentialError(credential_text(exc.smtp_code, exc.smtp_error)) from None
            raise
        except BaseException:
            _quietly_close(conn)
            raise
        return conn

    def verify(self) -> None:
        """Preflight: connect, TLS as configured, log in; the connection then serves the first
        send. Raises CredentialError for a refused login, OSError/SMTPException otherwise."""
        self._idle.put(self._open())

    def _borrow(self) -> smtplib.SMTP:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return self._open()
            # An idle connection may have been closed by the server since; a NOOP tells.
            try:
                if conn.noop()[0] == 250:
                    return conn
            except (smtplib.SMTPException, OSError):
                pass
            _quietly_close(conn)

    def send(self, email: OutgoingEmail) -> DeliveryResult:
        copies = recipient_copies(email)
        if not copies:
            return self._send_one(email, None)
        # One transaction per recipient's copy (its own unsubscribe link). Once a copy went out,
        # a later one failing cannot make the row retryable: a retry would mail that one again.
        sent: DeliveryResult | None = None
        problems: list[str] = []
        for copy in copies:
            result = self._send_one(email, copy)
            if result.status == "sent":
                sent = sent or result
            elif sent is None and result.status in ("credential", "retryable"):
                return result  # nothing went out yet: the whole message may be tried again
            if result.error:
                problems.append(f"{copy.address}: {result.error}")
        if sent is None:
            return DeliveryResult(status="failed", error="; ".join(problems))
        if problems:
            log.warning("%s/%s: some copies failed: %s", email.campaign, email.entity_id, problems)
        return DeliveryResult(
            status="sent",
            provider_message_id=sent.provider_message_id,
            error="; ".join(problems) or None,
        )

    def _send_one(self, email: OutgoingEmail, copy: RecipientCopy | None) -> DeliveryResult:
        try:
            msg = build_message(email, copy=copy)
        except (ValueError, TypeError, UnicodeError) as exc:
            return DeliveryResult(status="failed", error=f"cannot build the message: {exc}")
        recipients = [copy.address] if copy else all_recipients(email)
        conn: smtplib.SMTP | None = None
        keep = False
        try:
            try:
                conn = self._borrow()
            except CredentialError as exc:
                return DeliveryResult(status="credential", error=str(exc))
            refused = conn.send_message(
                msg, from_addr=envelope_sender(email.from_addr), to_addrs=recipients
            )
            keep = True
        except smtplib.SMTPRecipientsRefused as exc:  # every recipient refused
            keep = True
            codes = [code for code, _ in exc.recipients.values()]
            detail = _refused_text(exc.recipients)
            status = "retryable" if all(400 <= c < 500 for c in codes) else "failed"
            return DeliveryResult(status=status, error=f"recipients refused: {detail}")
        except smtplib.SMTPResponseException as exc:  # sender refused, DATA refused, auth, 421...
            keep = exc.smtp_code != 421  # 421: the server is closing the channel
            if exc.smtp_code in _CREDENTIAL_CODES:  # e.g. 530 at MAIL FROM: a login is needed
                return DeliveryResult(
                    status="credential", error=credential_text(exc.smtp_code, exc.smtp_error)
                )
            return _classify_reply(exc.smtp_code, exc.smtp_error, type(exc).__name__)
        except (smtplib.SMTPException, OSError) as exc:  # refused/dropped connection, timeout
            return DeliveryResult(
                status="retryable",
                error=f"SMTP {self.host}:{self.port}: {type(exc).__name__}: {exc}",
            )
        finally:
            if conn is not None:
                if keep:
                    self._idle.put(conn)
                else:
                    _quietly_close(conn)
        if refused:
            detail = _refused_text(refused)
            if all(address in refused for address in email.to if address in recipients):
                # Others (cc) got it already: a retry would send them a second copy.
                return DeliveryResult(status="failed", error=f"recipient refused: {detail}")
            log.warning(
                "%s/%s: some recipients refused: %s", email.campaign, email.entity_id, detail
            )
            return DeliveryResult(
                status="sent", provider_message_id=msg["Message-ID"], error=detail
            )
        return DeliveryResult(status="sent", provider_message_id=msg["Message-ID"])

    def close(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                _quietly_close(conn)


def _quietly_close(conn: smtplib.SMTP) -> None:
    try:
        conn.close()
    except OSError:
        pass
