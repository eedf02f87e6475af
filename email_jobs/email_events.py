"""What comes back after the send: SendGrid's Event Webhook and unsubscribe links.

Pure parts (the signature check, parsing a webhook body) and the store path (nudge.email_events
and, for the events that mean "do not mail again", nudge.suppressions through
email_jobs.suppressions). `nudge serve` calls them directly on Postgres; on DuckDB it spools what
it received (email_jobs.event_spool) and the pipeline stores it here.

SendGrid signs a webhook request with ECDSA P-256 / SHA-256 over the bytes of the
`X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw body, and sends the DER
signature, base64, in `X-Twilio-Email-Event-Webhook-Signature`; the public key it shows is a
base64 DER SubjectPublicKeyInfo (SENDGRID_WEBHOOK_PUBLIC_KEY).

Events are matched to the ledger by the `nudge_key` custom arg (SendGrid puts custom args at the
top level of each event). A redelivery is recognized by (nudge_key, email, event, timestamp,
url): SendGrid retries for 72 hours and its sg_event_id is not stable across retries. The email
is part of the key because a message goes out as one copy per recipient
(email_jobs.backends.copies), all under one ledger key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from email_jobs.store import ensure_schema, utcnow
from email_jobs.suppressions import Suppression, store_suppressions, suppression_address
from email_jobs.unsubscribe import UnsubscribeTarget
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
EVENTS = frozenset(
    {
        "processed", "delivered", "deferred", "bounce", "dropped", "spamreport",
        "unsubscribe", "group_unsubscribe", "open", "click",
    }
)  # fmt: skip
# These mean: never mail the address again (contract "After the send").
SUPPRESSING = frozenset({"bounce", "dropped", "spamreport", "unsubscribe", "group_unsubscribe"})
EVENT_SOURCE_PREFIX = "sendgrid_event:"
UNSUBSCRIBE_SOURCE_PREFIX = "unsubscribe:"
MAX_EVENTS_PER_REQUEST = 20_000
_MAX_KEY = 512
_MAX_URL = 2000  # keeps the primary key within an index entry on Postgres
_MAX_TEXT = 1000
_MAX_ID = 200
_MAX_TS = 2**40  # Unix seconds; far beyond any real timestamp


# -- signature -------------------------------------------------------------------------------


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """SENDGRID_WEBHOOK_PUBLIC_KEY as SendGrid shows it (base64 DER); ValueError unless it is
    an EC P-256 public key."""
    try:
        key = load_der_public_key(base64.b64decode("".join(value.split()), validate=True))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not a base64 DER public key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify_signature(
    key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None, body: bytes
) -> bool:
    """Whether SendGrid signed (timestamp + body) with the key's private half."""
    if not signature or not timestamp or len(signature) > 256 or len(timestamp) > 32:
        return False
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature, UnicodeEncodeError):
        return False
    return True


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailEvent:
    nudge_key: str
    email: str
    event: str
    event_ts: int
    url: str
    campaign: str | None = None
    entity_id: str | None = None
    reason: str | None = None
    sg_event_id: str | None = None
    sg_message_id: str | None = None

    @property
    def dedupe_key(self) -> tuple[str, str, str, int, str]:
        return (self.nudge_key, self.email, self.event, self.event_ts, self.url)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def parse_event(item: Any) -> EmailEvent | None:
    """One webhook event, bounded and typed; None when it is not one we store."""
    if not isinstance(item, dict) or item.get("event") not in EVENTS:
        return None
    ts = item.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts < _MAX_TS:
        return None
    key = item.get("nudge_key")
    reason = item.get("reason") or item.get("response") or item.get("type")
    return EmailEvent(
        nudge_key=key if isinstance(key, str) and len(key) <= _MAX_KEY else "",
        email=suppression_address(item.get("email")) or "",
        event=item["event"],
        event_ts=int(ts),
        url=_text(item.get("url"), _MAX_URL) or "",
        campaign=_text(item.get("nudge_campaign"), _MAX_KEY),
        entity_id=_text(item.get("nudge_entity"), _MAX_KEY),
        reason=_text(reason, _MAX_TEXT),
        sg_event_id=_text(item.get("sg_event_id"), _MAX_ID),
        sg_message_id=_text(item.get("sg_message_id"), _MAX_ID),
    )


def parse_webhook(body: bytes) -> tuple[list[EmailEvent], int]:
    """(events to store, how many items were left out). ValueError when the body is not a
    JSON list of at most MAX_EVENTS_PER_REQUEST items."""
    try:
        items = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(items, list):
        raise ValueError("the body is not a JSON list of events")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise ValueError(f"more than {MAX_EVENTS_PER_REQUEST} events in one request")
    events = [e for e in map(parse_event, items) if e is not None]
    return events, len(items) - len(events)


def event_from_record(record: dict[str, Any]) -> EmailEvent:
    return EmailEvent(**{k: record.get(k) for k in EmailEvent.__dataclass_fields__})


# -- storing ---------------------------------------------------------------------------------


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def event_suppressions(events: Iterable[EmailEvent]) -> dict[str, list[Suppression]]:
    by_source: dict[str, dict[str, Suppression]] = {}
    for e in events:
        if e.event in SUPPRESSING and e.email:
            source = EVENT_SOURCE_PREFIX + e.event
            by_source.setdefault(source, {})[e.email] = Suppression(
                e.email, e.reason or e.event, source, _at(e.event_ts)
            )
    return {source: list(rows.values()) for source, rows in by_source.items()}


def unsubscribe_suppressions(
    targets: Iterable[tuple[UnsubscribeTarget, datetime]],
) -> dict[str, list[Suppression]]:
    by_source: dict[str, list[Suppression]] = {}
    for target, at in targets:
        source = UNSUBSCRIBE_SOURCE_PREFIX + target.campaign
        by_source.setdefault(source, []).append(
            Suppression(target.address, "unsubscribe link", source, at, target.entity_id)
        )
    return by_source


def _chunks(items: Sequence[Any], size: int = 400) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def store_events(wh: Warehouse, events: Sequence[EmailEvent]) -> int:
    """Insert the events not stored yet (a stored one is left alone); returns how many distinct
    events were given. Suppressing events reach nudge.suppressions first: a failure between the
    two leaves an event to store on redelivery, never an address to mail."""
    ensure_schema(wh)
    if suppressions := event_suppressions(events):
        store_suppressions(wh, suppressions)
    unique = list({e.dedupe_key: e for e in events}.values())
    now = utcnow()
    with wh.transaction():
        for part in _chunks(unique):
            values = [
                (e.nudge_key, e.email, e.event, e.event_ts, e.url, _at(e.event_ts), e.campaign,
                 e.entity_id, e.reason, e.sg_event_id, e.sg_message_id, now)
                for e in part
            ]  # fmt: skip
            wh.execute(
                "insert into nudge.email_events (nudge_key, email, event, event_ts, url, "
                "event_at, campaign, entity_id, reason, sg_event_id, sg_message_id, received_at) "
                "values "
                + ", ".join("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" for _ in part)
                + " on conflict do nothing",
                [v for row in values for v in row],
            )
    return len(unique)


def event_counts(wh: Warehouse) -> dict[str, int]:
    """How many events of each type nudge.email_events holds (0 for a type not seen yet)."""
    ensure_schema(wh)
    counts = dict.fromkeys(sorted(EVENTS), 0)
    for event, n in wh.fetchall("select event, count(*) from nudge.email_events group by event"):
        counts[event] = int(n)
    return counts


def store_unsubscribes(wh: Warehouse, targets: Sequence[tuple[UnsubscribeTarget, datetime]]) -> int:
    """Suppress each target's address (source `unsubscribe:<campaign>`); idempotent: an
    address already suppressed by that source adds nothing. Returns the new rows."""
    ensure_schema(wh)
    return store_suppressions(wh, unsubscribe_suppressions(targets))
