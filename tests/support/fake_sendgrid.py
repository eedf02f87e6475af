"""A local stand-in for SendGrid's v3 API: mail send and the suppression lists.

In a test:

    with FakeSendGrid(api_key="SG.test") as sg:
        sg.fail_next(Fault.rate_limited(retry_after=7), Fault.server_error(503))
        ... NUDGE_SENDGRID_HOST=sg.url, SENDGRID_API_KEY="SG.test" ...
        assert len(sg.messages) == 1

As a process (for tests that SIGKILL a real `nudge run` against it):

    python -m tests.support.fake_sendgrid --api-key SG.test --record /tmp/sent.jsonl
    # prints the port on its first line, then serves until killed

A separate process is driven over HTTP: GET /_fake/messages, POST /_fake/faults (a JSON list of
Fault fields), POST /_fake/suppressions ({"bounces": [...], ...}), POST /_fake/reset,
POST /_fake/delay ({"delay_s": 0.5}: every mail send answers that much later), POST /_fake/gate
({"closed": true}: mail sends wait until it opens again), GET /_fake/waiting (how many wait at
the gate), POST /_fake/key ({"api_key": ...}: the key it accepts from now on).

GET /v3/scopes answers the key's scopes (`scopes`, default mail.send and the suppression reads),
401 for a wrong key: what preflight reads.

What it checks of a mail send: the Bearer key (401 otherwise), the JSON shape SendGrid insists on
(personalizations with `to`, from, subject, content, unique recipients, string custom_args, at
most 10 categories, no reserved headers; 400 with SendGrid's `{"errors": [...]}` otherwise) and
the body size (413). Accepted: 202 with an X-Message-Id (200 without one in sandbox mode).
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SUPPRESSION_LISTS = {
    "/v3/suppression/bounces": "bounces",
    "/v3/suppression/unsubscribes": "unsubscribes",
    "/v3/suppression/spam_reports": "spam_reports",
}
RESERVED_HEADERS = {
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
}  # fmt: skip
UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"


@dataclass
class Fault:
    """What the next mail-send request gets instead of a normal answer."""

    status: int | None = None  # answer with this status (and `body`) instead of 202
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    delay_s: float = 0.0  # wait this long before answering (cut short when the server stops)
    drop: bool = False  # read the request, then close the connection without an answer

    @classmethod
    def rate_limited(cls, retry_after: float | None = None, reset_at: float | None = None) -> Fault:
        headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0"}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if reset_at is not None:
            headers["X-RateLimit-Reset"] = str(int(reset_at))
        return cls(429, headers, _errors("too many requests"))

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls(
            status, {}, _errors("Internal server error" if status == 500 else "Service Unavailable")
        )

    @classmethod
    def too_large(cls) -> Fault:
        return cls(
            413, {}, _errors("The JSON payload you have included in your request is too large.")
        )

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls(delay_s=seconds)

    @classmethod
    def dropped(cls) -> Fault:
        return cls(drop=True)


def _errors(message: str, field_name: str | None = None) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field_name, "help": None}]}


def _bad_address(value: Any) -> bool:
    return (
        not isinstance(value, str)
        or value.count("@") != 1
        or any(c.isspace() for c in value)
        or not all(value.split("@"))
    )


def validate_mail_send(body: Any) -> tuple[str, str | None] | None:
    """The first problem SendGrid would report, as (message, field), or None when acceptable."""
    if not isinstance(body, dict):
        return "Bad Request", None
    perso = body.get("personalizations")
    if not isinstance(perso, list) or not perso:
        return (
            "The personalizations field is required and must have at least one personalization.",
            "personalizations",
        )
    for i, p in enumerate(perso):
        if not isinstance(p, dict) or not isinstance(p.get("to"), list) or not p["to"]:
            return (
                "The to array is required for all personalization objects, and must have at "
                "least one email object with a valid email address.",
                f"personalizations.{i}.to",
            )
        seen: set[str] = set()
        for kind in ("to", "cc", "bcc"):
            if kind in p and (not isinstance(p[kind], list) or not p[kind]):
                return f"The {kind} array must have at least one email object.", (
                    f"personalizations.{i}.{kind}"
                )
            for j, recipient in enumerate(p.get(kind) or []):
                address = recipient.get("email") if isinstance(recipient, dict) else None
                if _bad_address(address):
                    return (
                        "Does not contain a valid address.",
                        f"personalizations.{i}.{kind}.{j}.email",
                    )
                if address.lower() in seen:
                    return (
                        "Each email address in the personalization block should be unique between "
                        f"to, cc, and bcc. We found the first duplicate instance of [{address}] in "
                        f"the personalizations.{i}.{kind} field.",
                        f"personalizations.{i}",
                    )
                seen.add(address.lower())
    sender = body.get("from")
    if not isinstance(sender, dict) or _bad_address(sender.get("email")):
        return (
            "The from object must be provided for every email send. It is an object that requires "
            "the email parameter, but may also contain a name parameter.",
            "from.email",
        )
    has_template = bool(body.get("template_id"))
    subject = body.get("subject")
    if not has_template and not (isinstance(subject, str) and subject):
        if not all(isinstance(p.get("subject"), str) and p["subject"] for p in perso):
            return (
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
    if isinstance(subject, str) and ("\r" in subject or "\n" in subject):
        return "The subject may not contain line breaks.", "subject"
    content = body.get("content")
    if not has_template:
        if not isinstance(content, list) or not content:
            return (
                "Unless a valid template_id is provided, the content parameter is required. There "
                "must be at least one defined content block.",
                "content",
            )
        for k, block in enumerate(content):
            if not isinstance(block, dict) or not block.get("type"):
                return "The content type must be a string at least one character in length.", (
                    f"content.{k}.type"
                )
            if not isinstance(block.get("value"), str) or not block["value"]:
                return "The content value must be a string at least one character in length.", (
                    f"content.{k}.value"
                )
        types = [block["type"] for block in content]
        if "text/plain" in types and types[0] != "text/plain":
            return "If present, text/plain content must be first, followed by any other content.", (
                "content"
            )
    categories = body.get("categories", [])
    if not isinstance(categories, list) or len(categories) > 10:
        return "Too many categories: at most 10 may be given.", "categories"
    if any(not isinstance(c, str) or len(c) > 255 for c in categories):
        return "A category must be a string of at most 255 characters.", "categories"
    for name, value in (body.get("custom_args") or {}).items():
        if not isinstance(value, str):
            return f"Invalid type. Expected: string, given: {type(value).__name__}.", (
                f"custom_args.{name}"
            )
    for name, value in (body.get("headers") or {}).items():
        if name.lower() in RESERVED_HEADERS:
            return f"The header {name!r} is reserved and may not be set.", f"headers.{name}"
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            return "Header values must be strings without line breaks.", f"headers.{name}"
    if len(perso) > 1000:
        return "The personalizations field may hold at most 1000 objects.", "personalizations"
    for i, p in enumerate(perso):
        for name, value in (p.get("headers") or {}).items():
            if name.lower() in RESERVED_HEADERS:
                return f"The header {name!r} is reserved and may not be set.", (
                    f"personalizations.{i}.headers.{name}"
                )
            if not isinstance(value, str) or "\r" in value or "\n" in value:
                return "Header values must be strings without line breaks.", (
                    f"personalizations.{i}.headers.{name}"
                )
        subs = p.get("substitutions") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in subs.items()):
            return "Substitutions must be strings.", f"personalizations.{i}.substitutions"
        if len(json.dumps(subs)) > 10_000:  # SendGrid's limit per personalization
            return "Substitutions may total at most 10000 bytes.", (
                f"personalizations.{i}.substitutions"
            )
    asm = body.get("asm")
    if asm is not None and not (isinstance(asm, dict) and isinstance(asm.get("group_id"), int)):
        return "The asm group_id must be an integer.", "asm.group_id"
    return None


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 refuses connections under a few dozen concurrent senders.
    request_queue_size = 256


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | None  # None: the connection was dropped


class FakeSendGrid:
    """A SendGrid v3 stand-in on 127.0.0.1 (port 0 unless given); see the module docstring."""

    def __init__(
        self,
        api_key: str = "SG.fake-key",
        *,
        delay_s: float = 0.0,
        port: int = 0,
        record_path: Path | None = None,
        max_body_bytes: int = 30 * 1024 * 1024,
        scopes: tuple[str, ...] = ("mail.send", "suppression.read"),
    ) -> None:
        self.api_key = api_key
        self.scopes = list(scopes)
        self.delay_s = delay_s  # every mail-send answer waits this long
        # Closed: mail sends wait here (counted in `waiting`) until it opens.
        self._gate = threading.Event()
        self._gate.set()
        self.waiting = 0
        self.record_path = Path(record_path) if record_path else None
        self.max_body_bytes = max_body_bytes
        self.messages: list[dict[str, Any]] = []  # accepted mail-send bodies, in order
        self.message_ids: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.suppressions: dict[str, list[dict[str, Any]]] = {
            name: [] for name in SUPPRESSION_LISTS.values()
        }
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- control
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *faults: Fault) -> None:
        """The next mail-send requests get these faults, one each, in order."""
        with self._lock:
            self._faults.extend(faults)

    def set_suppressions(self, **lists: list[dict[str, Any]]) -> None:
        """bounces=[{"email": ..., "created": epoch, "reason": ...}], unsubscribes=..., ..."""
        with self._lock:
            for name, entries in lists.items():
                if name not in self.suppressions:
                    raise ValueError(f"unknown suppression list {name!r}")
                self.suppressions[name] = list(entries)

    def close_gate(self) -> None:
        """Mail sends from now on wait (unanswered) until `open_gate`."""
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def _pass_gate(self) -> None:
        if self._gate.is_set():
            return
        with self._lock:
            self.waiting += 1
        try:
            while not self._gate.wait(0.05) and not self._stopping.is_set():
                pass
        finally:
            with self._lock:
                self.waiting -= 1

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.message_ids.clear()
            self.requests.clear()
            self._faults.clear()

    def start(self) -> FakeSendGrid:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases handlers waiting on a slow fault
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler
    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _accept(self, body: dict[str, Any]) -> str:
        message_id = secrets.token_urlsafe(16)
        with self._lock:
            self.messages.append(body)
            self.message_ids.append(message_id)
            if self.record_path is not None:
                with self.record_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"message_id": message_id, "body": body}) + "\n")
        return message_id

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def _make_handler(fake: FakeSendGrid) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeSendGrid/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode("utf-8")
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if data:
                self.wfile.write(data)

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {fake.api_key}"

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/_fake/waiting":
                with fake._lock:
                    self._send_json(200, {"waiting": fake.waiting})
                return
            if url.path.rstrip("/") == "/v3/scopes":
                if not self._authorized():
                    self._send_json(401, _errors(UNAUTHORIZED))
                else:
                    self._send_json(200, {"scopes": list(fake.scopes)})
                return
            if url.path == "/_fake/messages":
                with fake._lock:
                    data = [
                        {"message_id": i, "body": m}
                        for i, m in zip(fake.message_ids, fake.messages, strict=True)
                    ]
                self._send_json(200, data)
                return
            name = SUPPRESSION_LISTS.get(url.path.rstrip("/"))
            if name is None:
                self._send_json(404, _errors("resource not found"))
                return
            if not self._authorized():
                self._send_json(401, _errors(UNAUTHORIZED))
                return
            query = parse_qs(url.query)
            start = float(query.get("start_time", ["0"])[0])
            end = float(query.get("end_time", ["inf"])[0])
            offset = int(query.get("offset", ["0"])[0])
            limit = int(query.get("limit", ["500"])[0])
            with fake._lock:
                entries = [
                    e for e in fake.suppressions[name] if start <= e.get("created", 0) <= end
                ]
            self._send_json(200, entries[offset : offset + limit])

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            raw = self._read_body()
            if url.path.startswith("/_fake/"):
                self._control(url.path, raw)
                return
            if url.path.rstrip("/") != "/v3/mail/send":
                self._send_json(404, _errors("resource not found"))
                return
            headers = dict(self.headers.items())
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            fake._pass_gate()
            fault = fake._next_fault()
            fake._wait(fake.delay_s + (fault.delay_s if fault else 0.0))
            if fault is not None and fault.drop:
                fake._record(RecordedRequest("POST", url.path, headers, body, None))
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            status, answer, extra = self._mail_send(raw, body, fault)
            fake._record(RecordedRequest("POST", url.path, headers, body, status))
            self._send_json(status, answer, extra)

        def _mail_send(
            self, raw: bytes, body: Any, fault: Fault | None
        ) -> tuple[int, Any, dict[str, str]]:
            if not self._authorized():
                return 401, _errors(UNAUTHORIZED), {}
            if fault is not None and fault.status is not None:
                return fault.status, fault.body, fault.headers
            if len(raw) > fake.max_body_bytes:
                return 413, Fault.too_large().body, {}
            if not isinstance(body, dict):
                return 400, _errors("Bad Request"), {}
            problem = validate_mail_send(body)
            if problem is not None:
                return 400, _errors(*problem), {}
            message_id = fake._accept(body)
            sandbox = (body.get("mail_settings") or {}).get("sandbox_mode", {}).get("enable")
            if sandbox:  # SendGrid validates, answers 200, and delivers nothing
                return 200, None, {}
            return 202, None, {"X-Message-Id": message_id}

        def _control(self, path: str, raw: bytes) -> None:
            data = json.loads(raw) if raw else None
            if path == "/_fake/faults":
                fake.fail_next(*(Fault(**f) for f in data or []))
            elif path == "/_fake/suppressions":
                fake.set_suppressions(**(data or {}))
            elif path == "/_fake/reset":
                fake.reset()
            elif path == "/_fake/delay":
                fake.delay_s = float((data or {}).get("delay_s", 0.0))
            elif path == "/_fake/gate":
                (fake.close_gate if (data or {}).get("closed") else fake.open_gate)()
            elif path == "/_fake/key":
                fake.api_key = str((data or {})["api_key"])
            else:
                self._send_json(404, _errors("unknown control path"))
                return
            self._send_json(200, {"ok": True})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a fake SendGrid v3 API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="SG.fake-key")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--record", type=Path, help="append accepted messages here (JSON lines)")
    parser.add_argument("--faults", default="[]", help="JSON list of Fault fields, in order")
    args = parser.parse_args(argv)
    fake = FakeSendGrid(args.api_key, delay_s=args.delay, port=args.port, record_path=args.record)
    fake.fail_next(*(Fault(**f) for f in json.loads(args.faults)))
    print(fake.port, flush=True)
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake._server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
