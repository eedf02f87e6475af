"""The send loop: claim pending ledger rows, render, deliver, record.

Safety over speed: a batch's claim is committed before any provider call, and outcomes are
committed per batch, so a crash can at worst leave the batches in flight `claimed`; once their
lease has run out, a later run turns those rows into `unknown` (or back to `pending` with
`on_unknown: resend`) instead of sending twice. At most `MAX_BATCHES_IN_FLIGHT` batches
(2 x `send_concurrency` rows by default) are claimed and not yet recorded at any time, which
bounds what a crash can leave `unknown`.

Per row: pending --claim (lease)--> claimed --deliver--> sent | failed | pending | unknown;
claimed --credential refused / run stopped--> pending (no attempt counted);
claimed --lease expired (its run died)--> unknown | pending. See email_jobs.ledger.

Concurrent senders: each claim is stamped with its run and a lease (NUDGE_SEND_LEASE_SECONDS);
on Postgres a heartbeat thread on its own connection renews the run's leases every quarter
lease, so no other run takes them while this one works; when it cannot renew them for half a
lease, the run stops before another may take them over. On DuckDB the send holds the warehouse
file's writer lock, so senders take turns and there is no heartbeat.

One warehouse connection serves a campaign's send, used only by the coordinating thread: one
transaction records a finished batch and claims the next. Lost (Postgres), it is opened again
from the same factory, a bounded number of times, to record what finished. Worker threads render
and make delivery attempts (and wait out their backoffs on the run's stop event). The run stops
(no attempt starts, no backoff is waited out) on a refused credential, which then ends the run
with CredentialError and leaves the rows not sent `pending`, and on any coordinator error.

The frequency cap (NUDGE_MAX_EMAILS_PER_RECIPIENT_PER_DAY) is decided at the claim from the send
run's evaluation instant (`as_of`), never the wall clock: see `email_jobs.ledger.claim_for_send`.

Retries: a timeout after the request was written may mean SendGrid accepted the message; we
retry it anyway (the issue's choice: a rare duplicate over a silent loss). Only a crash between
the provider's answer and the record leaves a row `unknown`.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from email_jobs.backends import verify_backend
from email_jobs.campaigns import Campaign
from email_jobs.drips import step_campaign
from email_jobs.event_spool import load_spool_folder, spool_dir
from email_jobs.faults import fault_point
from email_jobs.ledger import (
    ClaimedRow,
    Outcome,
    Recorded,
    Screened,
    State,
    claim_for_send,
    count_pending,
    ensure_schema,
    extend_leases,
    outcome_after_delivery,
    record_outcomes,
    recover_claims,
    release_rows,
    screen_claimed,
    state_counts,
)
from email_jobs.message import Backend, CredentialError, DeliveryResult, OutgoingEmail
from email_jobs.store import latest_evaluation
from email_jobs.unsubscribe import check_unsubscribe_ready
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

MAX_TOTAL_ATTEMPTS = 10  # across runs: then the row is failed(gave_up), never retried forever
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
# A provider asking for a longer pause than this ends the row's attempts for this run.
MAX_RETRY_AFTER_S = 120.0
# Claimed-but-unrecorded batches at any moment: a crash leaves at most this many unknown.
MAX_BATCHES_IN_FLIGHT = 2

RenderFn = Callable[..., OutgoingEmail]
OpenWarehouse = Callable[[], AbstractContextManager[Warehouse]]


@dataclass(frozen=True)
class SendOptions:
    """The settings a send run reads."""

    concurrency: int = 8  # worker threads; a batch is twice this many rows by default
    lease_s: float = 120.0  # NUDGE_SEND_LEASE_SECONDS
    max_per_recipient_per_day: int = 1  # the frequency cap; 0 turns it off
    spool: Path | None = None  # `nudge serve`'s spool on DuckDB (email_jobs.event_spool)

    @classmethod
    def from_settings(cls, settings: Settings) -> SendOptions:
        return cls(
            concurrency=max(1, settings.send_concurrency),
            lease_s=settings.send_lease_seconds,
            max_per_recipient_per_day=max(0, settings.max_emails_per_recipient_per_day),
            spool=spool_dir(settings),
        )


@dataclass
class SendReport:
    campaign: str
    pending_at_start: int = 0
    recovered_unknown: int = 0  # claimed by a dead run -> unknown
    recovered_resend: int = 0  # claimed by a dead run -> pending (on_unknown: resend)
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retry_later: int = 0  # back to pending for the next run
    delivery_unknown: int = 0  # the backend raised: we cannot tell whether it went out
    deferred: int = 0  # kept pending by the frequency cap, for a later evaluation
    suppressed: int = 0  # claimed rows skipped: every To address suppressed by then
    attempts: int = 0
    # The campaign's ledger after the run: rows needing a person (`nudge release`).
    unknown: int = 0
    held: int = 0
    pending_left: int = 0
    errors: list[str] = field(default_factory=list)  # a sample, for logs and metadata

    def summary(self) -> str:
        """One line for logs."""
        text = (
            f"campaign {self.campaign}: sent {self.sent} of {self.pending_at_start} pending, "
            f"failed {self.failed}, retry later {self.retry_later}, deferred by the frequency "
            f"cap {self.deferred}, unknown {self.unknown}, held {self.held}"
        )
        if self.recovered_unknown or self.recovered_resend:
            text += (
                f"; recovered {self.recovered_unknown + self.recovered_resend} row(s) claimed by "
                "a run that did not finish"
            )
        return text

    def metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {
            "errors": "\n".join(self.errors[:10])
        }


def backoff_delay(attempt: int, retry_after_s: float | None, rand: float) -> float:
    """Seconds to wait before attempt `attempt + 1`: exponential from BACKOFF_BASE_S, capped,
    with jitter (`rand` in [0, 1) scales it to 50-100%); never shorter than the provider's
    retry_after_s."""
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(attempt - 1, 0)) * (0.5 + rand / 2)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


@dataclass(frozen=True)
class Delivery:
    result: DeliveryResult | None  # None: the backend raised (status unknown)
    attempts: int
    error: str | None
    cancelled: bool = False  # the run stopped before this row's next attempt started


def deliver_with_retries(
    backend: Backend,
    email: OutgoingEmail,
    *,
    max_attempts: int,
    sleep: Callable[[float], None] | None = None,
    rand: Callable[[], float] = random.random,
    stop: threading.Event | None = None,
) -> Delivery:
    """Attempt delivery up to `max_attempts` times, backing off between retryable failures.

    `stop` ends the row's work before any attempt not yet started, and cuts a backoff short
    (the default wait is on it); a rejected credential sets it, so the run's other workers
    stop too.
    """
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    attempts = 0
    last: DeliveryResult | None = None
    while attempts < max_attempts:
        if stop.is_set():
            return Delivery(last, attempts, last.error if last else None, cancelled=True)
        attempts += 1
        fault_point("before_send")
        try:
            last = backend.send(email)
        except Exception as exc:  # the protocol says classify, never raise: we cannot know
            log.exception("backend %s raised for %s", backend.name, email.ledger_key)
            return Delivery(None, attempts, f"{type(exc).__name__}: {exc}")
        if last.status == "sent":
            fault_point("after_accept")
        if last.status == "credential":
            stop.set()
        if last.status != "retryable":
            return Delivery(last, attempts, last.error)
        if attempts >= max_attempts:
            break
        if last.retry_after_s is not None and last.retry_after_s > MAX_RETRY_AFTER_S:
            break
        wait(backoff_delay(attempts, last.retry_after_s, rand()))
    return Delivery(last, attempts, last.error if last else None)


def _leaving_out(render: RenderFn, suppressed: frozenset[str] | None) -> RenderFn:
    """`render`, told which (suppressed) addresses its message must not reach."""
    return functools.partial(render, suppressed=suppressed) if suppressed else render


def _render_row(render: RenderFn, campaign: Campaign, row: ClaimedRow) -> OutgoingEmail | str:
    try:
        step = step_campaign(campaign, row.step)  # a drip step renders its own template
        return render(step, row.payload, ledger_key=row.ledger_key)
    except Exception as exc:
        return f"render: {exc}"


@dataclass(frozen=True)
class _Attempt:
    row: ClaimedRow
    delivery: Delivery | None  # None: the row could not be rendered
    render_error: str | None = None


def _attempt(
    render: RenderFn,
    campaign: Campaign,
    row: ClaimedRow,
    backend: Backend,
    max_attempts: int,
    sleep: Callable[[float], None] | None,
    rand: Callable[[], float],
    stop: threading.Event | None = None,
) -> _Attempt:
    """Render and deliver one claimed row (in a worker thread)."""
    if stop is not None and stop.is_set():  # the run is ending: leave the row for the next
        return _Attempt(row, Delivery(None, 0, None, cancelled=True))
    email = _render_row(render, campaign, row)
    if isinstance(email, str):  # a render error is permanent for this payload
        return _Attempt(row, None, email)
    delivery = deliver_with_retries(
        backend, email, max_attempts=max_attempts, sleep=sleep, rand=rand, stop=stop
    )
    return _Attempt(row, delivery)


def _recorded(attempt: _Attempt, max_total_attempts: int) -> Recorded:
    row = attempt.row
    if attempt.delivery is None:
        return Recorded(
            row.ledger_key,
            Outcome(State.FAILED, "render_error", attempt.render_error),
            row.attempts,
        )
    delivery = attempt.delivery
    total_attempts = row.attempts + delivery.attempts
    status = delivery.result.status if delivery.result else "unknown"
    if delivery.cancelled:
        status = "cancelled"
    elif status == "credential":  # our credential was refused, not this row: not counted
        total_attempts -= 1
    outcome = outcome_after_delivery(status, delivery.error, total_attempts, max_total_attempts)
    message_id = delivery.result.provider_message_id if delivery.result else None
    return Recorded(row.ledger_key, outcome, total_attempts, message_id)


def latest_evaluation_instant(wh: Warehouse, campaign: str) -> datetime | None:
    """The campaign's newest evaluation instant: the send instant of a run that has none of its
    own (`nudge release`), so that the frequency cap still decides from data."""
    return latest_evaluation(wh, campaign)


# A lost Postgres connection is opened again this many times (waiting 0.5 s, 1 s, 2 s) to
# record what finished; then the run ends and its unrecorded claims wait out their lease.
RECONNECT_ATTEMPTS = 3


class LeaseLost(RuntimeError):
    """The run could not renew its claims' lease: another run may take them over soon."""


def _connection_lost(wh: Warehouse, exc: BaseException) -> bool:
    if wh.kind != "postgres":
        return False  # a DuckDB file does not go away under an open connection
    import psycopg2

    return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)


class _Connection:
    """The coordinator's warehouse connection, opened again (from the same factory) when the
    server drops it; every ledger write is guarded by `claimed_by = run`, so a retried write
    can never touch another run's rows."""

    def __init__(self, open_wh: OpenWarehouse) -> None:
        self._open = open_wh
        self._stack = ExitStack()
        self.wh: Warehouse = self._stack.enter_context(open_wh())

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def call(self, fn: Callable[[Warehouse], Any]) -> Any:
        """fn(wh); on a lost connection, fn again on a fresh one (bounded)."""
        for attempt in range(RECONNECT_ATTEMPTS + 1):
            try:
                return fn(self.wh)
            except Exception as exc:
                if attempt == RECONNECT_ATTEMPTS or not _connection_lost(self.wh, exc):
                    raise
                log.warning("the warehouse connection was lost (%s); reconnecting", exc)
                threading.Event().wait(0.5 * 2**attempt)
                self._reopen()
        raise AssertionError("not reached")

    def _reopen(self) -> None:
        old, self._stack = self._stack, ExitStack()
        try:
            old.close()
        except Exception:  # closing a dead connection may fail too
            log.debug("closing the lost connection failed", exc_info=True)
        try:
            self.wh = self._stack.enter_context(self._open())
        except Exception:
            log.warning("reconnecting to the warehouse failed", exc_info=True)


class _Heartbeat:
    """Extends this run's claims' lease every quarter lease, on its own connection (Postgres).

    On DuckDB there is none: the send holds the file's writer lock, so no other sender runs
    (a second connection would wait for that lock), and a later run recovers every claim it
    finds (email_jobs.ledger.recover_claims). When it cannot renew the lease for half a lease,
    it sets `stop`: the run ends before another may take its claims over.
    """

    def __init__(
        self, open_wh: OpenWarehouse, kind: str, run_id: str, lease_s: float,
        stop: threading.Event,
    ) -> None:  # fmt: skip
        self._open, self._run_id, self._lease_s, self._stop = open_wh, run_id, lease_s, stop
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if kind == "postgres":
            self._thread = threading.Thread(
                target=self._beat, name=f"nudge-lease-{run_id}", daemon=True
            )

    def __enter__(self) -> _Heartbeat:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        renewed = time.monotonic()
        with ExitStack() as stack:
            wh: Warehouse | None = None
            while not self._done.wait(self._lease_s / 4):
                try:
                    if wh is None:
                        stack.close()
                        wh = stack.enter_context(self._open())
                    extend_leases(wh, self._run_id, self._lease_s)
                    renewed = time.monotonic()
                except Exception:
                    log.warning("run %s: renewing its lease failed", self._run_id, exc_info=True)
                    wh = None
                    if time.monotonic() - renewed > self._lease_s / 2:
                        self._stop.set()


def send_campaign(
    open_wh: OpenWarehouse,
    campaign: Campaign,
    backend: Backend,
    settings: Settings,
    run_id: str,
    *,
    as_of: datetime | None = None,
    render: RenderFn | None = None,
    max_attempts_per_run: int = 4,
    batch_size: int | None = None,
    max_total_attempts: int = MAX_TOTAL_ATTEMPTS,
    sleep: Callable[[float], None] | None = None,
    rand: Callable[[], float] = random.random,
) -> SendReport:
    """Send the campaign's pending ledger rows through `backend` and record every outcome.

    `as_of` is the send run's evaluation instant, for the frequency cap (default: the campaign's
    newest evaluation). Batches default to twice `settings.send_concurrency` rows. `sleep`
    (tests) replaces the backoff's wait, which by default the run's stop cuts short.

    Raises CredentialError, after recording every outcome, when the provider refuses the
    credential (checked before anything is claimed, and on every attempt); the rows it did not
    send stay pending.
    """
    if render is None:
        from email_jobs.render import render_email

        render = render_email
    options = SendOptions.from_settings(settings)
    template = render

    def render_row(campaign: Campaign, row: dict[str, Any], **kw: Any) -> OutgoingEmail:
        return template(campaign, row, settings, **kw)

    report = SendReport(campaign=campaign.name)
    if not campaign.enabled:  # sends nothing, not even rows left pending from before
        log.info("campaign %s is disabled: nothing sent", campaign.name)
        return report
    # Without signed unsubscribe links (and no SendGrid group) smtp/sendgrid refuse to send.
    check_unsubscribe_ready(
        settings, backend.name, [(campaign.name, campaign.unsubscribe_group_id)]
    )
    verify_backend(backend)  # a refused credential stops here, before anything is claimed
    batch_size = batch_size or 2 * options.concurrency
    stop = threading.Event()
    # One connection for the whole send: opening a DuckDB file costs tens of milliseconds (and
    # its close a checkpoint), which per batch capped the rate far below the provider's. On
    # DuckDB this holds the writer lock until the campaign's send ends. Lost (Postgres), it is
    # opened again to record what finished.
    with _Connection(open_wh) as conn, _Heartbeat(open_wh, conn.wh.kind, run_id,
                                                  options.lease_s, stop):  # fmt: skip
        _send_all(conn, campaign, backend, options, run_id, report, as_of, batch_size,
                  render_row, max_attempts_per_run, max_total_attempts, sleep, rand,
                  stop)  # fmt: skip
        after = conn.call(lambda wh: state_counts(wh, campaign.name))
    report.unknown = after.get(State.UNKNOWN, 0)
    report.held = after.get(State.HELD, 0)
    report.pending_left = after.get(State.PENDING, 0)
    log.info("%s", report.summary())
    return report


def _send_all(
    conn: _Connection,
    campaign: Campaign,
    backend: Backend,
    options: SendOptions,
    run_id: str,
    report: SendReport,
    as_of: datetime | None,
    batch_size: int,
    render: RenderFn,
    max_attempts_per_run: int,
    max_total_attempts: int,
    sleep: Callable[[float], None] | None,
    rand: Callable[[], float],
    stop: threading.Event,
) -> None:
    """Recover dead runs' claims, then claim, deliver (in the pool) and record until no pending
    row is left for this run; at most MAX_BATCHES_IN_FLIGHT batches claimed and unrecorded.

    `stop` (a refused credential, a lost lease) ends the claiming; the batches in flight are
    recorded, their rows not yet started going back to pending."""
    refused: list[str] = []  # the credential error, one line
    _recover(conn.wh, campaign, run_id, report)
    if as_of is None:
        as_of = latest_evaluation_instant(conn.wh, campaign.name)
    in_flight: deque[list[Future[_Attempt]]] = deque()
    exhausted = False
    pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="nudge-send")
    try:
        while in_flight or not exhausted:
            if stop.is_set():
                exhausted = True  # claim nothing more; record what is in flight
            done: list[_Attempt] = []
            if in_flight and (exhausted or len(in_flight) >= MAX_BATCHES_IN_FLIGHT):
                done = [f.result() for f in in_flight.popleft()]
            refused += [
                a.delivery.error or "the provider refused the credential"
                for a in done
                if a.delivery and a.delivery.result and a.delivery.result.status == "credential"
            ]
            recorded = [_recorded(a, max_total_attempts) for a in done]
            if recorded:
                fault_point("before_record")
            screened: Screened | None = None
            if recorded and exhausted:
                conn.call(lambda w, recorded=recorded: record_outcomes(w, run_id, recorded))
                fault_point("after_record")
            elif not exhausted:  # the outcomes are committed with the claim, one transaction
                screened = _claim_next(
                    conn, campaign, run_id, batch_size, as_of, options, recorded, report
                )
                exhausted = screened is None
            for r in recorded:
                _count(report, r)
            report.attempts += sum(a.delivery.attempts for a in done if a.delivery)
            if screened:
                report.claimed += len(screened.rows)
                in_flight.append(
                    [
                        pool.submit(
                            _attempt,
                            _leaving_out(render, screened.suppressed.get(row.ledger_key)),
                            campaign,
                            row,
                            backend,
                            # Never let one run exceed the total cap either.
                            max(1, min(max_attempts_per_run, max_total_attempts - row.attempts)),
                            sleep,
                            rand,
                            stop,
                        )
                        for row in screened.rows
                    ]
                )
            if recorded:
                _log_progress(campaign, report)
    except BaseException:
        # Ending on an error: no attempt starts any more and no backoff is waited out.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if refused:
        raise CredentialError(refused[0])
    if stop.is_set():
        raise LeaseLost(
            f"campaign {campaign.name}: run {run_id} could not renew its claims' lease; it "
            "stopped, and a later run sends what is left"
        )


def _recover(wh: Warehouse, campaign: Campaign, run_id: str, report: SendReport) -> None:
    """Rows dead runs left claimed become unknown (or pending); count what is pending."""
    ensure_schema(wh)
    recovered = recover_claims(wh, campaign.name, run_id, campaign.on_unknown)
    if campaign.on_unknown == "resend":
        report.recovered_resend = recovered
    else:
        report.recovered_unknown = recovered
    report.pending_at_start = count_pending(wh, campaign.name, run_id)
    if recovered:
        log.warning(
            "campaign %s: %d row(s) were left claimed by a run that did not finish; they are now "
            "%s",
            campaign.name,
            recovered,
            "pending again (on_unknown: resend)"
            if campaign.on_unknown == "resend"
            else "unknown (release them with `nudge release --unknown` after checking)",
        )


def _claim_next(
    conn: _Connection,
    campaign: Campaign,
    run_id: str,
    batch_size: int,
    as_of: datetime | None,
    options: SendOptions,
    to_record: list[Recorded],
    report: SendReport,
) -> Screened | None:
    """Claim batches (the first one's transaction records `to_record`) until one has rows to
    send after the suppression screen; None when no pending row is left for this run."""
    while True:
        fault_point("before_claim")
        claim = conn.call(
            lambda w, to_record=to_record: claim_for_send(
                w,
                campaign.name,
                run_id,
                batch_size,
                as_of=as_of,
                max_per_recipient_per_day=options.max_per_recipient_per_day,
                recorded=to_record,
                lease_s=options.lease_s,
            )
        )
        if to_record:
            fault_point("after_record")
        to_record = []
        fault_point("after_claim")
        report.deferred += claim.deferred
        # The suppression list as it is now (with what `nudge serve` spooled meanwhile, on
        # DuckDB): drops addresses from these messages, and skips the rows left without a To.
        screened = conn.call(
            lambda w, rows=claim.rows: _screen(w, options.spool, campaign, run_id, rows)
        )
        report.suppressed += screened.skipped
        if screened.rows:
            return screened
        if not claim.rows and not claim.deferred:
            return None


def _log_progress(campaign: Campaign, report: SendReport) -> None:
    log.info(
        "campaign %s: sent %d/%d (failed %d, retry later %d, deferred %d, delivery unknown %d)",
        campaign.name,
        report.sent,
        report.pending_at_start,
        report.failed,
        report.retry_later,
        report.deferred,
        report.delivery_unknown,
    )


def _screen(
    wh: Warehouse, spool: Path | None, campaign: Campaign, run_id: str, rows: list[ClaimedRow]
) -> Screened:
    """The claim-time screen, after loading what `nudge serve` spooled (DuckDB): an unsubscribe
    or bounce received while this run holds the writer lock counts from the next batch."""
    if rows:
        load_spool_folder(wh, spool)
    return screen_claimed(wh, campaign, run_id, rows)


def _count(report: SendReport, r: Recorded) -> None:
    state = r.outcome.state
    if state == State.SENT:
        report.sent += 1
    elif state == State.FAILED:
        report.failed += 1
    elif state == State.PENDING:
        report.retry_later += 1
    elif state == State.UNKNOWN:
        report.delivery_unknown += 1
    if r.outcome.error and len(report.errors) < 50:
        report.errors.append(f"{r.ledger_key}: {r.outcome.error}")


def release(wh: Warehouse, campaign: Campaign | str, include_unknown: bool = False) -> int:
    """Move the campaign's held (and, with include_unknown, unknown) rows back to pending, for
    the next send to pick up. Returns how many rows were released."""
    name = campaign if isinstance(campaign, str) else campaign.name
    ensure_schema(wh)
    released = release_rows(wh, name, include_unknown)
    log.info(
        "campaign %s: released %d row(s)%s",
        name,
        released,
        " (held and unknown)" if include_unknown else " (held)",
    )
    return released
