"""Delivery through SendGrid's v3 Mail Send API, with the official `sendgrid` client.

Thread safety: the client (python_http_client) keeps its request headers in a dict it mutates on
every request, so each thread gets its own SendGridAPIClient (threading.local). Nothing else is
shared, and every request opens its own HTTP connection, so a small pool of sender threads is safe.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from email_jobs.backends.copies import LIST_UNSUBSCRIBE, LIST_UNSUBSCRIBE_POST, recipient_copies
from email_jobs.backends.mime import clean_header_value
from email_jobs.message import CredentialError, DeliveryResult, OutgoingEmail
from nudge.core.settings import ConfigError, Settings

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.sendgrid.com"
DEFAULT_TIMEOUT_S = 20.0
# Headers SendGrid sets itself and refuses in `headers` (its docs list them as reserved).
_RESERVED_HEADERS = frozenset(
    {
        "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
        "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
    }
)  # fmt: skip
_PERMANENT = frozenset({400, 404, 405, 413, 415})
# Our key, not the message: the run stops and the rows stay pending (email_jobs.send).
_CREDENTIAL = frozenset({401, 403})
REQUIRED_SCOPE = "mail.send"


def credential_text(status: int, body: bytes | str | None) -> str:
    """One line naming the setting to fix; SendGrid's words, never the key."""
    return (
        f"SENDGRID_API_KEY: SendGrid refused the API key ({sendgrid_error_text(status, body)}); "
        f"set a valid key with the {REQUIRED_SCOPE} permission"
    )


def _address(value: str) -> dict[str, str]:
    name, address = parseaddr(value)
    return {"email": address or value, "name": name} if name else {"email": address or value}


def mail_send_payload(email: OutgoingEmail, *, sandbox: bool = False) -> dict[str, Any]:
    """The v3 /mail/send JSON body for one message."""
    seen = {a.lower() for a in email.to}

    def unique(addresses: tuple[str, ...]) -> list[dict[str, str]]:
        out = []
        for a in addresses:
            if a.lower() not in seen:  # SendGrid refuses an address twice in one personalization
                seen.add(a.lower())
                out.append({"email": a})
        return out

    personalization: dict[str, Any] = {"to": [{"email": a} for a in email.to]}
    if cc := unique(email.cc):
        personalization["cc"] = cc
    if bcc := unique(email.bcc):
        personalization["bcc"] = bcc
    personalizations = [personalization]
    if copies := recipient_copies(email):
        # One personalization per recipient: SendGrid puts their own link in the bodies (a
        # substitution of the placeholder) and their own List-Unsubscribe headers on the copy.
        link_names = {LIST_UNSUBSCRIBE.lower(), LIST_UNSUBSCRIBE_POST.lower()}
        personalizations = []
        for copy in copies:
            own: dict[str, Any] = {"to": [{"email": copy.address}]}
            if email.unsubscribe_placeholder:
                own["substitutions"] = {email.unsubscribe_placeholder: copy.link}
            if email.unsubscribe_group_id is None:  # else SendGrid writes the group's own
                own["headers"] = {
                    k: clean_header_value(v)
                    for k, v in copy.headers.items()
                    if k.lower() in link_names
                }
            personalizations.append(own)
    payload: dict[str, Any] = {
        "personalizations": personalizations,
        "from": _address(email.from_addr),
        "subject": clean_header_value(email.subject),
        "content": [
            {"type": "text/plain", "value": email.text},
            {"type": "text/html", "value": email.html},
        ],
        "custom_args": {
            "nudge_campaign": email.campaign,
            "nudge_entity": email.entity_id,
            "nudge_key": email.ledger_key,
        },
    }
    headers = {
        clean_header_value(k): clean_header_value(v)
        for k, v in email.headers.items()
        if k.lower() not in _RESERVED_HEADERS
    }
    if email.unsubscribe_group_id is not None:
        payload["asm"] = {"group_id": int(email.unsubscribe_group_id)}
        # SendGrid writes List-Unsubscribe for the group; two would confuse mailbox providers.
        headers = {
            k: v
            for k, v in headers.items()
            if k.lower() not in ("list-unsubscribe", "list-unsubscribe-post")
        }
    if headers:
        payload["headers"] = headers
    if email.categories:
        payload["categories"] = [c[:255] for c in email.categories[:10]]
    if sandbox:
        payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
    return payload


def sendgrid_error_text(status: int, body: bytes | str | None) -> str:
    """SendGrid's own words: the `errors[].message` (and field) of its JSON body."""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        errors = json.loads(raw).get("errors") or []
        parts = [
            f"{e.get('message')}" + (f" (field: {e['field']})" if e.get("field") else "")
            for e in errors
            if isinstance(e, dict)
        ]
    except (ValueError, AttributeError):
        parts = []
    text = "; ".join(parts) if parts else raw.strip()[:500]
    return f"SendGrid {status}: {text}" if text else f"SendGrid {status}"


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date) or `X-RateLimit-Reset` (epoch)."""
    if headers is None:
        return None
    now = time.time() if now is None else now
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(retry_after).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            value = float(reset)
        except ValueError:
            return None
        # SendGrid sends a Unix time; a small number can only be a delay in seconds.
        return max(0.0, value - now) if value > 1e9 else max(0.0, value)
    return None


class SendGridBackend:
    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        *,
        host: str | None = None,
        sandbox: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not api_key:
            raise ConfigError("NUDGE_EMAIL_BACKEND=sendgrid needs SENDGRID_API_KEY")
        self._api_key = api_key
        self.host = (host or DEFAULT_HOST).rstrip("/")
        self.sandbox = sandbox
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings) -> SendGridBackend:
        key = settings.sendgrid_api_key.get_secret_value() if settings.sendgrid_api_key else ""
        return cls(key, host=settings.sendgrid_host, sandbox=settings.sendgrid_sandbox)

    def _client(self) -> SendGridAPIClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = SendGridAPIClient(self._api_key, host=self.host)
            client.client.timeout = self.timeout  # propagated to every request it builds
            self._local.client = client
        return client

    def send(self, email: OutgoingEmail) -> DeliveryResult:
        payload = mail_send_payload(email, sandbox=self.sandbox)
        try:
            response = self._client().send(payload)
        except HTTPError as exc:  # python_http_client raises for every status >= 400
            return self._classify(exc.status_code, exc.body, exc.headers)
        except TimeoutError as exc:
            return DeliveryResult(
                status="retryable", error=f"SendGrid timed out after {self.timeout}s: {exc}"
            )
        except (OSError, http.client.HTTPException) as exc:
            # URLError (refused, DNS, timeout while connecting), RemoteDisconnected, resets.
            return DeliveryResult(
                status="retryable", error=f"SendGrid unreachable: {type(exc).__name__}: {exc}"
            )
        return self._classify(response.status_code, response.body, response.headers)

    def _classify(self, status: int, body: bytes | str | None, headers: Any) -> DeliveryResult:
        if 200 <= status < 300:
            message_id = headers.get("X-Message-Id") if headers is not None else None
            return DeliveryResult(status="sent", provider_message_id=message_id)
        error = sendgrid_error_text(status, body)
        if status == 429:
            return DeliveryResult(
                status="retryable", error=error, retry_after_s=retry_after_seconds(headers)
            )
        if status in _CREDENTIAL:
            return DeliveryResult(status="credential", error=credential_text(status, body))
        if status in _PERMANENT:
            return DeliveryResult(status="failed", error=error)
        # 5xx and anything unexpected: SendGrid's guidance is to retry later.
        return DeliveryResult(
            status="retryable", error=error, retry_after_s=retry_after_seconds(headers)
        )

    def verify(self) -> None:
        """Preflight: an authenticated read of the key's scopes (GET /v3/scopes); raises
        CredentialError unless SendGrid accepts the key and it may send mail. Unreachable:
        raises OSError (a retryable outage is not a credential problem)."""
        try:
            response = self._client().client.scopes.get()
        except HTTPError as exc:
            if exc.status_code in _CREDENTIAL:
                raise CredentialError(credential_text(exc.status_code, exc.body)) from None
            raise OSError(sendgrid_error_text(exc.status_code, exc.body)) from None
        try:
            scopes = json.loads(response.body or b"{}").get("scopes") or []
        except (ValueError, AttributeError):
            scopes = []
        if REQUIRED_SCOPE not in scopes:
            raise CredentialError(
                f"SENDGRID_API_KEY: the API key lacks the {REQUIRED_SCOPE} permission; give it "
                "Mail Send access in SendGrid (Settings > API Keys)"
            )

    def close(self) -> None:
        self._local = threading.local()
