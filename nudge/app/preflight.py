"""Checks run before any work starts: each failure is one line naming the setting and the fix."""

from __future__ import annotations

import os
import smtplib
import socket
import tempfile
from pathlib import Path

from nudge.core.settings import ConfigError, Settings


def _writable_dir(path: Path, variable: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nudge-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{variable}={path}: not a writable folder ({exc.strerror or exc}); "
            "point it at a folder this user can write"
        ) from None


def check_ready(settings: Settings, *, need_landing: bool = True) -> None:
    wh = settings.warehouse_url
    if wh.kind == "duckdb":
        _writable_dir(wh.path.parent, "NUDGE_WAREHOUSE")
    else:
        from nudge.core.warehouse import connect

        with connect(settings):
            pass
    state = settings.state_store_url
    if not settings.state_is_warehouse:
        if state.kind == "duckdb":
            _writable_dir(state.path.parent, "NUDGE_STATE_STORE")
        else:
            from nudge.core.warehouse import connect_state

            with connect_state(settings):
                pass
    if need_landing and not settings.landing_dir.is_dir():
        raise ConfigError(
            f"NUDGE_LANDING_DIR={settings.landing_dir}: no such folder; put the Moesif dumps there "
            "(events/dt=YYYY-MM-DD/, users/, companies/) or try `nudge generate --out "
            f"{settings.landing_dir}`"
        )
    if settings.email_backend == "outbox":
        _writable_dir(settings.outbox_dir, "NUDGE_OUTBOX_DIR")
    elif settings.email_backend == "smtp":
        try:
            with socket.create_connection((settings.smtp_host, settings.smtp_port), timeout=5):
                pass
        except OSError as exc:
            raise ConfigError(
                f"NUDGE_SMTP_HOST/NUDGE_SMTP_PORT: cannot reach {settings.smtp_host}:"
                f"{settings.smtp_port} ({exc.strerror or exc}); check the relay's address"
            ) from None
    check_credentials(settings)
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home.resolve()))


def check_credentials(settings: Settings) -> None:
    """Before anything is claimed: the provider accepts our credential (SendGrid: the key's
    scopes include mail.send; SMTP: connect, TLS as configured, log in). One line, no secret."""
    if settings.email_backend not in ("smtp", "sendgrid"):
        return
    from email_jobs.backends import make_backend, verify_backend
    from email_jobs.message import CredentialError

    backend = make_backend(settings)
    try:
        verify_backend(backend)
    except CredentialError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, smtplib.SMTPException) as exc:
        what = (
            "NUDGE_SENDGRID_HOST/SENDGRID_API_KEY"
            if settings.email_backend == "sendgrid"
            else "NUDGE_SMTP_HOST/NUDGE_SMTP_PORT/NUDGE_SMTP_TLS/NUDGE_SMTP_CA_FILE"
        )
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"{what}: could not verify the {settings.email_backend} credential "
            f"({type(exc).__name__}: {detail}); check the provider's address and TLS settings"
        ) from None
    finally:
        backend.close()
