"""What crosses between rendering, the send loop and a delivery backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class OutgoingEmail:
    campaign: str
    entity_id: str
    ledger_key: str  # unique per (campaign, entity, entry instant, step); "" for test sends
    from_addr: str
    to: tuple[str, ...]
    subject: str
    html: str
    text: str
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    # Always includes X-Nudge-Campaign and X-Nudge-Entity (and List-Unsubscribe when known).
    headers: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    unsubscribe_group_id: int | None = None
    # Signed unsubscribe links, one per recipient (address, link): each recipient gets a copy
    # whose bodies carry their link where the placeholder stands, and whose List-Unsubscribe
    # header is theirs (email_jobs.backends.copies). Empty: one message for all, as rendered.
    unsubscribe_placeholder: str = ""
    unsubscribe_links: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DeliveryResult:
    """One attempt's outcome.

    sent: the provider accepted the message (provider_message_id when it gives one).
    retryable: try again later (429, 5xx, timeout, dropped connection); retry_after_s when the
        provider said how long to wait.
    failed: permanent (400/413, invalid recipient); error holds the provider's own text.
    credential: the provider refused our credential (SendGrid 401/403, SMTP 530/535): nothing is
        wrong with this message; the send run stops and the row stays pending. error is one
        line naming the setting to fix, never its value.
    """

    status: Literal["sent", "retryable", "failed", "credential"]
    provider_message_id: str | None = None
    error: str | None = None
    retry_after_s: float | None = None


class CredentialError(Exception):
    """The provider refused the configured credential: one line naming the setting to fix."""


class Backend(Protocol):
    name: str

    def send(self, email: OutgoingEmail) -> DeliveryResult:
        """Make one delivery attempt. Must not raise for delivery problems: classify them."""
        ...

    def close(self) -> None: ...
