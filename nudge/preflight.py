"""Checks run before any work starts: each failure is one line naming the setting and the fix."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from nudge.settings import ConfigError, Settings


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
        from nudge.warehouse import connect

        with connect(settings):
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
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home.resolve()))
