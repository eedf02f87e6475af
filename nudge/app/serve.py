"""`nudge serve`: the web service that listens after the send (contract "After the send").

GET /u/{token} shows whom a signed link unsubscribes and a button; it changes nothing (mail
scanners follow links). POST /u/{token} (the button, or a mailbox's RFC 8058 one-click POST)
suppresses that address from all Nudge email, source `unsubscribe:<campaign>`. POST
/webhooks/sendgrid takes SendGrid's signed Event Webhook. GET /healthz says whether it can record.

Starlette on uvicorn: both already ship with dagster-webserver (so no new dependency reaches the
images), both are small, maintained and typed, and an ASGI app runs in a thread inside a test.

Where it records: on Postgres, directly (short connect, statement and lock timeouts, so a
request never waits longer than its budget: it answers 503 and SendGrid retries); on DuckDB,
never the warehouse file (the pipeline may hold its single writer lock for minutes) but a
durable spool the pipeline loads (email_jobs.event_spool).

Every input is hostile: bodies are read up to a size cap within a time budget, tokens and
signatures are checked before anything is parsed, and no token, address or key is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from email_jobs.email_events import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EmailEvent,
    load_public_key,
    parse_webhook,
    store_events,
    store_unsubscribes,
    verify_signature,
)
from email_jobs.event_spool import probe_spool, spool_dir, unsubscribe_record, write_spool
from email_jobs.unsubscribe import MAX_TOKEN_CHARS, UnsubscribeTarget, verify_token
from nudge.core.settings import ConfigError, Settings

log = logging.getLogger(__name__)

WEBHOOK_MAX_BYTES = 1 << 20  # SendGrid batches events; a MiB is thousands of them
FORM_MAX_BYTES = 4096  # the one-click body is `List-Unsubscribe=One-Click`
BODY_SECONDS = 10.0  # a client that trickles its body is cut off
PG_TIMEOUT_MS = 5000  # statement and lock timeout on Postgres: the request's budget


class TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (TooLarge) past `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def bounded_body(request: Request, limit: int) -> bytes | Response:
    try:
        return await asyncio.wait_for(read_body(request, limit), BODY_SECONDS)
    except TooLarge:
        return PlainTextResponse("request body too large\n", status_code=413)
    except TimeoutError:
        return PlainTextResponse("request body too slow\n", status_code=408)


# -- recording ---------------------------------------------------------------------------------


class Recent:
    """Keys seen in the last `ttl_s` seconds (at most `size`, thread-safe): a byte-identical
    replay of a signed request, or a link clicked again, within that time is answered without
    writing again, so a replaying client cannot fill the disk. Bounded in time so that a click
    after an operator lifted the suppression is recorded again."""

    def __init__(self, size: int = 10_000, ttl_s: float = 300.0) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: bytes) -> bool:
        """True when the key was not seen within the time window."""
        digest = hashlib.sha256(key).digest()
        now = time.monotonic()
        with self._lock:
            while self._seen and (
                len(self._seen) > self.size or next(iter(self._seen.values())) < now - self.ttl_s
            ):
                self._seen.popitem(last=False)
            if digest in self._seen:
                return False
            self._seen[digest] = now
            return True

    def forget(self, key: bytes) -> None:
        with self._lock:
            self._seen.pop(hashlib.sha256(key).digest(), None)


class Recorder:
    """Where events and unsubscribes go: the spool (DuckDB) or Postgres."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool = spool_dir(settings)

    @contextmanager
    def _postgres(self):  # type: ignore[no-untyped-def]
        import psycopg2

        from nudge.core.warehouse import Warehouse

        url = self.settings.state_store_url
        conn = psycopg2.connect(
            host=url.host,
            port=url.port,
            user=url.user,
            password=url.password or None,
            dbname=url.database,
            connect_timeout=max(1, PG_TIMEOUT_MS // 1000),
            options=f"-c statement_timeout={PG_TIMEOUT_MS} -c lock_timeout={PG_TIMEOUT_MS}",
            application_name="nudge serve",
        )
        try:
            yield Warehouse(url, conn)
        finally:
            conn.close()

    def prepare(self) -> None:
        """At start: the spool folder, or the Postgres tables."""
        if self.spool is not None:
            probe_spool(self.spool)
            return
        from email_jobs.store import ensure_schema

        with self._postgres() as wh:
            ensure_schema(wh)

    def events(self, events: list[EmailEvent]) -> None:
        if self.spool is not None:
            write_spool(self.spool, [{"kind": "event", **e.as_record()} for e in events])
            return
        with self._postgres() as wh:
            store_events(wh, events)

    def unsubscribe(self, target: UnsubscribeTarget, at: datetime) -> None:
        if self.spool is not None:
            write_spool(self.spool, [unsubscribe_record(target, at)])
            return
        with self._postgres() as wh:
            store_unsubscribes(wh, [(target, at)])

    def healthy(self) -> bool:
        try:
            if self.spool is not None:
                probe_spool(self.spool)
            else:
                with self._postgres() as wh:
                    wh.fetchone("select count(*) from nudge.email_events where false")
        except Exception:
            log.warning("healthz: cannot record", exc_info=True)
            return False
        return True


# -- pages -------------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body), status_code=status, headers=_HEADERS
    )


def not_found() -> HTMLResponse:
    return page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)


# -- the app -----------------------------------------------------------------------------------


def create_app(
    settings: Settings, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Starlette:
    """The ASGI app. Raises ConfigError when a key it needs is missing or malformed."""
    if not settings.secret_key:
        raise ConfigError(
            "NUDGE_SECRET_KEY: `nudge serve` checks unsubscribe links with it; set the same "
            "value the sends use"
        )
    secret = settings.secret_key.get_secret_value()
    webhook_key = None
    if settings.sendgrid_webhook_public_key:
        try:
            webhook_key = load_public_key(settings.sendgrid_webhook_public_key)
        except ValueError as exc:
            raise ConfigError(
                f"SENDGRID_WEBHOOK_PUBLIC_KEY: {exc}; paste the verification key SendGrid shows "
                "under Mail Settings > Event Webhook > Signature Verification"
            ) from None
    recorder = Recorder(settings)
    recorder.prepare()
    recent = Recent()

    def target_of(request: Request) -> UnsubscribeTarget | None:
        token = request.path_params["token"]
        return verify_token(secret, token) if len(token) <= MAX_TOKEN_CHARS else None

    async def unsubscribe_page(request: Request) -> Response:
        target = target_of(request)
        if target is None:
            return not_found()
        address = html.escape(target.address)
        return page(
            "Unsubscribe",
            f"<p>Stop all emails from us to <strong>{address}</strong>?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" '
            'value="One-Click"><button type="submit">Unsubscribe</button></form>',
        )

    async def unsubscribe(request: Request) -> Response:
        body = await bounded_body(request, FORM_MAX_BYTES)
        if isinstance(body, Response):
            return body
        target = target_of(request)
        if target is None:
            return not_found()
        seen = f"u\0{target.campaign}\0{target.address}".encode()
        try:
            if recent.add(seen):
                await run_in_threadpool(recorder.unsubscribe, target, now().replace(tzinfo=None))
        except Exception:
            recent.forget(seen)
            log.exception("unsubscribe (campaign %s) could not be recorded", target.campaign)
            return page(
                "Please try again",
                "<p>We could not record this just now. Please try again in a minute.</p>",
                503,
            )
        log.info("unsubscribe recorded (campaign %s)", target.campaign)
        return page(
            "Unsubscribed",
            f"<p><strong>{html.escape(target.address)}</strong> will get no more emails "
            "from us.</p>",
        )

    async def sendgrid_webhook(request: Request) -> Response:
        if webhook_key is None:
            # Nothing can verify a signature: every request is refused as unsigned.
            return PlainTextResponse("webhook not configured\n", status_code=403)
        body = await bounded_body(request, WEBHOOK_MAX_BYTES)
        if isinstance(body, Response):
            return body
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not verify_signature(webhook_key, signature, timestamp, body):
            log.warning("webhook: unsigned or wrongly signed request refused")
            return PlainTextResponse("bad signature\n", status_code=403)
        try:
            events, ignored = parse_webhook(body)
        except ValueError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        seen = b"w\0" + (signature or "").encode() + b"\0" + body
        if events and recent.add(seen):  # a byte-identical replay was recorded already
            try:
                await run_in_threadpool(recorder.events, events)
            except Exception:
                recent.forget(seen)
                log.exception("webhook: %d event(s) could not be recorded", len(events))
                return PlainTextResponse("try again\n", status_code=503)
        return JSONResponse({"stored": len(events), "ignored": ignored})

    async def healthz(request: Request) -> Response:
        ok = await run_in_threadpool(recorder.healthy)
        return PlainTextResponse(
            "ok\n" if ok else "cannot record\n", status_code=200 if ok else 503
        )

    return Starlette(
        routes=[
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe, methods=["POST"]),
            Route("/webhooks/sendgrid", sendgrid_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def uvicorn_config(app: Any, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # a request line holds a token (an address and a capability)
        server_header=False,
        limit_concurrency=64,  # beyond: 503, rather than a queue that outgrows the budget
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,  # header block cap
        log_level="info",
        lifespan="off",
    )


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn_config(create_app(settings), host, port))
    log.info("nudge serve on http://%s:%d", host, port)
    server.run()
