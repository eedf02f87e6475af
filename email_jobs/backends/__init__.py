"""Delivery backends: outbox (files), smtp, sendgrid. All implement email_jobs.message.Backend."""

from __future__ import annotations

from email_jobs.message import Backend
from nudge.core.settings import ConfigError, Settings


def make_backend(settings: Settings) -> Backend:
    """The backend NUDGE_EMAIL_BACKEND names, configured from settings."""
    if settings.email_backend == "outbox":
        from email_jobs.backends.outbox import OutboxBackend

        return OutboxBackend(settings.outbox_dir)
    if settings.email_backend == "smtp":
        from email_jobs.backends.smtp import SmtpBackend

        return SmtpBackend.from_settings(settings)
    if settings.email_backend == "sendgrid":
        from email_jobs.backends.sendgrid import SendGridBackend

        return SendGridBackend.from_settings(settings)
    raise ConfigError(
        f"NUDGE_EMAIL_BACKEND={settings.email_backend!r}: use outbox, smtp or sendgrid"
    )


def verify_backend(backend: Backend) -> None:
    """The backend's own credential check (SendGrid: the key's scopes; SMTP: TLS and login),
    where it has one; raises email_jobs.message.CredentialError when the provider refuses it."""
    verify = getattr(backend, "verify", None)
    if verify is not None:
        verify()
