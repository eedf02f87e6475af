"""`ingest_pending`: load every new or changed dump file of the landing folder into `raw`.

It chooses each file's read path (the table in `nudge.ingest`): on a DuckDB warehouse, runs of
new event files are read together (`read_together`); every other file is read on its own by
`_read_one_file`, which tries the clean read first and falls back to reading line by line.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

import nudge.ingest.landing as landing
import nudge.ingest.read_by_line as read_by_line
import nudge.ingest.read_together as read_together
from nudge.core.warehouse import Warehouse
from nudge.ingest.file_scan import Prefetch, Scanned
from nudge.ingest.landing import LandingFile
from nudge.ingest.loading import FileIdentity, Loader, ensure_schema, few_checkpoints
from nudge.ingest.read_by_line import read_array_by_element, read_cut_short_gzip, read_line_by_line
from nudge.ingest.read_clean import read_clean_file
from nudge.ingest.read_together import BatchFile
from nudge.ingest.report import FileResult, FileStatus, IngestReport
from nudge.ingest.staging import FileVanished, StageCounts, prepare, restore

log = logging.getLogger(__name__)

# Postgres: one ingest at a time per database (DuckDB has its file lock).
_PG_LOCK_KEY = 0x6E75646765  # "nudge"


def ingest_pending(
    wh: Warehouse,
    landing_dir: Path,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    kinds: Collection[str] | None = None,
    dts: Collection[date] | None = None,
) -> IngestReport:
    """Ingest each dump file not yet ingested in this version; each file is recorded in the
    transaction that loads its rows.

    A file is identified by (path, content hash). Unchanged size and mtime skip it without
    reading; a changed file is ingested again, its events deduplicated by event_key against
    everything already loaded (the first copy wins). `kinds` and `dts` narrow the files taken
    (a Dagster partition run ingests its own dt= folder only).

    On a DuckDB warehouse, new event files are read together (`read_together`): the clean ones
    load together, in one transaction, with the result loading them one by one would give; the
    others are read on their own. On Postgres every file is read on its own. On Spark, Spark
    reads them, in batches (`spark_reader`).
    """
    landing_dir = Path(landing_dir)
    run_id = run_id or f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = IngestReport(run_id=run_id)
    ensure_schema(wh)
    files = landing.select(landing.discover(landing_dir), kinds=kinds, dts=dts)
    known = _known_versions(wh)
    log.info("ingest %s: %d dump files under %s", run_id, len(files), landing_dir)

    def emit(result: FileResult) -> None:
        report.files.append(result)
        msg = f"[{len(report.files)}/{len(files)}] {_describe(result)}"
        log.info(msg)
        if progress is not None:
            progress(msg)

    if wh.kind == "spark":
        # Spark reads the files itself; pyspark is imported only for a Spark warehouse.
        from nudge.ingest.spark_reader import ingest_spark

        ingest_spark(wh, files, known, run_id, emit)
        report.newest_dt = _newest_dt(wh)
        log.info(report.summary())
        return report

    parser = wh.conn if wh.kind == "duckdb" else duckdb.connect()
    prev = prepare(parser)
    if wh.kind == "postgres":
        wh.execute("select pg_advisory_lock(?)", [_PG_LOCK_KEY])
    loader = Loader(wh, parser)
    prefetch = Prefetch(_to_read(files, known))
    run = _Run(known, loader, parser, run_id, prefetch, emit)
    try:
        with few_checkpoints(wh):
            if wh.kind == "duckdb":
                run.in_batches(files)
            else:
                for lf in files:
                    emit(run.on_its_own(lf))
    finally:
        prefetch.close()
        loader.close()
        if wh.kind == "postgres":
            wh.execute("select pg_advisory_unlock(?)", [_PG_LOCK_KEY])
            wh.commit()
            parser.close()
        else:
            read_together.drop(parser)
            read_by_line.drop_temp(parser)
            restore(parser, prev)
    report.newest_dt = _newest_dt(wh)
    log.info(report.summary())
    return report


@dataclass
class _Candidate:
    """A file to read: new or changed by its size and mtime (`st`)."""

    lf: LandingFile
    st: os.stat_result
    shape: landing.FileShape


@dataclass
class _Run:
    known: dict[str, list[tuple[int, float, str]]]
    loader: Loader
    parser: duckdb.DuckDBPyConnection
    run_id: str
    prefetch: Prefetch
    emit: Callable[[FileResult], None]

    # -- file by file --------------------------------------------------------------------------
    def on_its_own(self, lf: LandingFile) -> FileResult:
        try:
            st = lf.path.stat()
            if self._unchanged(lf, st):
                return FileResult(kind=lf.kind, path=lf.rel, status="skipped", dt=lf.dt)
            scanned = self.prefetch.get(lf.path)  # hashed ahead, while the previous file was parsed
        except FileNotFoundError:
            return self._vanished(lf, "before it could be read")
        return self._scanned(lf, st, scanned)

    def _scanned(
        self,
        lf: LandingFile,
        st: os.stat_result,
        scanned: Scanned,
        shape: landing.FileShape | None = None,
    ) -> FileResult:
        """The file after its hash; `shape` when it was sniffed already."""
        settled = self._settle(lf, st, scanned)
        if settled is not None:
            return settled
        try:
            shape = shape or landing.sniff(lf.path)
        except FileNotFoundError:
            return self._vanished(lf, "before it could be read")
        ident = FileIdentity(size=st.st_size, mtime=st.st_mtime, content_hash=scanned.content_hash)
        now = datetime.now(UTC).replace(tzinfo=None)
        try:
            counts = _read_one_file(self.parser, lf, shape, scanned.lines)
        except FileVanished:
            return self._vanished(lf, "while being read")
        except (duckdb.IOException, duckdb.InvalidInputException) as exc:
            counts = None
            reason = f"cannot read file: {_first_line(exc)}"
        moved = self._moved(lf, st)
        if moved is not None:
            return moved
        if counts is None:
            # Nothing in the file is readable (a corrupt gzip header and the like).
            log.warning("%s: %s", lf.rel, reason)
            result = self.loader.record_unreadable(lf, ident, reason, self.run_id, now)
        else:
            result = self.loader.load(lf, counts, ident, self.run_id, now)
        self._remember(lf, ident)
        return result

    # -- together (DuckDB) ---------------------------------------------------------------------
    def in_batches(self, files: list[LandingFile]) -> None:
        """Every file in order, runs of new event files read together; results emitted in
        order."""
        pending: list[FileResult | _Candidate] = []
        size = 0
        for lf in files:
            if not read_together.readable_together(lf):
                self._flush(pending)
                size = 0
                self.emit(self.on_its_own(lf))
                continue
            item = self._plan(lf)
            pending.append(item)
            if isinstance(item, _Candidate):
                size += read_together.weight(item.st.st_size, item.shape)
                if size >= read_together.BATCH_BYTES or len(pending) >= read_together.MAX_FILES:
                    self._flush(pending)
                    size = 0
        self._flush(pending)

    def _plan(self, lf: LandingFile) -> FileResult | _Candidate:
        try:
            st = lf.path.stat()
            if self._unchanged(lf, st):
                return FileResult(kind=lf.kind, path=lf.rel, status="skipped", dt=lf.dt)
            return _Candidate(lf, st, landing.sniff(lf.path))
        except FileNotFoundError:
            return self._vanished(lf, "before it could be read")

    def _flush(self, pending: list[FileResult | _Candidate]) -> None:
        items = list(pending)
        pending.clear()
        if sum(isinstance(c, _Candidate) for c in items) < 2:  # nothing to share
            for item in items:
                self.emit(item if isinstance(item, FileResult) else self._one(item))
            return
        self._staged(items)

    def _staged(self, items: list[FileResult | _Candidate]) -> None:
        """The batch staged in a temp table; verified files load by runs (one transaction each)
        between the ones that go file by file, so a key's first copy is the one file by file
        loading keeps."""
        todo = [c for c in items if isinstance(c, _Candidate)]
        staged = read_together.read_new_event_files_together(
            self.parser, [(c.lf.path, c.shape) for c in todo]
        )
        # Decide every file first (only the hash skip writes, independently of the rest).
        plan: list[FileResult | tuple[_Candidate, Scanned] | BatchFile] = []
        idents: dict[str, FileIdentity] = {}
        for item in items:
            if isinstance(item, FileResult):
                plan.append(item)
                continue
            lf, st = item.lf, item.st
            try:
                scanned = self.prefetch.get(lf.path)
            except FileNotFoundError:
                plan.append(self._vanished(lf, "before it could be read"))
                continue
            settled = self._settle(lf, st, scanned)
            if settled is not None:
                plan.append(settled)
                continue
            name = str(lf.path)
            rows = staged.rows.get(name, read_together.NO_ROWS)
            clean = read_together.verified(rows, item.shape, scanned.lines, lf.dt)
            if name in staged.failed or not clean:
                plan.append((item, scanned))
                continue
            moved = self._moved(lf, st)
            if moved is not None:
                plan.append(moved)
                continue
            idents[lf.rel] = FileIdentity(st.st_size, st.st_mtime, scanned.content_hash)
            plan.append(BatchFile(lf, rows))
        run: list[BatchFile] = []
        held: list[FileResult | BatchFile] = []  # in order since the run began

        def load_run() -> None:
            by_rel: dict[str, FileResult] = {}
            if run:
                now = datetime.now(UTC).replace(tzinfo=None)
                loaded = self.loader.load_batch(
                    [(b, idents[b.lf.rel]) for b in run], self.run_id, now
                )
                by_rel = {r.path: r for r in loaded}
                for b in run:
                    self._remember(b.lf, idents[b.lf.rel])
            for h in held:
                self.emit(by_rel[h.lf.rel] if isinstance(h, BatchFile) else h)
            run.clear()
            held.clear()

        for step in plan:
            if isinstance(step, tuple):
                load_run()
                c, scanned = step
                self.emit(self._scanned(c.lf, c.st, scanned, c.shape))
            else:
                if isinstance(step, BatchFile):
                    run.append(step)
                held.append(step)
        load_run()

    def _one(self, c: _Candidate) -> FileResult:
        """A planned file, taken file by file."""
        try:
            scanned = self.prefetch.get(c.lf.path)
        except FileNotFoundError:
            return self._vanished(c.lf, "before it could be read")
        return self._scanned(c.lf, c.st, scanned, c.shape)

    # -- pieces --------------------------------------------------------------------------------
    def _unchanged(self, lf: LandingFile, st: os.stat_result) -> bool:
        versions = self.known.get(lf.rel, [])
        return any(size == st.st_size and mtime == st.st_mtime for size, mtime, _ in versions)

    def _settle(self, lf: LandingFile, st: os.stat_result, scanned: Scanned) -> FileResult | None:
        """`changing` when the hash was taken of another version; `skipped` when these bytes
        were ingested before (under another mtime); None when the file is to be loaded."""
        if (scanned.size, scanned.mtime) != (st.st_size, st.st_mtime):
            return self._changing(lf, "it will be retried once stable")
        if any(h == scanned.content_hash for _, _, h in self.known.get(lf.rel, [])):
            self._same_bytes(lf, st, scanned)
            self.known[lf.rel].append((st.st_size, st.st_mtime, scanned.content_hash))
            return FileResult(kind=lf.kind, path=lf.rel, status="skipped", dt=lf.dt)
        return None

    def _same_bytes(self, lf: LandingFile, st: os.stat_result, scanned: Scanned) -> None:
        """Same bytes, new mtime (copied, touched): remember the new stat to skip cheaply."""
        self.loader.wh.execute(
            "update raw.ingested_files set size_bytes = ?, mtime = ? "
            "where path = ? and content_hash = ?",
            [st.st_size, st.st_mtime, lf.rel, scanned.content_hash],
        )
        self.loader.wh.commit()

    def _changing(self, lf: LandingFile, then: str) -> FileResult:
        log.warning("%s changed while being read; %s", lf.rel, then)
        return FileResult(kind=lf.kind, path=lf.rel, status="changing", dt=lf.dt)

    def _moved(self, lf: LandingFile, st: os.stat_result) -> FileResult | None:
        moved = _moved_since(lf, st)
        if moved == "vanished":
            return self._vanished(lf, "while being read")
        if moved == "changing":
            # Still being written (or replaced) while it was read: recording what was read would
            # keep a half file (and a cut-off last line) as ingested. The next run takes it whole.
            return self._changing(lf, "it will be ingested once it is stable")
        return None

    def _vanished(self, lf: LandingFile, when: str) -> FileResult:
        log.warning("%s vanished %s; it will be retried", lf.rel, when)
        return FileResult(kind=lf.kind, path=lf.rel, status="vanished", dt=lf.dt)

    def _remember(self, lf: LandingFile, ident: FileIdentity) -> None:
        self.known.setdefault(lf.rel, []).append((ident.size, ident.mtime, ident.content_hash))


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


def _read_one_file(
    parser: duckdb.DuckDBPyConnection,
    lf: LandingFile,
    shape: landing.FileShape,
    lines: int | None,
) -> StageCounts:
    """Stage one file by the first read path that takes it (the table in `nudge.ingest`)."""
    try:
        counts = read_clean_file(parser, lf.kind, lf.path, shape, lines, lf.dt)
        if counts is None and shape.is_array:
            counts = read_array_by_element(parser, lf.kind, lf.path, shape, lf.dt)
        return counts or read_line_by_line(parser, lf.kind, lf.path, shape, lf.dt)
    except duckdb.IOException as exc:
        if not lf.path.exists():
            raise FileVanished(str(lf.path)) from exc
        if not shape.gzip:
            raise
        with tempfile.TemporaryDirectory(prefix="nudge-gzip-") as tmp:
            counts = read_cut_short_gzip(parser, lf.kind, lf.path, lf.dt, Path(tmp))
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
