"""A durable spool between `nudge serve` and a DuckDB state store (NUDGE_STATE_STORE).

DuckDB lets one process write a file at a time, and the pipeline may hold it for minutes (dbt, a
send). `nudge serve` must answer SendGrid and a clicking recipient within a request's budget, so
on DuckDB it never opens the file: each request's records are written to a new file in
`<warehouse>.spool/`, fsync'd and renamed into `ready/` (the folder fsync'd too) before the
answer; a crash leaves either the whole file or none of it. The pipeline loads the ready files
into nudge.email_events and nudge.suppressions (both idempotent) and deletes each once committed:
at each evaluation (before the suppression list is read) and before every claim-time screen of a
send run, so an unsubscribe or a bounce stops the next batch ("at once"), while the send holds
the writer lock; and in the Dagster asset `email_events` after the sends and `nudge report`,
so the outcomes count what arrived since.

On Postgres `nudge serve` writes directly and the spool stays empty.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from email_jobs.email_events import event_from_record, store_events, store_unsubscribes
from email_jobs.unsubscribe import UnsubscribeTarget
from nudge.core.settings import Settings
from nudge.core.warehouse import Warehouse

log = logging.getLogger(__name__)

READY = "ready"
TMP = "tmp"
BAD = "bad"


def spool_dir(settings: Settings) -> Path | None:
    """`<duckdb file>.spool` beside the state store; None on Postgres (written directly)."""
    url = settings.state_store_url
    if url.kind != "duckdb":
        return None
    return url.path.with_name(url.path.name + ".spool")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_spool(folder: Path, records: list[dict[str, Any]]) -> Path:
    """One durable file of JSON lines; returns its path in ready/. Raises OSError."""
    (folder / TMP).mkdir(parents=True, exist_ok=True)
    (folder / READY).mkdir(parents=True, exist_ok=True)
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex}.jsonl"
    tmp, ready = folder / TMP / name, folder / READY / name
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, ready)
    _fsync_dir(folder / READY)
    return ready


def probe_spool(folder: Path) -> None:
    """Create the folders and write, fsync and delete a probe file: raises OSError unless the
    spool can take a record now."""
    (folder / READY).mkdir(parents=True, exist_ok=True)
    (folder / TMP).mkdir(parents=True, exist_ok=True)
    probe = folder / TMP / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def unsubscribe_record(target: UnsubscribeTarget, at: datetime) -> dict[str, Any]:
    return {
        "kind": "unsubscribe",
        "campaign": target.campaign,
        "entity_id": target.entity_id,
        "address": target.address,
        "at": at.isoformat(),
    }


@dataclass
class SpoolLoad:
    files: int = 0
    events: int = 0
    unsubscribes: int = 0


def load_spool(wh: Warehouse, settings: Settings) -> SpoolLoad:
    """Store every ready spool file of this state store `wh` (none on Postgres)."""
    return load_spool_folder(wh, spool_dir(settings))


def load_spool_folder(wh: Warehouse, folder: Path | None) -> SpoolLoad:
    """Store every ready spool file, oldest first, deleting each once stored. A file that cannot
    be parsed is moved to bad/ (and logged), never dropped."""
    loaded = SpoolLoad()
    if folder is None or not (folder / READY).is_dir():
        return loaded
    for path in sorted((folder / READY).glob("*.jsonl")):
        try:
            records = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
            events = [event_from_record(r) for r in records if r.get("kind") == "event"]
            unsubscribes = [
                (
                    UnsubscribeTarget(r["campaign"], r["entity_id"], r["address"]),
                    datetime.fromisoformat(r["at"]),
                )
                for r in records
                if r.get("kind") == "unsubscribe"
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            (folder / BAD).mkdir(exist_ok=True)
            os.replace(path, folder / BAD / path.name)
            log.error("spool file %s cannot be loaded (%s); moved to %s", path.name, exc, BAD)
            continue
        if unsubscribes:
            store_unsubscribes(wh, unsubscribes)
        if events:
            store_events(wh, events)
        path.unlink()
        loaded.files += 1
        loaded.events += len(events)
        loaded.unsubscribes += len(unsubscribes)
    if loaded.files:
        log.info(
            "loaded %d spool file(s): %d event(s), %d unsubscribe(s)",
            loaded.files,
            loaded.events,
            loaded.unsubscribes,
        )
    return loaded
