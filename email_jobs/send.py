"""The send loop: claim pending ledger rows, render, deliver, record.

Safety over speed: a batch's claim is committed before any provider call, and outcomes are
committed per batch, so a crash can at worst leave the batches in flight `claimed`; the next run
turns those rows into `unknown` (or back to `pending` with `on_unknown: resend`) instead of
sending twice. At most `MAX_BATCHES_IN_FLIGHT` batches (2 x `send_concurrency` rows by default)
are claimed and not yet recorded at any time, which bounds what a crash can leave `unknown`.

One warehouse connection serves a campaign's send, used only by the coordinating thread: one
transaction records a finished batch and claims the next. Worker threads render and make
delivery attempts (and wait out their backoffs). On DuckDB the send holds the writer lock while
it runs.

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
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from email_jobs.campaigns import Campaign
from email_jobs.drips import step_campaign
from email_jobs.faults import fault_point
from email_jobs.ledger import (
    ClaimedRow,
    Outcome,
    Recorded,
    State,
    claim_for_send,
    count_pending,
    ensure_schema,
    outcome_after_delivery,
    record_outcomes,
    recover_claims,
    release_rows,
    state_counts,
)
from email_jobs.message import Backend, DeliveryResult, OutgoingEmail
from email_jobs.recipients import screen_claimed
from nudge.settings import Settings
from nudge.warehouse import Warehouse

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


def deliver_with_retries(
    backend: Backend,
    email: OutgoingEmail,
    *,
    max_attempts: int,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> Delivery:
    """Attempt delivery up to `max_attempts` times, backing off between retryable failures."""
    attempts = 0
    last: DeliveryResult | None = None
    while attempts < max_attempts:
        attempts += 1
        fault_point("before_send")
        try:
            last = backend.send(email)
        except Exception as exc:  # the protocol says classify, never raise: we cannot know
            log.exception("backend %s raised for %s", backend.name, email.ledger_key)
            return Delivery(None, attempts, f"{type(exc).__name__}: {exc}")
        if last.status == "sent":
            fault_point("after_accept")
        if last.status != "retryable":
            return Delivery(last, attempts, last.error)
        if attempts >= max_attempts:
            break
        if last.retry_after_s is not None and last.retry_after_s > MAX_RETRY_AFTER_S:
            break
        sleep(backoff_delay(attempts, last.retry_after_s, rand()))
    return Delivery(last, attempts, last.error if last else None)


def _leaving_out(render: RenderFn, suppressed: frozenset[str] | None) -> RenderFn:
    """`render`, told which (suppressed) addresses its message must not reach."""
    return functools.partial(render, suppressed=suppressed) if suppressed else render


def _render_row(
    render: RenderFn, campaign: Campaign, row: ClaimedRow, settings: Settings
) -> OutgoingEmail | str:
    try:
        step = step_campaign(campaign, row.step)  # a drip step renders its own template
        return render(step, row.payload, settings, ledger_key=row.ledger_key)
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
    settings: Settings,
    backend: Backend,
    max_attempts: int,
    sleep: Callable[[float], None],
    rand: Callable[[], float],
) -> _Attempt:
    """Render and deliver one claimed row (in a worker thread)."""
    email = _render_row(render, campaign, row, settings)
    if isinstance(email, str):  # a render error is permanent for this payload
        return _Attempt(row, None, email)
    delivery = deliver_with_retries(
        backend, email, max_attempts=max_attempts, sleep=sleep, rand=rand
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
    outcome = outcome_after_delivery(status, delivery.error, total_attempts, max_total_attempts)
    message_id = delivery.result.provider_message_id if delivery.result else None
    return Recorded(row.ledger_key, outcome, total_attempts, message_id)


def latest_evaluation_instant(wh: Warehouse, campaign: str) -> datetime | None:
    """The campaign's newest evaluation instant: the send instant of a run that has none of its
    own (`nudge release`), so that the frequency cap still decides from data."""
    if not wh.table_exists("nudge", "evaluations"):
        return None
    row = wh.fetchone("select max(as_of) from nudge.evaluations where campaign = ?", [campaign])
    return row[0] if row else None


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
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> SendReport:
    """Send the campaign's pending ledger rows through `backend` and record every outcome.

    `as_of` is the send run's evaluation instant, for the frequency cap (default: the campaign's
    newest evaluation). Batches default to twice `settings.send_concurrency` rows.
    """
    if render is None:
        from email_jobs.render import render_email

        render = render_email
    report = SendReport(campaign=campaign.name)
    if not campaign.enabled:  # sends nothing, not even rows left pending from before
        log.info("campaign %s is disabled: nothing sent", campaign.name)
        return report
    batch_size = batch_size or 2 * max(1, settings.send_concurrency)
    # One connection for the whole send: opening a DuckDB file costs tens of milliseconds (and
    # its close a checkpoint), which per batch capped the rate far below the provider's. On
    # DuckDB this holds the writer lock until the campaign's send ends.
    with open_wh() as wh:
        _send_all(wh, campaign, backend, settings, run_id, report, as_of, batch_size, render,
                  max_attempts_per_run, max_total_attempts, sleep, rand)  # fmt: skip
        after = state_counts(wh, campaign.name)
    report.unknown = after.get(State.UNKNOWN, 0)
    report.held = after.get(State.HELD, 0)
    report.pending_left = after.get(State.PENDING, 0)
    log.info("%s", report.summary())
    return report


def _send_all(
    wh: Warehouse,
    campaign: Campaign,
    backend: Backend,
    settings: Settings,
    run_id: str,
    report: SendReport,
    as_of: datetime | None,
    batch_size: int,
    render: RenderFn,
    max_attempts_per_run: int,
    max_total_attempts: int,
    sleep: Callable[[float], None],
    rand: Callable[[], float],
) -> None:
    """Recover dead runs' claims, then claim, deliver (in the pool) and record until no pending
    row is left for this run; at most MAX_BATCHES_IN_FLIGHT batches claimed and unrecorded."""
    workers = max(1, settings.send_concurrency)
    cap = max(0, settings.max_emails_per_recipient_per_day)
    ensure_schema(wh)
    recovered = recover_claims(wh, campaign.name, run_id, campaign.on_unknown)
    if campaign.on_unknown == "resend":
        report.recovered_resend = recovered
    else:
        report.recovered_unknown = recovered
    report.pending_at_start = count_pending(wh, campaign.name, run_id)
    if as_of is None:
        as_of = latest_evaluation_instant(wh, campaign.name)
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
    in_flight: deque[list[Future[_Attempt]]] = deque()
    exhausted = False
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nudge-send") as pool:
        while in_flight or not exhausted:
            done: list[_Attempt] = []
            if in_flight and (exhausted or len(in_flight) >= MAX_BATCHES_IN_FLIGHT):
                done = [f.result() for f in in_flight.popleft()]
            recorded = [_recorded(a, max_total_attempts) for a in done]
            claimed: list[ClaimedRow] = []
            if recorded:
                fault_point("before_record")
            if recorded and exhausted:
                record_outcomes(wh, run_id, recorded)
                fault_point("after_record")
            # Otherwise the outcomes are committed with the next claim, in one transaction.
            to_record = [] if exhausted else recorded
            while not exhausted and not claimed:
                fault_point("before_claim")
                claim = claim_for_send(
                    wh,
                    campaign.name,
                    run_id,
                    batch_size,
                    as_of=as_of,
                    max_per_recipient_per_day=cap,
                    recorded=to_record,
                )
                if to_record:
                    fault_point("after_record")
                to_record = []
                fault_point("after_claim")
                report.deferred += claim.deferred
                exhausted = not claim.rows and not claim.deferred
                # The suppression list as it is now: drops addresses from these messages, and
                # skips the rows left without a To address.
                screened = screen_claimed(wh, campaign, run_id, claim.rows)
                report.suppressed += screened.skipped
                claimed = screened.rows
            for r in recorded:
                _count(report, r)
            report.attempts += sum(a.delivery.attempts for a in done if a.delivery)
            if claimed:
                report.claimed += len(claimed)
                in_flight.append(
                    [
                        pool.submit(
                            _attempt,
                            _leaving_out(render, screened.suppressed.get(row.ledger_key)),
                            campaign,
                            row,
                            settings,
                            backend,
                            # Never let one run exceed the total cap either.
                            max(1, min(max_attempts_per_run, max_total_attempts - row.attempts)),
                            sleep,
                            rand,
                        )
                        for row in claimed
                    ]
                )
            if recorded:
                log.info(
                    "campaign %s: sent %d/%d (failed %d, retry later %d, deferred %d, "
                    "delivery unknown %d)",
                    campaign.name,
                    report.sent,
                    report.pending_at_start,
                    report.failed,
                    report.retry_later,
                    report.deferred,
                    report.delivery_unknown,
                )


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
