"""Guards: when an evaluation sends nothing (contract, section "Guards").

Every guard is decided from the data in the warehouse and the evaluation instant `end`, never
from the wall clock, so that a replay of the same instant decides the same way.

- stale evaluation: the newest ingested events folder is `dt=D`; a dump written on day D covers
  events until D + 1 day 00:00 (the "data horizon"). The evaluation is stale when
  `horizon - end > NUDGE_MAX_SEND_LAG_DAYS`: its entries are recorded as skipped(stale).
- freshness: no event with `request_time` in `[end - NUDGE_FRESHNESS_HOURS, end)`, or the
  evaluated day's volume (events in `[end - 24h, end)`) is below NUDGE_MIN_DAY_VOLUME_SHARE x the
  median of the 7 preceding 24-hour windows (checked only when at least 3 of those windows have
  events). The evaluation is deferred. A knob <= 0 turns its check off.
- broken export: the ingest run's rejected share > NUDGE_MAX_REJECTED_SHARE: sends are held.
- blast radius: per campaign, decided in `email_jobs.decisions.decide_holds`; sends are held.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any

from nudge.core.instant import to_iso
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

DAY = timedelta(days=1)
VOLUME_HISTORY_DAYS = 7
VOLUME_MIN_DAYS_WITH_EVENTS = 3


def _setting_default(name: str) -> Any:
    """One place for a knob's default: the Settings field's."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class GuardLimits:
    """The guards' knobs (contract "Guards"), the only settings an evaluation reads. The
    defaults are the settings' own (the contract's)."""

    max_send_lag_days: float = _setting_default("max_send_lag_days")
    freshness_hours: float = _setting_default("freshness_hours")
    min_day_volume_share: float = _setting_default("min_day_volume_share")
    max_rejected_share: float = _setting_default("max_rejected_share")
    max_sends_per_evaluation: int = _setting_default("max_sends_per_evaluation")
    max_entry_share: float = _setting_default("max_entry_share")

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardLimits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


class EvaluationDeferred(Exception):
    """The data is not ready for this instant: nothing is recorded and nothing is sent."""

    def __init__(self, reason: str, inputs: GuardInputs | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.inputs = inputs


@dataclass(frozen=True)
class GuardInputs:
    """What the guards need, computed once per evaluation run (shared by every campaign)."""

    end: datetime
    newest_events_dt: date | None
    recent_events: int  # events in [end - freshness_hours, end)
    day_volume: int  # events in [end - 24h, end)
    previous_day_volumes: tuple[int, ...]  # the 7 windows before, newest first
    rejected_share: float | None
    stale_reason: str | None
    deferred_reason: str | None
    broken_export_reason: str | None


def data_horizon(newest_dt: date) -> datetime:
    """The instant up to which the dump folder dt=D covers events: D + 1 day, 00:00 UTC."""
    return datetime.combine(newest_dt, datetime.min.time()) + DAY


def stale_reason(end: datetime, newest_dt: date | None, max_lag_days: float) -> str | None:
    if newest_dt is None:
        return None
    horizon = data_horizon(newest_dt)
    lag = horizon - end
    if lag <= timedelta(days=max_lag_days):
        return None
    return (
        f"stale evaluation: {to_iso(end)} is {lag.total_seconds() / 86400:g} days before the "
        f"newest ingested data (dt={newest_dt.isoformat()} covers until {to_iso(horizon)}), more "
        f"than NUDGE_MAX_SEND_LAG_DAYS={max_lag_days:g}; entries are recorded as skipped(stale)"
    )


def freshness_reason(
    end: datetime,
    recent_events: int,
    day_volume: int,
    previous_day_volumes: tuple[int, ...],
    freshness_hours: float,
    min_day_volume_share: float,
) -> str | None:
    if freshness_hours > 0 and recent_events == 0:
        return (
            f"freshness: no event with a time in the {freshness_hours:g} hours before "
            f"{to_iso(end)} (NUDGE_FRESHNESS_HOURS); the evaluation is deferred until data arrives"
        )
    days_with_events = sum(1 for v in previous_day_volumes if v > 0)
    if min_day_volume_share <= 0 or days_with_events < VOLUME_MIN_DAYS_WITH_EVENTS:
        return None
    median = statistics.median(previous_day_volumes)
    if day_volume < min_day_volume_share * median:
        return (
            f"freshness: the 24 hours before {to_iso(end)} have {day_volume} events, fewer than "
            f"{min_day_volume_share:g} x the median {median:g} of the {len(previous_day_volumes)} "
            f"days before (NUDGE_MIN_DAY_VOLUME_SHARE); the evaluation is deferred"
        )
    return None


def broken_export_reason(rejected_share: float | None, max_rejected_share: float) -> str | None:
    if rejected_share is None or rejected_share <= max_rejected_share:
        return None
    return (
        f"broken export: {rejected_share:.2%} of the lines read by this run were rejected, more "
        f"than NUDGE_MAX_REJECTED_SHARE={max_rejected_share:g}; sends are held until "
        "`nudge release CAMPAIGN`"
    )


def blast_radius_reason(
    campaign: str,
    sendable: int,
    entered: int,
    members: int,
    max_sends: int,
    max_entry_share: float,
) -> str | None:
    if sendable > max_sends:
        return (
            f"blast radius: {sendable} sendable entries in one evaluation of {campaign}, more "
            f"than the limit of {max_sends} (max_sends_per_evaluation); sends are held until "
            f"`nudge release {campaign}`"
        )
    if entered >= 100 and entered > max_entry_share * members:
        return (
            f"blast radius: {entered} of the cohort's {members} members of {campaign} entered in "
            f"one evaluation, more than the share {max_entry_share:g} (max_entry_share); sends "
            f"are held until `nudge release {campaign}`"
        )
    return None


def _newest_events_dt(wh: Warehouse) -> date | None:
    if not wh.table_exists("raw", "ingested_files"):
        return None
    row = wh.fetchone("select max(dt) from raw.ingested_files where kind = 'events'")
    value = row[0] if row else None
    if isinstance(value, datetime):
        return value.date()
    return value


def _event_counts(wh: Warehouse, end: datetime, freshness_hours: float) -> tuple[int, list[int]]:
    """(events in the freshness window, [events in each 24h window back from end, 8 of them])."""
    if not wh.table_exists("raw", "events"):
        return 0, [0] * (VOLUME_HISTORY_DAYS + 1)
    fresh_start = end - timedelta(hours=max(freshness_hours, 0))
    starts = [end - DAY * (k + 1) for k in range(VOLUME_HISTORY_DAYS + 1)]
    sums = [
        "sum(case when request_time >= ? and request_time < ? then 1 else 0 end)"
        for _ in range(len(starts) + 1)
    ]
    params: list[object] = [fresh_start, end]
    for start in starts:
        params += [start, start + DAY]
    lowest = min(fresh_start, starts[-1])
    row = wh.fetchone(
        f"select {', '.join(sums)} from raw.events where request_time >= ? and request_time < ?",
        [*params, lowest, end],
    )
    values = [int(v or 0) for v in (row or [])]
    return values[0], values[1:]


def rejected_share_of_run(wh: Warehouse, run_id: str | Sequence[str]) -> float | None:
    """Rejected lines / lines read by the ingest of `run_id` (None: that run read nothing).

    Several run ids: an evaluation whose new files were ingested by runs of their own.
    """
    if not wh.table_exists("raw", "ingested_files"):
        return None
    run_ids = [run_id] if isinstance(run_id, str) else list(run_id)
    if not run_ids:
        return None
    marks = ", ".join("?" for _ in run_ids)
    row = wh.fetchone(
        f"select sum(rejected), sum(lines_read) from raw.ingested_files where run_id in ({marks})",
        run_ids,
    )
    rejected, lines = row or (None, None)
    if not lines:
        return None
    return float(rejected or 0) / float(lines)


def compute_guard_inputs(
    wh: Warehouse,
    end: datetime,
    limits: GuardLimits,
    *,
    run_id: str | Sequence[str] | None = None,
    rejected_share: float | None = None,
) -> GuardInputs:
    """Read what the guards need once per evaluation run and decide the run-wide guards.

    The broken-export share is `rejected_share` when given, else that of the ingest recorded
    under `run_id` in raw.ingested_files. Raises EvaluationDeferred when freshness fails.
    """
    if rejected_share is None and run_id is not None:
        rejected_share = rejected_share_of_run(wh, run_id)
    newest = _newest_events_dt(wh)
    recent, days = _event_counts(wh, end, limits.freshness_hours)
    day_volume, previous = days[0], tuple(days[1:])
    inputs = GuardInputs(
        end=end,
        newest_events_dt=newest,
        recent_events=recent,
        day_volume=day_volume,
        previous_day_volumes=previous,
        rejected_share=rejected_share,
        stale_reason=stale_reason(end, newest, limits.max_send_lag_days),
        deferred_reason=freshness_reason(
            end,
            recent,
            day_volume,
            previous,
            limits.freshness_hours,
            limits.min_day_volume_share,
        ),
        broken_export_reason=broken_export_reason(rejected_share, limits.max_rejected_share),
    )
    if inputs.deferred_reason:
        raise EvaluationDeferred(inputs.deferred_reason, inputs)
    for reason in (inputs.stale_reason, inputs.broken_export_reason):
        if reason:
            log.warning(reason)
    return inputs
