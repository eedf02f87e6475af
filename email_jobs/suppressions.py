"""The suppression list: addresses Nudge never mails (contract: "on the suppression list").

Two sources land in `nudge.suppressions` (email normalized and lower-cased, reason, source):

- `suppressions/*.csv` in the landing folder: one address a line, `email[, reason]`, with or
  without a header row (a header names its columns `email` and optionally `reason`, in any
  order). Source `csv:suppressions/<file>`. A line whose address is not valid is reported with
  its file and line and left out (it could not match a recipient anyway); a file that cannot be
  read is reported too, and its earlier rows are kept.
- With the SendGrid backend, SendGrid's bounce, unsubscribe and spam-report lists
  (GET /v3/suppression/{bounces,unsubscribes,spam_reports}, paged). Source `sendgrid:<list>`.
  A list that cannot be fetched keeps its rows from the last successful sync.

Each sync replaces a source's rows, so an address removed from a file (or from SendGrid's list)
is mailable again. Entries of suppressed addresses are recorded `skipped(suppressed)` at
evaluation, and pending rows are re-checked before every send (email_jobs.ledger).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from email_jobs.addresses import normalize_address
from email_jobs.ledger import ensure_schema
from nudge.settings import Settings
from nudge.warehouse import Warehouse

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


@dataclass
class SuppressionSync:
    """What one sync found: rows per source, and problems (file and line, or list and error)."""

    by_source: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def metadata(self) -> dict[str, Any]:
        return {
            "suppressions": self.total,
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
                found[address] = Suppression(address, entry.get("reason") or name, source)
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


def store_suppressions(wh: Warehouse, by_source: Sources, *, csv_complete: bool) -> None:
    """Replace the stored rows of every source given (None keeps that source's rows). With
    `csv_complete`, CSV sources no longer on disk are dropped."""
    ensure_schema(wh)
    with wh.transaction():
        if csv_complete:
            present = [s for s in by_source if s.startswith(CSV_SOURCE_PREFIX)]
            marks = ", ".join("?" * len(present))
            wh.execute(
                "delete from nudge.suppressions where source like 'csv:%'"
                + (f" and source not in ({marks})" if present else ""),
                present,
            )
        for source, rows in by_source.items():
            if rows is None:
                continue  # unreadable now: keep what was stored
            wh.execute("delete from nudge.suppressions where source = ?", [source])
            _insert(wh, rows)


def _insert(wh: Warehouse, rows: Iterable[Suppression], chunk: int = 500) -> None:
    values = [(r.email, r.reason, r.source) for r in rows]
    for i in range(0, len(values), chunk):
        part = values[i : i + chunk]
        wh.execute(
            "insert into nudge.suppressions (email, reason, source) values "
            + ", ".join("(?, ?, ?)" for _ in part),
            [v for row in part for v in row],
        )


def sync_suppressions(
    wh: Warehouse, settings: Settings, *, sendgrid: bool | None = None
) -> SuppressionSync:
    """Load the landing folder's CSVs and (with the SendGrid backend, or `sendgrid=True`)
    SendGrid's lists into nudge.suppressions. Problems are logged and returned, never raised:
    a bad line must not stop the evaluation that the rest of the list protects."""
    by_source, problems = read_suppression_files(settings.landing_dir)
    if sendgrid if sendgrid is not None else settings.email_backend == "sendgrid":
        lists, found = read_sendgrid_lists(settings)
        by_source.update(lists)
        problems += found
    store_suppressions(wh, by_source, csv_complete=True)
    counts = dict(
        wh.fetchall("select source, count(*) from nudge.suppressions group by source order by 1")
    )
    sync = SuppressionSync({s: int(n) for s, n in counts.items()}, problems)
    for problem in problems:
        log.warning("suppression list: %s", problem)
    log.info("suppression list: %d address(es) from %d source(s)", sync.total, len(counts))
    return sync
