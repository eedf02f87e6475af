"""One copy of a message per recipient, each with its own unsubscribe link.

A signed unsubscribe link names the address it unsubscribes, so it must reach that address
only: a message with signed links (OutgoingEmail.unsubscribe_links) goes out as one copy per
recipient (To, then CC, then BCC), identical but for the link in its bodies and its
List-Unsubscribe / List-Unsubscribe-Post headers (RFC 8058). How each backend delivers them:

- smtp: one SMTP transaction per copy, to that one address; the visible To and Cc headers stay
  those of the whole message, so a reply-all still reaches the account's team.
- outbox: one `.eml` file a message (the contract's outbox), the main To's copy: an outbox file
  reaches nobody.
- sendgrid: one personalization per copy (SendGrid writes the To header from it, so each copy
  is addressed to its recipient alone) with the link as a substitution and per-copy headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from email_jobs.message import OutgoingEmail
from email_jobs.unsubscribe import ONE_CLICK

LIST_UNSUBSCRIBE = "List-Unsubscribe"
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe-Post"


@dataclass(frozen=True)
class RecipientCopy:
    address: str
    link: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]  # the message's headers plus this recipient's List-Unsubscribe*


def link_headers(link: str) -> dict[str, str]:
    return {LIST_UNSUBSCRIBE: f"<{link}>", LIST_UNSUBSCRIBE_POST: ONE_CLICK}


def recipient_copies(email: OutgoingEmail) -> list[RecipientCopy]:
    """The per-recipient copies; empty when the message has no signed links."""
    placeholder = email.unsubscribe_placeholder
    copies = []
    for address, link in email.unsubscribe_links:

        def fill(text: str, link: str = link) -> str:
            return text.replace(placeholder, link) if placeholder else text

        copies.append(
            RecipientCopy(
                address=address,
                link=link,
                subject=fill(email.subject),
                html=fill(email.html),
                text=fill(email.text),
                headers={**email.headers, **link_headers(link)},
            )
        )
    return copies
