"""A test hook that kills this process at a named point of the send path.

`NUDGE_FAULT_KILL_AT="after_accept:17"` sends SIGKILL to this process the 17th time the send path
passes the point `after_accept` (counted across threads). It exists for the fault-injection tests
(tests/delivery/test_fault_injection.py), which prove that no kill point sends an entry twice.
Unset (always, outside those tests), `fault_point` is one global read and a comparison.

Points, in the order a row meets them (email_jobs/send.py):
    before_claim   a batch is about to be claimed (nothing committed yet)
    after_claim    the claim is committed, nothing rendered or sent
    before_send    a worker is about to call the provider for one row
    after_accept   the provider accepted one row; nothing recorded yet
    before_record  a batch's outcomes are about to be recorded
    mid_record     inside the recording transaction, before its commit
    after_record   a batch's outcomes are committed
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "NUDGE_FAULT_KILL_AT"
POINTS = (
    "before_claim",
    "after_claim",
    "before_send",
    "after_accept",
    "before_record",
    "mid_record",
    "after_record",
)


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    if point not in POINTS or not nth.isdigit() or int(nth) < 1:
        raise ValueError(
            f"{ENV}={spec!r}: expected POINT:N with POINT one of {', '.join(POINTS)} and N >= 1"
        )
    return point, int(nth)


_TARGET = _parse(os.environ.get(ENV))
_seen = 0
_lock = threading.Lock()


def arm(spec: str | None) -> None:
    """Set (or with None, clear) the kill point in this process, as NUDGE_FAULT_KILL_AT would:
    for a forked child of `python -m email_jobs.send_worker --serve`."""
    global _TARGET, _seen
    target = _parse(spec)
    with _lock:
        _TARGET, _seen = target, 0


def fault_point(point: str) -> None:
    """Die here (SIGKILL, no cleanup) when NUDGE_FAULT_KILL_AT names this point and count."""
    if _TARGET is None or _TARGET[0] != point:
        return
    global _seen
    with _lock:
        _seen += 1
        if _seen == _TARGET[1]:
            os.kill(os.getpid(), signal.SIGKILL)
