"""Holdout groups: which members of a campaign are held out as the control group.

A member's group is a pure function of (campaign, entity): sha256 of both, read as a number
uniform in [0, 1), against the campaign's `holdout_share`. So a member is in the same group on
every entry, in every process and on every replay, with no state to store or lose; and raising
the share only moves members from treatment into the holdout, never the other way.
"""

from __future__ import annotations

import hashlib

HOLDOUT_REASON = "holdout"  # the ledger reason of a held-out entry: skipped(holdout)


def holdout_position(campaign: str, entity_id: str) -> float:
    """The member's stable position in [0, 1) for this campaign."""
    # The length prefix keeps ("a|b", "c") and ("a", "b|c") apart.
    digest = hashlib.sha256(f"{len(campaign)}:{campaign}|{entity_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(campaign: str, entity_id: str, share: float) -> bool:
    return share > 0 and holdout_position(campaign, entity_id) < share
