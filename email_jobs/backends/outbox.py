"""Delivery into a folder: one `.eml` file a message (development, demos, dry runs)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from email_jobs.backends.copies import recipient_copies
from email_jobs.backends.mime import build_message
from email_jobs.message import DeliveryResult, OutgoingEmail

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def outbox_filename(email: OutgoingEmail) -> str:
    """A file name that is the same for the same ledger key (a retry overwrites, not duplicates).

    The readable part is shortened and sanitized; the hash keeps two keys that sanitize alike apart.
    """
    if not email.ledger_key:  # a test send: always a new file
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        readable = _UNSAFE.sub("_", f"test-{email.campaign}-{email.entity_id}")[:80]
        return f"{readable}-{stamp}-{uuid.uuid4().hex[:8]}.eml"
    readable = _UNSAFE.sub("_", email.ledger_key).strip("._")[:80] or "message"
    digest = hashlib.sha256(email.ledger_key.encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}.eml"


class OutboxBackend:
    name = "outbox"

    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = Path(outbox_dir)

    def send(self, email: OutgoingEmail) -> DeliveryResult:
        copies = recipient_copies(email)
        try:
            # One file a message (the contract's outbox). With signed unsubscribe links it is the
            # main To's copy: nobody receives an outbox file, so no link reaches another person.
            msgs = [
                (
                    self.outbox_dir / outbox_filename(email),
                    build_message(email, include_bcc=True, copy=copies[0] if copies else None),
                )
            ]
            files = [(path, msg.as_bytes()) for path, msg in msgs]
        except (ValueError, TypeError, UnicodeError) as exc:
            return DeliveryResult(status="failed", error=f"cannot build the message: {exc}")
        for path, data in files:
            result = self._write(path, data)
            if result is not None:
                return result
        return DeliveryResult(status="sent", provider_message_id=msgs[0][1]["Message-ID"])

    def _write(self, path: Path, data: bytes) -> DeliveryResult | None:
        """Write one file atomically; None when written, else the failure."""
        try:
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            # tmp file in the same folder + rename: a reader never sees half a message.
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".eml", dir=self.outbox_dir)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except PermissionError as exc:
            return DeliveryResult(status="failed", error=f"cannot write {path}: {exc}")
        except OSError as exc:  # disk full and the like: may pass
            return DeliveryResult(status="retryable", error=f"cannot write {path}: {exc}")
        log.debug("wrote %s", path)
        return None

    def close(self) -> None:
        pass
