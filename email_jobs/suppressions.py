"""The suppression list: addresses Nudge never mails (contract: "Suppression").

`nudge.suppressions` holds one row per (address, source) sighting: the email (normalized and
lower-cased), a reason, the source, when Nudge first saw it (`first_seen_at`) and, for SendGrid,
the provider's own time of it (`source_time`). Sources:

- `suppressions/*.csv` in the landing folder: one address a line, `email[, reason]`, with or
  without a header row (a header names its columns `email` and optionally `reason`, in any
  order). Source `csv:suppressions/<file>`. A line whose address is not valid is reported with
  its file and line and left out (it could not match a recipient anyway); a file that cannot be
  read is reported too.
- With the SendGrid backend, SendGrid's bounce, unsubscribe and spam-report lists
  (GET /v3/suppression/{bounces,unsubscribes,spam_reports}, paged). Source `sendgrid:<list>`.
- `nudge suppress add ADDRESS`: source `manual`, with who added it.

It fails closed: the list only grows from what Nudge has seen. A sync inserts the sightings it
has not stored yet and never deletes, so a missing folder, an unreadable, half-written or emptied
file, a removed line or a list SendGrid will not give never lifts a suppression.

Lifting is the one way out, explicit and recorded: `nudge suppress remove ADDRESS --reason TEXT`
stamps every active row of the address with `lifted_at`, `lifted_by` and `lifted_reason` (rows
are kept; "active" means not lifted, and every reader uses active rows only). A lifted address
stays mailable while its sources keep reporting what they reported before: a sighting suppresses
it again only when it is NEW, that is
- a source that has no row for the address at all (another CSV file, another SendGrid list, an
  unsubscribe), or `nudge suppress add`;
- or a SendGrid entry whose own time (`created`) is after the lift: a new bounce, unsubscribe or
  spam report.
A CSV line carries no time, so the same line read again is the same sighting; to suppress a
lifted address again by file, put it in another file (or use `nudge suppress add`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from email_jobs.addresses import normalize_address
from email_jobs.store import ACTIVE_SUPPRESSION, ensure_schema, utcnow
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

FOLDER = "suppressions"
CSV_SOURCE_PREFIX = "csv:"
SENDGRID_LISTS = ("bounces", "unsubscribes", "spam_reports")
PAGE_SIZE = 500
MAX_PAGES = 2_000  # a million addresses per list; beyond that something is wrong


@dataclass(frozen=True)
class Suppression:
    email: str  # normalized, lower-cased
    reason: str | None
    source: str
    seen_at: datetime | None = None  # the source's own time of it (SendGrid's `created`)
    entity_id: str | None = None  # unsubscribe links: the member whose message held the link


@dataclass
class SuppressionSync:
    """What one sync left: active addresses per source, problems (file and line, or list and
    error), and how many sightings were new."""

    by_source: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    added: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def metadata(self) -> dict[str, Any]:
        return {
            "suppressions": self.total,
            "suppressions_added": self.added,
            "suppression_problems": "\n".join(self.problems[:20]),
        }


def suppression_address(value: object) -> str | None:
    """The form addresses are stored and compared in: normalized, then lower-cased."""
    address = normalize_address(value)
    return address.lower() if address else None


# -- CSV files ---------------------------------------------------------------------------------


def _header(fields: list[str]) -> tuple[int, int | None] | None:
    """(email column, reason column) when this row is a header, else None."""
    names = [f.strip().lower() for f in fields]
    if "email" not in names or suppression_address(fields[names.index("email")]):
        return None
    return names.index("email"), (names.index("reason") if "reason" in names else None)


def parse_suppression_csv(text: str, where: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """([(address, reason)], problems) of one CSV's text; `where` names it in problems."""
    entries: list[tuple[str, str | None]] = []
    problems: list[str] = []
    email_col, reason_col = 0, 1
    reader = csv.reader(io.StringIO(text))
    first = True
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if first:
            first = False
            header = _header(fields)
            if header is not None:
                email_col, reason_col = header
                continue
            if len(fields) > 2:
                problems.append(
                    f"{where}, line {line}: expected the columns email[, reason] (or a header "
                    f"row naming them), got {len(fields)} fields"
                )
        raw = fields[email_col] if email_col < len(fields) else ""
        address = suppression_address(raw)
        if address is None:
            problems.append(f"{where}, line {line}: {raw.strip()!r} is not an email address")
            continue
        reason = None
        if reason_col is not None and reason_col < len(fields):
            reason = fields[reason_col].strip() or None
        entries.append((address, reason))
    return entries, problems


Sources = dict[str, list[Suppression] | None]  # None: unreadable now, keep what is stored


def read_suppression_files(landing_dir: Path) -> tuple[Sources, list[str]]:
    """{source: rows} for every `suppressions/*.csv` (None when unreadable), and the problems."""
    folder = landing_dir / FOLDER
    by_source: Sources = {}
    problems: list[str] = []
    if not folder.is_dir():
        return by_source, problems
    for path in sorted(folder.glob("*.csv")):
        where = f"{FOLDER}/{path.name}"
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{where}: cannot be read ({exc}); its earlier entries are kept")
            by_source[CSV_SOURCE_PREFIX + where] = None
            continue
        entries, found = parse_suppression_csv(text, where)
        problems += found
        source = CSV_SOURCE_PREFIX + where
        by_source[source] = [Suppression(a, r, source) for a, r in dict(entries).items()]
    return by_source, problems


# -- SendGrid ------------------------------------------------------------------------------


def _created(entry: dict[str, Any]) -> datetime | None:
    """SendGrid's `created` (Unix seconds) as naive UTC; None when absent or not a number."""
    created = entry.get("created")
    if isinstance(created, bool) or not isinstance(created, int | float):
        return None
    try:
        return datetime.fromtimestamp(created, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return None


def fetch_sendgrid_list(client: Any, name: str) -> list[Suppression]:
    """Every entry of one SendGrid suppression list, page by page (official client)."""
    endpoint = getattr(client.client.suppression, name)
    source = f"sendgrid:{name}"
    found: dict[str, Suppression] = {}
    for page in range(MAX_PAGES):
        response = endpoint.get(query_params={"limit": PAGE_SIZE, "offset": page * PAGE_SIZE})
        body = response.body
        entries = json.loads(body) if body else []
        if not isinstance(entries, list):
            raise ValueError(f"SendGrid {name}: expected a JSON list, got {type(entries).__name__}")
        for entry in entries:
            address = suppression_address(entry.get("email") if isinstance(entry, dict) else None)
            if address:
                found[address] = Suppression(
                    address, entry.get("reason") or name, source, _created(entry)
                )
        if len(entries) < PAGE_SIZE:
            return list(found.values())
    raise ValueError(f"SendGrid {name}: more than {MAX_PAGES} pages; refusing to go on")


def read_sendgrid_lists(settings: Settings) -> tuple[Sources, list[str]]:
    """{source: rows} for each SendGrid list that could be fetched, and the problems."""
    from python_http_client.exceptions import HTTPError
    from sendgrid import SendGridAPIClient

    from email_jobs.backends.sendgrid import DEFAULT_HOST, DEFAULT_TIMEOUT_S, sendgrid_error_text

    key = settings.sendgrid_api_key.get_secret_value() if settings.sendgrid_api_key else ""
    client = SendGridAPIClient(key, host=(settings.sendgrid_host or DEFAULT_HOST).rstrip("/"))
    client.client.timeout = DEFAULT_TIMEOUT_S
    by_source: Sources = {}
    problems: list[str] = []
    for name in SENDGRID_LISTS:
        try:
            by_source[f"sendgrid:{name}"] = fetch_sendgrid_list(client, name)
        except HTTPError as exc:
            error = sendgrid_error_text(exc.status_code, exc.body)
            problems.append(
                f"SendGrid {name} list not synced ({error}); its last synced entries are kept"
            )
        except (OSError, ValueError) as exc:
            problems.append(
                f"SendGrid {name} list not synced ({type(exc).__name__}: {exc}); its last synced "
                "entries are kept"
            )
    return by_source, problems


# -- storing -------------------------------------------------------------------------------

# Serializes syncs, adds and lifts on Postgres, so two of them never both insert one sighting or
# a lift never races the insert it should cover (DuckDB has one writer per file anyway).
_LOCK_ID = 7_446_110_302


def _lock(wh: Warehouse) -> None:
    if wh.kind == "postgres":
        wh.execute("select pg_advisory_xact_lock(?)", [_LOCK_ID])


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _stored(wh: Warehouse, source: str) -> dict[str, tuple[bool, datetime | None]]:
    """email -> (has an active row, latest lift) of one source's stored rows."""
    found: dict[str, tuple[bool, datetime | None]] = {}
    rows = wh.fetchall(
        "select email, max(case when lifted_at is null then 1 else 0 end), max(lifted_at) "
        "from nudge.suppressions where source = ? group by email",
        [source],
    )
    for email, active, lifted in rows:
        found[email] = (bool(active), lifted)
    return found


def new_sightings(
    rows: Iterable[Suppression], stored: dict[str, tuple[bool, datetime | None]]
) -> list[Suppression]:
    """The sightings of one source to insert: an address the source never reported, or one whose
    rows are all lifted and which the source reports again with a time after the last lift."""
    result: list[Suppression] = []
    for row in rows:
        active, lifted = stored.get(row.email, (False, None))
        if row.email not in stored:
            result.append(row)
        elif not active and lifted is not None and row.seen_at and row.seen_at > lifted:
            result.append(row)
    return result


def store_suppressions(wh: Warehouse, by_source: Sources) -> int:
    """Insert the new sightings of every source given (None: unreadable now, nothing to add).
    Never deletes or lifts anything. Returns how many rows were inserted."""
    ensure_schema(wh)
    inserted = 0
    with wh.transaction():
        _lock(wh)
        for source, rows in sorted(by_source.items()):
            if rows is None:
                continue
            fresh = new_sightings(rows, _stored(wh, source))
            _insert(wh, fresh)
            inserted += len(fresh)
    return inserted


def _insert(wh: Warehouse, rows: Iterable[Suppression], added_by: str | None = None) -> None:
    now = utcnow()
    values = [(r.email, r.reason, r.source, now, r.seen_at, added_by, r.entity_id) for r in rows]
    for part in _chunks(values):
        wh.execute(
            "insert into nudge.suppressions "
            "(email, reason, source, first_seen_at, source_time, added_by, entity_id) values "
            + ", ".join("(?, ?, ?, ?, ?, ?, ?)" for _ in part),
            [v for row in part for v in row],
        )


def sync_suppressions(
    wh: Warehouse, settings: Settings, *, sendgrid: bool | None = None
) -> SuppressionSync:
    """Add what the landing folder's CSVs and (with the SendGrid backend, or `sendgrid=True`)
    SendGrid's lists report and nudge.suppressions does not hold yet. Problems are logged and
    returned, never raised: a bad line must not stop the evaluation that the rest of the list
    protects."""
    by_source, problems = read_suppression_files(settings.landing_dir)
    if sendgrid if sendgrid is not None else settings.email_backend == "sendgrid":
        lists, found = read_sendgrid_lists(settings)
        by_source.update(lists)
        problems += found
    added = store_suppressions(wh, by_source)
    counts = dict(
        wh.fetchall(
            "select source, count(distinct email) from nudge.suppressions "
            f"where {ACTIVE_SUPPRESSION} group by source order by 1"
        )
    )
    sync = SuppressionSync({s: int(n) for s, n in counts.items()}, problems, added)
    for problem in problems:
        log.warning("suppression list: %s", problem)
    log.info(
        "suppression list: %d active address row(s) from %d source(s), %d new",
        sync.total,
        len(counts),
        added,
    )
    return sync


# -- by hand: nudge suppress add | remove | list ----------------------------------------------


class SuppressionError(ValueError):
    """A `nudge suppress` request that cannot be done (the message says why, in one line)."""


MANUAL_SOURCE = "manual"


def _address(value: str) -> str:
    address = suppression_address(value)
    if address is None:
        raise SuppressionError(f"{value!r} is not an email address")
    return address


def add_suppression(wh: Warehouse, value: str, reason: str | None, by: str) -> bool:
    """Suppress an address by hand (source `manual`). False when a manual suppression of it is
    already active (nothing changes)."""
    address = _address(value)
    ensure_schema(wh)
    with wh.transaction():
        _lock(wh)
        row = wh.fetchone(
            "select count(*) from nudge.suppressions where email = ? and source = ? "
            f"and {ACTIVE_SUPPRESSION}",
            [address, MANUAL_SOURCE],
        )
        if row and int(row[0]):
            return False
        _insert(wh, [Suppression(address, reason, MANUAL_SOURCE)], added_by=by)
    return True


def lift_suppression(wh: Warehouse, value: str, reason: str, by: str) -> list[str]:
    """Lift every active suppression of an address, recording who, when and why; returns the
    sources lifted. Raises SuppressionError when the address is not suppressed."""
    address = _address(value)
    if not reason.strip():
        raise SuppressionError("lifting a suppression needs a reason (--reason TEXT)")
    ensure_schema(wh)
    with wh.transaction():
        _lock(wh)
        sources = [
            r[0]
            for r in wh.fetchall(
                "select distinct source from nudge.suppressions where email = ? "
                f"and {ACTIVE_SUPPRESSION} order by 1",
                [address],
            )
        ]
        if not sources:
            raise SuppressionError(f"{address} is not suppressed; nothing to remove")
        wh.execute(
            "update nudge.suppressions set lifted_at = ?, lifted_by = ?, lifted_reason = ? "
            f"where email = ? and {ACTIVE_SUPPRESSION}",
            [utcnow(), by, reason.strip(), address],
        )
    return sources


LIST_COLUMNS = (
    "email",
    "source",
    "reason",
    "first_seen_at",
    "added_by",
    "lifted_at",
    "lifted_by",
    "lifted_reason",
)


def list_suppressions(wh: Warehouse, *, include_lifted: bool = False) -> list[dict[str, Any]]:
    """The active suppressions (and, with include_lifted, the lifted ones), by address."""
    ensure_schema(wh)
    where = "" if include_lifted else f"where {ACTIVE_SUPPRESSION}"
    rows = wh.fetchall(
        f"select {', '.join(LIST_COLUMNS)} from nudge.suppressions {where} "
        "order by email, source, first_seen_at"
    )
    return [dict(zip(LIST_COLUMNS, r, strict=True)) for r in rows]
