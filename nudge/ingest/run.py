"""`run_ingest`: load every new or changed dump file of the landing folder into `raw`."""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from nudge.ingest import landing
from nudge.ingest.fastpath import Prefetch
from nudge.ingest.landing import LandingFile
from nudge.ingest.loading import FileIdentity, Loader, ensure_schema, few_checkpoints
from nudge.ingest.report import FileResult, FileStatus, IngestReport
from nudge.ingest.staging import (
    FileVanished,
    StageCounts,
    prepare,
    restore,
    stage_broken_gzip,
    stage_file,
)
from nudge.warehouse import Warehouse

log = logging.getLogger(__name__)

# Postgres: one ingest at a time per database (DuckDB has its file lock).
_PG_LOCK_KEY = 0x6E75646765  # "nudge"


def run_ingest(
    wh: Warehouse,
    landing_dir: Path,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    kinds: Collection[str] | None = None,
    dts: Collection[date] | None = None,
) -> IngestReport:
    """Ingest each dump file not yet ingested in this version; one transaction per file.

    A file is identified by (path, content hash). Unchanged size and mtime skip it without
    reading; a changed file is ingested again, its events deduplicated by event_key against
    everything already loaded (the first copy wins). `kinds` and `dts` narrow the files taken
    (a Dagster partition run ingests its own dt= folder only).
    """
    landing_dir = Path(landing_dir)
    run_id = run_id or f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = IngestReport(run_id=run_id)
    ensure_schema(wh)
    files = landing.select(landing.discover(landing_dir), kinds=kinds, dts=dts)
    known = _known_versions(wh)
    log.info("ingest %s: %d dump files under %s", run_id, len(files), landing_dir)

    parser = wh.conn if wh.kind == "duckdb" else duckdb.connect()
    prev = prepare(parser)
    if wh.kind == "postgres":
        wh.execute("select pg_advisory_lock(?)", [_PG_LOCK_KEY])
    loader = Loader(wh, parser)
    prefetch = Prefetch(_to_read(files, known))
    try:
        with few_checkpoints(wh):
            for i, lf in enumerate(files, 1):
                result = _ingest_file(lf, known, loader, parser, run_id, prefetch)
                report.files.append(result)
                msg = f"[{i}/{len(files)}] {_describe(result)}"
                log.info(msg)
                if progress is not None:
                    progress(msg)
    finally:
        prefetch.close()
        loader.close()
        if wh.kind == "postgres":
            wh.execute("select pg_advisory_unlock(?)", [_PG_LOCK_KEY])
            wh.commit()
            parser.close()
        else:
            restore(parser, prev)
    report.newest_dt = _newest_dt(wh)
    log.info(report.summary())
    return report


def _ingest_file(
    lf: LandingFile,
    known: dict[str, list[tuple[int, float, str]]],
    loader: Loader,
    parser: duckdb.DuckDBPyConnection,
    run_id: str,
    prefetch: Prefetch,
) -> FileResult:
    vanished = FileResult(kind=lf.kind, path=lf.rel, status="vanished", dt=lf.dt)
    try:
        st = lf.path.stat()
        versions = known.get(lf.rel, [])
        if any(size == st.st_size and mtime == st.st_mtime for size, mtime, _ in versions):
            return FileResult(kind=lf.kind, path=lf.rel, status="skipped", dt=lf.dt)
        scanned = prefetch.get(lf.path)  # hashed ahead, while the previous file was parsed
        if (scanned.size, scanned.mtime) != (st.st_size, st.st_mtime):
            log.warning("%s changed while being read; it will be retried once stable", lf.rel)
            return FileResult(kind=lf.kind, path=lf.rel, status="changing", dt=lf.dt)
        digest = scanned.content_hash
        if any(h == digest for _, _, h in versions):
            # Same bytes, new mtime (copied, touched): remember the new stat to skip cheaply.
            loader.wh.execute(
                "update raw.ingested_files set size_bytes = ?, mtime = ? "
                "where path = ? and content_hash = ?",
                [st.st_size, st.st_mtime, lf.rel, digest],
            )
            loader.wh.commit()
            known[lf.rel].append((st.st_size, st.st_mtime, digest))
            return FileResult(kind=lf.kind, path=lf.rel, status="skipped", dt=lf.dt)
        shape = landing.sniff(lf.path)
    except FileNotFoundError:
        log.warning("%s vanished before it could be read; it will be retried", lf.rel)
        return vanished
    ident = FileIdentity(size=st.st_size, mtime=st.st_mtime, content_hash=digest)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        counts = _stage(lf, shape, parser, scanned.lines)
    except FileVanished:
        log.warning("%s vanished while being read; it will be retried", lf.rel)
        return vanished
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        counts = None
        reason = f"cannot read file: {_first_line(exc)}"
    moved = _moved_since(lf, st)
    if moved == "vanished":
        log.warning("%s vanished while being read; it will be retried", lf.rel)
        return vanished
    if moved == "changing":
        # Still being written (or replaced) while it was read: recording what was read would
        # keep a half file (and a cut-off last line) as ingested. The next run takes it whole.
        log.warning("%s changed while being read; it will be ingested once it is stable", lf.rel)
        return FileResult(kind=lf.kind, path=lf.rel, status="changing", dt=lf.dt)
    if counts is None:
        # Nothing in the file is readable (a corrupt gzip header and the like).
        log.warning("%s: %s", lf.rel, reason)
        result = loader.record_unreadable(lf, ident, reason, run_id, now)
    else:
        result = loader.load(lf, counts, ident, run_id, now)
    known.setdefault(lf.rel, []).append((ident.size, ident.mtime, ident.content_hash))
    return result


def pending_event_dts(wh: Warehouse, landing_dir: Path) -> list[date]:
    """The dt= folders holding an event file not yet ingested in its current version.

    Decided by size and mtime, like the ingest's own cheap skip; a touched but unchanged file
    counts as pending (its ingest then only records the new stat).
    """
    ensure_schema(wh)
    known = _known_versions(wh)
    pending: set[date] = set()
    for lf in landing.discover(Path(landing_dir)):
        if lf.kind != "events" or lf.dt is None:
            continue
        try:
            st = lf.path.stat()
        except FileNotFoundError:
            continue
        if not any(
            size == st.st_size and mtime == st.st_mtime for size, mtime, _ in known.get(lf.rel, [])
        ):
            pending.add(lf.dt)
    return sorted(pending)


def _stage(
    lf: LandingFile,
    shape: landing.FileShape,
    parser: duckdb.DuckDBPyConnection,
    lines: int | None = None,
) -> StageCounts:
    """Stage one file; a gzip stream that breaks off keeps its complete lines (see
    `stage_broken_gzip`)."""
    try:
        return stage_file(parser, lf.kind, lf.path, shape, lf.dt, lines)
    except duckdb.IOException:
        if not shape.gzip:
            raise
        with tempfile.TemporaryDirectory(prefix="nudge-gzip-") as tmp:
            counts = stage_broken_gzip(parser, lf.kind, lf.path, lf.dt, Path(tmp))
        if counts is None:
            raise
        return counts


def _moved_since(lf: LandingFile, before: os.stat_result) -> FileStatus | None:
    """`vanished` or `changing` when the file is not as it was before it was hashed and read."""
    try:
        now = lf.path.stat()
    except FileNotFoundError:
        return "vanished"
    if (now.st_size, now.st_mtime) != (before.st_size, before.st_mtime):
        return "changing"
    return None


def _to_read(
    files: list[LandingFile], known: dict[str, list[tuple[int, float, str]]]
) -> list[Path]:
    """The files whose size or mtime matches no version ingested before: they will be read."""
    out = []
    for lf in files:
        try:
            st = lf.path.stat()
        except FileNotFoundError:
            continue
        if not any(v[:2] == (st.st_size, st.st_mtime) for v in known.get(lf.rel, [])):
            out.append(lf.path)
    return out


def _known_versions(wh: Warehouse) -> dict[str, list[tuple[int, float, str]]]:
    out: dict[str, list[tuple[int, float, str]]] = {}
    for path, size, mtime, digest in wh.fetchall(
        "select path, size_bytes, mtime, content_hash from raw.ingested_files"
    ):
        out.setdefault(path, []).append((int(size), float(mtime), digest))
    return out


def _newest_dt(wh: Warehouse) -> date | None:
    row = wh.fetchone("select max(dt) from raw.ingested_files where kind = 'events'")
    wh.commit()
    return row[0] if row else None


def _describe(r: FileResult) -> str:
    if r.status != "loaded":
        return f"{r.path}: {r.status}"
    text = (
        f"{r.path}: {r.lines_read} lines, {r.loaded} loaded, {r.duplicates} duplicates, "
        f"{r.rejected} rejected"
    )
    if r.conflicts:
        text += f" ({r.conflicts} duplicates differ from the copy kept)"
    return text + (f" - {r.note}" if r.note else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
