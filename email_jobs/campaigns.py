"""Campaigns as analysts declare them in a cohort model's yml (`config.meta.nudge`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Campaign:
    name: str  # campaign id: headers, ledger, UI
    cohort: str  # dbt model name, e.g. cohort_too_many_4xx_7d
    relation_name: str  # dbt relation_name of the cohort model
    entity: Literal["user", "company"]
    template: str  # folder under email_jobs/templates/
    cooldown_days: float = 30
    baseline_first_run: bool = True
    max_sends_per_evaluation: int | None = None  # None: NUDGE_MAX_SENDS_PER_EVALUATION
    max_entry_share: float | None = None  # None: NUDGE_MAX_ENTRY_SHARE
    cc: tuple[str, ...] = ()  # fixed CC addresses (a `cc` column adds more per member)
    bcc: tuple[str, ...] = ()
    unsubscribe_group_id: int | None = None
    on_unknown: Literal["hold", "resend"] = "hold"
    columns: tuple[str, ...] = ()  # columns declared in the cohort's yml
    description: str = ""
    dbt_unique_id: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)
