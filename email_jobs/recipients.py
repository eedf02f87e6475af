"""Who a company cohort's email goes to when its yml says `recipients: users`.

One ledger row per company and one email to all its contacts: To holds every user of the company
with a valid address (dim_users), so the people who share an account see each other on the thread
and a reply-all reaches them all. The contacts are looked up at the evaluation that finds the
entry (and at each due drip step) and stored in the ledger payload, so a retry or a release sends
to the same people.
"""

from __future__ import annotations

import logging
from typing import Any

from email_jobs.addresses import normalize_address
from email_jobs.campaigns import Campaign
from nudge.warehouse import Warehouse

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
