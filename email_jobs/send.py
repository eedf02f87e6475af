"""The send loop: claim pending ledger rows, render, deliver, record.

Safety over speed: a batch's claim is committed before any provider call, and outcomes are
committed per batch, so a crash can at worst leave a batch `claimed`; the next run turns those
rows into `unknown` (or back to `pending` with `on_unknown: resend`) instead of sending twice.
The warehouse is opened only briefly (claim, record) and only from the coordinating thread;
worker threads only make delivery attempts (and wait out their backoffs).

Not implemented: a per-recipient frequency cap across campaigns (see the report/README).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from email_jobs.campaigns import Campaign
from email_jobs.drips import step_campaign
from email_jobs.ledger import (
    ClaimedRow,
    Outcome,
    Recorded,
    State,
    claim_batch,
    count_pending,
    ensure_schema,
    outcome_after_delivery,
    record_outcomes,
    recover_claims,
    release_rows,
    state_counts,
)
from email_jobs.message import Backend, DeliveryResult, OutgoingEmail
from nudge.settings import Settings
from nudge.warehouse import Warehouse

log = logging.getLogger(__name__)

MAX_TOTAL_ATTEMPTS = 10  # across runs: then the row is failed(gave_up), never retried forever
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
# A provider asking for a longer pause than this ends the row's attempts for this run.
MAX_RETRY_AFTER_S = 120.0

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
            f"failed {self.failed}, retry later {self.retry_later}, unknown {self.unknown}, "
            f"held {self.held}"
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
        try:
            last = backend.send(email)
        except Exception as exc:  # the protocol says classify, never raise: we cannot know
            log.exception("backend %s raised for %s", backend.name, email.ledger_key)
            return Delivery(None, attempts, f"{type(exc).__name__}: {exc}")
        if last.status != "retryable":
            return Delivery(last, attempts, last.error)
        if attempts >= max_attempts:
            break
        if last.retry_after_s is not None and last.retry_after_s > MAX_RETRY_AFTER_S:
            break
        sleep(backoff_delay(attempts, last.retry_after_s, rand()))
    return Delivery(last, attempts, last.error if last else None)


def _render_row(
    render: RenderFn, campaign: Campaign, row: ClaimedRow, settings: Settings
) -> OutgoingEmail | str:
    try:
        step = step_campaign(campaign, row.step)  # a drip step renders its own template
        return render(step, row.payload, settings, ledger_key=row.ledger_key)
    except Exception as exc:
        return f"render: {exc}"


def send_campaign(
    open_wh: OpenWarehouse,
    campaign: Campaign,
    backend: Backend,
    settings: Settings,
    run_id: str,
    *,
    render: RenderFn | None = None,
    max_attempts_per_run: int = 4,
    batch_size: int = 20,
    max_total_attempts: int = MAX_TOTAL_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> SendReport:
    """Send the campaign's pending ledger rows through `backend` and record every outcome."""
    if render is None:
        from email_jobs.render import render_email

        render = render_email
    report = SendReport(campaign=campaign.name)
    with open_wh() as wh:
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
    total = report.pending_at_start
    workers = max(1, settings.send_concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nudge-send") as pool:
        while True:
            with open_wh() as wh:
                batch = claim_batch(wh, campaign.name, run_id, batch_size)
            if not batch:
                break
            report.claimed += len(batch)
            recorded: list[Recorded] = []
            futures = {}
            for row in batch:
                email = _render_row(render, campaign, row, settings)
                if isinstance(email, str):  # a render error is permanent for this payload
                    recorded.append(
                        Recorded(
                            row.ledger_key,
                            Outcome(State.FAILED, "render_error", email),
                            row.attempts,
                        )
                    )
                    continue
                # Never let one run exceed the total cap either.
                allowed = max(1, min(max_attempts_per_run, max_total_attempts - row.attempts))
                futures[row.ledger_key] = (
                    row,
                    pool.submit(
                        deliver_with_retries,
                        backend,
                        email,
                        max_attempts=allowed,
                        sleep=sleep,
                        rand=rand,
                    ),
                )
            for key, (row, future) in futures.items():
                delivery: Delivery = future.result()
                total_attempts = row.attempts + delivery.attempts
                report.attempts += delivery.attempts
                status = delivery.result.status if delivery.result else "unknown"
                outcome = outcome_after_delivery(
                    status, delivery.error, total_attempts, max_total_attempts
                )
                recorded.append(
                    Recorded(
                        key,
                        outcome,
                        total_attempts,
                        delivery.result.provider_message_id if delivery.result else None,
                    )
                )
            with open_wh() as wh:
                record_outcomes(wh, run_id, recorded)
            for r in recorded:
                _count(report, r)
            log.info(
                "campaign %s: sent %d/%d (failed %d, retry later %d, delivery unknown %d)",
                campaign.name,
                report.sent,
                total,
                report.failed,
                report.retry_later,
                report.delivery_unknown,
            )
    with open_wh() as wh:
        after = state_counts(wh, campaign.name)
    report.unknown = after.get(State.UNKNOWN, 0)
    report.held = after.get(State.HELD, 0)
    report.pending_left = after.get(State.PENDING, 0)
    log.info("%s", report.summary())
    return report


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
