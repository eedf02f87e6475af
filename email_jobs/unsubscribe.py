"""Signed unsubscribe links (contract "After the send"): pure, no I/O.

A token names the (campaign, entity, recipient address) it unsubscribes and carries an
HMAC-SHA256 of them under NUDGE_SECRET_KEY:

    base64url(json [version, campaign, entity, address]) "." base64url(mac)

so `nudge serve` needs no lookup to know whom a link is for, and nobody without the key can make
one for another address. The MAC covers a domain label too, so a MAC made for something else
with the same key is never a valid unsubscribe token. Tokens do not expire: an unsubscribe link
in an old email must keep working (RFC 8058 asks for it).

Every recipient of a message gets their own token (email_jobs.render), so a link that names an
address is only ever shown to that address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

from nudge.core.settings import ConfigError, Settings

VERSION = 1
_DOMAIN = b"nudge-unsubscribe\x00"
MAX_TOKEN_CHARS = 1536  # longer than any token we make (bounded fields); refused unread
_MAX_FIELD_CHARS = 320  # an address is at most 254; campaigns and entity ids are short
MIN_SECRET_CHARS = 16
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class UnsubscribeTarget:
    campaign: str
    entity_id: str
    address: str  # lower-cased, as the suppression list stores it


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), _DOMAIN + payload, hashlib.sha256).digest()


def make_token(secret: str, campaign: str, entity_id: str, address: str) -> str:
    fields = [VERSION, campaign, entity_id, address.strip().lower()]
    if any(len(str(f)) > _MAX_FIELD_CHARS for f in fields):
        raise ValueError("campaign, entity or address too long for an unsubscribe token")
    payload = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify_token(secret: str, token: str) -> UnsubscribeTarget | None:
    """The target a token names, or None when it is malformed, too long or not ours."""
    if not secret or not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    body, mac = token.split(".")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        return None
    # Constant time, and checked before the payload is parsed: nothing of a forged token is read.
    if not hmac.compare_digest(given, _mac(secret, payload)):
        return None
    try:
        fields = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    if (
        not isinstance(fields, list)
        or len(fields) != 4
        or fields[0] != VERSION
        or not all(isinstance(f, str) and f for f in fields[1:])
    ):
        return None
    return UnsubscribeTarget(fields[1], fields[2], fields[3])


def unsubscribe_link(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/u/{token}"


def signed_links(settings: Settings) -> bool:
    """Whether links are signed (NUDGE_SECRET_KEY and NUDGE_PUBLIC_URL both set)."""
    return bool(settings.secret_key and settings.public_url)


def link_for(settings: Settings, campaign: str, entity_id: str, address: str) -> str:
    """The recipient's own link; call only when `signed_links(settings)`."""
    assert settings.secret_key is not None and settings.public_url
    token = make_token(settings.secret_key.get_secret_value(), campaign, entity_id, address)
    return unsubscribe_link(settings.public_url, token)


def check_unsubscribe_ready(
    settings: Settings, backend: str, campaigns: Iterable[tuple[str, int | None]]
) -> None:
    """smtp and sendgrid refuse to start without signed links, unless every campaign that sends
    (given as (name, unsubscribe_group_id)) has a SendGrid unsubscribe group to fall back on.
    One line naming what to set."""
    if backend not in ("smtp", "sendgrid") or signed_links(settings):
        return
    ungrouped = sorted(name for name, group in campaigns if group is None)
    if not ungrouped:
        return
    given = {"NUDGE_SECRET_KEY": settings.secret_key, "NUDGE_PUBLIC_URL": settings.public_url}
    missing = [name for name, value in given.items() if not value]
    raise ConfigError(
        f"{' and '.join(missing)}: the {backend} backend needs them for the unsubscribe link of "
        f"every message (campaign {ungrouped[0]!r} names no unsubscribe_group_id); set "
        "NUDGE_SECRET_KEY to a long random string and NUDGE_PUBLIC_URL to where `nudge serve` "
        "is reached"
    )
