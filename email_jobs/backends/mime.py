"""An OutgoingEmail as an RFC 5322 message (outbox files and SMTP)."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from email_jobs.backends.copies import RecipientCopy
from email_jobs.message import OutgoingEmail

log = logging.getLogger(__name__)

_SPACES = re.compile(r"\s+")
_LONG_LINES = policy.default.clone(max_line_length=998)


def clean_header_value(value: str) -> str:
    """One line: CR, LF and tabs as single spaces, other control characters (NUL...) dropped."""
    chars = (
        " " if ch in "\r\n\t\v\f" or unicodedata.category(ch) in ("Zl", "Zp") else ch
        for ch in value
        if ch in "\r\n\t\v\f" or unicodedata.category(ch) != "Cc"
    )
    return _SPACES.sub(" ", "".join(chars)).strip()


def set_header(msg: EmailMessage, name: str, value: str) -> None:
    """Set a header; a value with CR/LF (refused by EmailMessage) is stripped, never split."""
    try:
        msg[name] = value
    except ValueError:
        log.warning("header %s carried line breaks or control characters; stripped them", name)
        msg[name] = clean_header_value(value)


def envelope_sender(from_addr: str) -> str:
    """The bare address of a From value that may be written `Name <addr>`."""
    return parseaddr(from_addr)[1] or from_addr


def message_id(email: OutgoingEmail) -> str:
    """A Message-ID stable per ledger key, so a retried send carries the same id."""
    domain = envelope_sender(email.from_addr).rpartition("@")[2] or "nudge.localhost"
    if not email.ledger_key:
        return make_msgid(idstring="nudge", domain=domain)
    digest = hashlib.sha256(email.ledger_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}.nudge@{domain}>"


def build_message(
    email: OutgoingEmail, *, include_bcc: bool = False, copy: RecipientCopy | None = None
) -> EmailMessage:
    """multipart/alternative (text, then HTML) with every header the email carries.

    The Bcc header is written only when asked (the outbox keeps it as a record); a message that
    goes over the wire carries bcc recipients in the envelope alone. With `copy`, the subject,
    bodies and headers are that recipient's (email_jobs.backends.copies).
    """
    subject = copy.subject if copy else email.subject
    headers = copy.headers if copy else email.headers
    # A signed link is one long word: folded at 78 it would be RFC 2047-encoded, which
    # List-Unsubscribe must never be (RFC 2369); 998 is RFC 5322's hard line limit.
    msg = EmailMessage(policy=_LONG_LINES) if copy else EmailMessage()
    set_header(msg, "From", email.from_addr)
    set_header(msg, "To", ", ".join(email.to))
    if email.cc:
        set_header(msg, "Cc", ", ".join(email.cc))
    if include_bcc and email.bcc:
        set_header(msg, "Bcc", ", ".join(email.bcc))
    set_header(msg, "Subject", subject)
    set_header(msg, "Date", formatdate(usegmt=True))
    set_header(msg, "Message-ID", message_id(email))
    for name, value in headers.items():
        if name.lower() in ("from", "to", "cc", "bcc", "subject", "date", "message-id"):
            continue  # never let a custom header override the envelope-relevant ones
        set_header(msg, clean_header_value(name), value)
    msg.set_content(copy.text if copy else email.text)
    msg.add_alternative(copy.html if copy else email.html, subtype="html")
    return msg


def all_recipients(email: OutgoingEmail) -> list[str]:
    """To, Cc and Bcc for the SMTP envelope, each once (case-insensitively)."""
    seen: set[str] = set()
    result = []
    for address in (*email.to, *email.cc, *email.bcc):
        if address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result
