"""Who a company cohort's email goes to when its yml says `recipients: users`.

One ledger row per company and one email to all its contacts: To holds every user of the company
with a valid address (dim_users), so the people who share an account see each other on the thread
and a reply-all reaches them all. The contacts are looked up at the evaluation that finds the
entry (and at each due drip step) and stored in the ledger payload, so a retry or a release sends
to the same people.

Also every address a message reaches, by role (To, CC, BCC), and the suppression list's cut of
them (contract "Suppression"): a suppressed address is dropped from the message in whatever role,
the drop is recorded on the ledger row (`suppressed_recipients`), and the entry is
`skipped(suppressed)` only when no To address is left. Checked at evaluation, and again on the
rows a send run has just claimed (`email_jobs.ledger.screen_claimed`), whatever brought them
there: a first send, a retry, a release or a drip step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from email_jobs.addresses import normalize_address, split_addresses
from email_jobs.campaigns import Campaign
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

MAX_CONTACTS = 50  # more than this in To is a mailing list, not an account's team
_CHUNK = 500


def company_contacts(
    wh: Warehouse, contacts_relation: str, company_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """company_id -> its users with a valid address, ordered by address (at most MAX_CONTACTS):
    [{"user_id", "email", "first_name", "last_name"}]."""
    relation = wh.relation(contacts_relation)
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for i in range(0, len(company_ids), _CHUNK):
        chunk = company_ids[i : i + _CHUNK]
        rows = wh.fetchall(
            f"select cast(company_id as varchar), user_id, email, first_name, last_name "
            f"from {relation} where email is not null "
            f"and cast(company_id as varchar) in ({', '.join('?' * len(chunk))})",
            chunk,
        )
        for company_id, user_id, email, first, last in rows:
            address = normalize_address(email)
            if address is None:
                continue
            contact = {"user_id": user_id, "email": address, "first_name": first, "last_name": last}
            found.setdefault(company_id, {}).setdefault(address.lower(), contact)
    result: dict[str, list[dict[str, Any]]] = {}
    for company_id, by_address in found.items():
        contacts = [by_address[k] for k in sorted(by_address)]
        if len(contacts) > MAX_CONTACTS:
            log.warning(
                "company %s has %d users with an address; emailing the first %d by address",
                company_id,
                len(contacts),
                MAX_CONTACTS,
            )
        result[company_id] = contacts[:MAX_CONTACTS]
    return result


def add_contacts(
    wh: Warehouse, campaign: Campaign, members: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The cohort rows, each with `contacts` and `email` (the first contact's address, None when
    the company has none: the entry is then skipped for want of an address) when the campaign
    mails a company's users; unchanged otherwise."""
    if campaign.recipients != "users" or not members:
        return members
    contacts = company_contacts(wh, campaign.contacts_relation, sorted(members))
    result: dict[str, dict[str, Any]] = {}
    for entity_id, row in members.items():
        people = contacts.get(entity_id, [])
        result[entity_id] = {
            **row,
            "contacts": people,
            "email": people[0]["email"] if people else None,
        }
    return result


# -- every address a message reaches, and the suppression list's cut ---------------------------

Role = Literal["to", "cc", "bcc"]


@dataclass(frozen=True)
class Recipients:
    """A message's valid addresses by role; each address once (To first, then CC, then BCC)."""

    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()

    def by_role(self) -> list[tuple[str, Role]]:
        return [
            *((a, "to") for a in self.to),
            *((a, "cc") for a in self.cc),
            *((a, "bcc") for a in self.bcc),
        ]


def _to_addresses(campaign: Campaign, row: Mapping[str, Any]) -> list[str]:
    """The row's `email`; for `recipients: users`, every contact's address (one email to all)."""
    contacts = row.get("contacts") if campaign.recipients == "users" else None
    if isinstance(contacts, list) and contacts:
        return [c.get("email") for c in contacts if isinstance(c, dict)]
    return [row.get("email")]


def _copied(campaign: Campaign, row: Mapping[str, Any], role: Role) -> list[Any]:
    fixed = campaign.cc if role == "cc" else campaign.bcc
    columns = (role, *(campaign.cc_columns if role == "cc" else campaign.bcc_columns))
    return [*fixed, *(a for c in dict.fromkeys(columns) for a in split_addresses(row.get(c)))]


def message_recipients(
    campaign: Campaign, row: Mapping[str, Any], *, warn_invalid: bool = False
) -> Recipients:
    """Every valid address the message for this cohort row (or ledger payload) would reach.

    An invalid CC or BCC is left out (it must not cost the member their email); with
    `warn_invalid` that is logged. An address already in an earlier role is not repeated."""
    seen: set[str] = set()
    roles: dict[Role, list[str]] = {"to": [], "cc": [], "bcc": []}
    entity_id = row.get("entity_id")
    for role, raws in (
        ("to", _to_addresses(campaign, row)),
        ("cc", _copied(campaign, row, "cc")),
        ("bcc", _copied(campaign, row, "bcc")),
    ):
        for raw in raws:
            address = normalize_address(raw)
            if address is None:
                if warn_invalid and role != "to":
                    log.warning(
                        "campaign %s, entity %s: dropping invalid %s address %r",
                        campaign.name,
                        entity_id,
                        role,
                        raw,
                    )
                continue
            if address.lower() not in seen:
                seen.add(address.lower())
                roles[role].append(address)
    return Recipients(tuple(roles["to"]), tuple(roles["cc"]), tuple(roles["bcc"]))


def drop_suppressed(
    recipients: Recipients, suppressed: Collection[str]
) -> tuple[Recipients, list[dict[str, str]]]:
    """(the recipients without the suppressed addresses, [{"address", "role"}] dropped).
    `suppressed` holds lower-cased addresses (email_jobs.suppressions.suppression_address)."""
    dropped = [
        {"address": a, "role": role} for a, role in recipients.by_role() if a.lower() in suppressed
    ]
    if not dropped:
        return recipients, []

    def keep(addresses: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(a for a in addresses if a.lower() not in suppressed)

    return Recipients(keep(recipients.to), keep(recipients.cc), keep(recipients.bcc)), dropped


def dropped_json(dropped: Sequence[Mapping[str, str]]) -> str | None:
    """The ledger's `suppressed_recipients` value: None when nobody was dropped."""
    return json.dumps(list(dropped), sort_keys=True) if dropped else None
