"""A provider stand-in for the send loop's tests: scripted outcomes per recipient."""

from __future__ import annotations

import threading
from collections import Counter

from email_jobs.message import DeliveryResult, OutgoingEmail


class ScriptedBackend:
    """A provider stand-in: per recipient, a script of outcomes (the last repeats); an exception
    in the script is raised. Records every attempt. Default: accepted."""

    name = "scripted"

    def __init__(self, scripts: dict[str, list] | None = None, on_send=None) -> None:
        self.scripts = scripts or {}
        self.on_send = on_send
        self.attempts: list[OutgoingEmail] = []
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()

    def send(self, email: OutgoingEmail) -> DeliveryResult:
        with self._lock:
            self.attempts.append(email)
            n = sum(1 for e in self.attempts if e.to == email.to)
        if self.on_send:
            self.on_send(email)
        script = self.scripts.get(email.to[0], [])
        outcome = script[min(n - 1, len(script) - 1)] if script else "sent"
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, DeliveryResult):
            return outcome
        if outcome == "sent":
            with self._lock:
                self.sent[email.ledger_key] += 1
            return DeliveryResult("sent", provider_message_id=f"id-{email.ledger_key}")
        return DeliveryResult(outcome, error=f"{outcome} from provider")

    def close(self) -> None:
        pass
