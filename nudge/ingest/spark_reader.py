"""Ingestion into a Spark warehouse: the landing files read by Spark itself, in batches.

`ingest_pending` hands the files it selected here when the warehouse is Spark. Python decides
which files to read exactly as on the other engines (size and mtime, then the content hash of
`file_scan`), and Spark reads them:

- Lines: every NDJSON file of a batch is read by `spark.read.text`, one scan per file, and no
  file is split (`maxPartitionBytes` above the largest file, `minPartitionNum` 1), so a file is
  one partition read in order: a line's number is its position in the partition, the low bits of
  `monotonically_increasing_id()`, with no shuffle (a check after staging holds every file's
  numbers to 1..n). Spark's JSON parser
  (`from_json`, an explicit all-text schema, `mode=PERMISSIVE` and a corrupt-record column)
  parses each line, and `JUDGE` gives a bad line the reason the DuckDB path gives it.
- Shipped lines: a JSON-array file (its elements numbered, as DuckDB numbers them) and a gzip
  file whose stream breaks off (its complete lines, then the line cut short, rejected as
  truncated) are decoded by Python and sent to Spark as rows: Spark cannot number array
  elements, and fails the whole read of a truncated gzip.

A batch's rows are staged once (`localCheckpoint`), then written by appends: raw.rejected,
raw.events (Parquet, partitioned by `dt`, the dump day) or the profile table, and last the
files' raw.ingested_files rows. Spark has no transactions: rows a crashed run appended without
their raw.ingested_files row are found by their `ingested_at` (every row of a file version
carries its file row's `ingested_at`) and removed before the file is loaded again.

Deduplication is the DuckDB path's: a key's first copy wins, the stored one, else the first in
file order then line order; a file's duplicates are its rows that lose. Downstream incremental
models find the days late events touch by `ingested_at`, as on the other engines.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nudge.ingest.landing as landing
from nudge.core.warehouse import Warehouse
from nudge.ingest.file_scan import Prefetch, Scanned
from nudge.ingest.landing import LandingFile
from nudge.ingest.loading import FileIdentity
from nudge.ingest.report import FileResult, Kind
from nudge.ingest.spark_sql import COLUMNS, IDENTITY, judge_sql
from nudge.ingest.staging import RAW_TEXT_MAX

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Input bytes read in one Spark batch (each batch is one set of Spark jobs; bigger batches cost
# fewer jobs, smaller ones less memory for the staged rows).
BATCH_BYTES = 512 * 1024 * 1024
_LINES = "_nudge_spark_lines"
_STAGED = "_nudge_spark_staged"
_KEEP = "_nudge_spark_keep"

Known = dict[str, list[tuple[int, float, str]]]


@dataclass
class _File:
    """A file to load in this batch."""

    idx: int
    lf: LandingFile
    st: os.stat_result
    ident: FileIdentity
    shipped: list[tuple[int, str]] | None = None  # (line, text) decoded by Python
    cut_reason: str | None = None  # a truncated gzip: the reason of its last (cut) line
    unreadable: str | None = None  # nothing in the file can be read: why


@dataclass
class _Batch:
    kind: Kind
    files: list[_File] = field(default_factory=list)
    size: int = 0


def ingest_spark(
    wh: Warehouse,
    files: list[LandingFile],
    known: Known,
    run_id: str,
    emit: Callable[[FileResult], None],
) -> None:
    """Ingest `files` (in discovery order) into the Spark warehouse: one result each (a skipped
    file's may come before those of a batch of files listed before it)."""
    spark: SparkSession = wh.conn
    todo = [lf for lf in files if not _unchanged(known, lf)]
    # One partition per file: line numbers come from the order of one scan (module doc). The
    # session is the process's: its settings are given back at the end.
    largest = max((_size(lf) for lf in todo), default=0)
    settings = {
        "spark.sql.files.maxPartitionBytes": str(max(2 * BATCH_BYTES, 2 * largest)),
        "spark.sql.files.minPartitionNum": "1",
    }
    previous = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    prefetch = Prefetch([lf.path for lf in todo])
    try:
        for item in _batches(wh, files, known, prefetch, emit):
            for f, result in _load_batch(wh, item, run_id):
                if result.status == "loaded":
                    _remember(known, f.lf, f.ident)
                emit(result)
    finally:
        prefetch.close()
        for view in (_LINES, _STAGED, _KEEP):
            spark.catalog.dropTempView(view)
        for k, v in previous.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def _batches(
    wh: Warehouse,
    files: list[LandingFile],
    known: Known,
    prefetch: Prefetch,
    emit: Callable[[FileResult], None],
) -> Iterator[_Batch]:
    """The files to load, in batches of one kind (in order); the others are settled here.

    A result is emitted when its file is settled, so results of skipped files can come before
    those of a batch read earlier in discovery order: every file gets exactly one.
    """
    batch: _Batch | None = None
    for lf in files:
        try:
            st = lf.path.stat()
            if _unchanged(known, lf, st):
                emit(FileResult(kind=lf.kind, path=lf.rel, status="skipped", dt=lf.dt))
                continue
            scanned = prefetch.get(lf.path)
        except FileNotFoundError:
            emit(_vanished(lf, "before it could be read"))
            continue
        if (scanned.size, scanned.mtime) != (st.st_size, st.st_mtime):
            emit(_changing(lf, "it will be retried once stable"))
            continue
        ident = FileIdentity(st.st_size, st.st_mtime, scanned.content_hash)
        if any(h == scanned.content_hash for _, _, h in known.get(lf.rel, [])):
            _same_bytes(wh, lf, ident)
            known[lf.rel].append((st.st_size, st.st_mtime, scanned.content_hash))
            emit(FileResult(kind=lf.kind, path=lf.rel, status="skipped", dt=lf.dt))
            continue
        if batch is not None and (batch.kind != lf.kind or batch.size >= BATCH_BYTES):
            yield batch
            batch = None
        batch = batch or _Batch(lf.kind)
        f = _File(len(batch.files), lf, st, ident)
        try:
            unreadable = _prepare(f, scanned)
        except FileNotFoundError:
            emit(_vanished(lf, "while being read"))
            continue
        if unreadable is not None:
            log.warning("%s: %s", lf.rel, unreadable)
            f.unreadable = unreadable
        batch.files.append(f)
        batch.size += st.st_size
    if batch is not None and batch.files:
        yield batch


def _prepare(f: _File, scanned: Scanned) -> str | None:
    """Decode in Python what Spark cannot read as lines; the reason when nothing is readable."""
    shape = landing.sniff(f.lf.path)
    if shape.gzip and scanned.lines is None:
        return _prepare_broken_gzip(f)
    if shape.is_array:
        f.shipped = _array_elements(f.lf.path, shape.gzip)
    return None


def _prepare_broken_gzip(f: _File) -> str | None:
    with tempfile.TemporaryDirectory(prefix="nudge-gzip-") as tmp:
        body = Path(tmp) / "readable-part.jsonl"
        broken = landing.read_broken_gzip(f.lf.path, body)
        if broken is None:  # it read to its end after all: lines as usual
            return None
        if broken.readable == 0 and broken.problem == "is corrupt":
            return "cannot read file: not a gzip stream (or corrupt from its first bytes)"
        text = body.read_bytes().decode("utf-8", "replace")
    lines = text.removeprefix("\ufeff").splitlines()
    what = "file truncated" if broken.problem == "ends early" else "file damaged"
    f.cut_reason = (
        f"{what}: its gzip stream {broken.problem} after {broken.readable} bytes of data "
        f"({broken.compressed} compressed bytes): the data breaks off in this line, and anything "
        "after it is lost - export the file again"
    )
    tail = broken.tail.decode("utf-8", "replace")[:RAW_TEXT_MAX]
    f.shipped = [*enumerate(lines, 1), (len(lines) + 1, tail)]
    log.warning("%s: %s (line %d)", f.lf.path, f.cut_reason, len(lines) + 1)
    return None


def _array_elements(path: Path, gz: bool) -> list[tuple[int, str]] | None:
    """The elements of a file that is one JSON array, numbered from 1, as minified JSON text;
    None when it is not one valid JSON array (it is then read as lines)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        doc = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except (ValueError, OSError, EOFError):
        return None
    if not isinstance(doc, list):
        return None
    return [
        (n, json.dumps(e, separators=(",", ":"), ensure_ascii=False)) for n, e in enumerate(doc, 1)
    ]


# -- one batch in Spark --------------------------------------------------------------------------
def _load_batch(wh: Warehouse, batch: _Batch, run_id: str) -> list[tuple[_File, FileResult]]:
    spark: SparkSession = wh.conn
    kind = batch.kind
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    _clear_leftovers(wh, batch)
    results = {
        f.idx: FileResult(kind=kind, path=f.lf.rel, status="loaded", dt=f.lf.dt)
        for f in batch.files
    }
    readable = [f for f in batch.files if f.unreadable is None]
    if readable:
        _stage(spark, batch)
    # Files that changed while Spark read them are dropped from the batch (retried later).
    moved = {f.idx: m for f in batch.files if (m := _moved_since(f.lf, f.st)) is not None}
    idx_list = ", ".join(str(f.idx) for f in readable if f.idx not in moved) or "-1"
    if readable:
        _mark_keepers(spark, kind, idx_list)
        for idx, numbers, lines_read, good, rejected, dups, conflicts in wh.fetchall(
            f"""select s.idx, s.numbers, s.lines_read, s.good, s.rejected,
                    coalesce(k.dups, 0), coalesce(k.conflicts, 0)
                from (select idx, array(count(*), count(distinct line_no), min(line_no),
                            max(line_no)) as numbers,
                        count_if(reason is null or reason <> '') as lines_read,
                        count_if(reason is null) as good, count_if(reason <> '') as rejected
                      from {_STAGED} group by idx) s
                left join (select idx, count_if(not keep) as dups, sum(conflict) as conflicts
                           from {_KEEP} group by idx) k on s.idx = k.idx"""
        ):
            r = results[int(idx)]
            lines = numbers[0]
            if list(numbers) != [lines, lines, 1, lines]:  # not 1..n: a file was split
                raise RuntimeError(f"{r.path}: Spark numbered its lines wrongly; nothing loaded")
            r.lines_read, r.rejected = int(lines_read), int(rejected)
            r.duplicates, r.conflicts = int(dups), int(conflicts)
            r.loaded = int(good) - r.duplicates
        _insert_rows(wh, batch, idx_list, run_id, now)
    broken = [f for f in batch.files if f.unreadable is not None and f.idx not in moved]
    if broken:
        # One rejected entry per file nothing of which can be read (`Loader.record_unreadable`),
        # counted as one line read, so the broken-export guard sees it.
        values = ", ".join("(?, ?, null, null, ?, ?, cast(? as timestamp))" for _ in broken)
        params: list[Any] = []
        for f in broken:
            params += [kind, f.lf.rel, f.unreadable, run_id, now]
            r = results[f.idx]
            r.lines_read, r.rejected, r.note = 1, 1, f.unreadable or ""
        wh.execute(
            "insert into raw.rejected (kind, source_file, source_line, raw_text, reason, run_id, "
            f"rejected_at) values {values}",
            params,
        ).fetchall()
    done = [f for f in batch.files if f.idx not in moved]
    _record_files(wh, [(f, results[f.idx]) for f in done], run_id, now)
    return [(f, moved.get(f.idx) or results[f.idx]) for f in batch.files]


def _stage(spark: SparkSession, batch: _Batch) -> None:
    """_STAGED: every line of the batch's readable files, judged (`spark_sql.judge_sql`)."""
    _lines_frame(spark, batch).createOrReplaceTempView(_LINES)
    staged = spark.sql(judge_sql(batch.kind, _LINES)).localCheckpoint()
    cut = [(f.idx, f.shipped[-1][0], f.cut_reason) for f in batch.files if f.cut_reason]
    if cut:
        # A truncated gzip's last line: the reason says the file is truncated.
        staged = _with_cut_reasons(spark, staged, cut)
    staged.createOrReplaceTempView(_STAGED)


def _insert_rows(wh: Warehouse, batch: _Batch, idx_list: str, run_id: str, now: datetime) -> None:
    """The batch's rejected lines, then its kept rows (before the file rows that vouch for them)."""
    kind = batch.kind
    rel_of = _rel_case(batch)
    wh.execute(
        "insert into raw.rejected (kind, source_file, source_line, raw_text, reason, run_id, "
        f"rejected_at) select ?, {rel_of}, line_no, raw_text, reason, ?, cast(? as timestamp) "
        f"from {_STAGED} where reason <> '' and idx in ({idx_list})",
        [kind, run_id, now],
    ).fetchall()
    cols = ", ".join(COLUMNS[kind])
    if kind == "events":
        wh.execute(
            f"insert into raw.events ({cols}, source_file, source_line, ingested_at, dt) "
            f"select {cols}, {rel_of}, line_no, cast(? as timestamp), {_dt_case(batch)} "
            f"from {_KEEP} where keep",
            [now],
        ).fetchall()
    else:
        wh.execute(
            f"insert into raw.{kind} ({cols}, source_file, source_line, ingested_at) "
            f"select {cols}, {rel_of}, line_no, cast(? as timestamp) from {_KEEP} where keep",
            [now],
        ).fetchall()


def _lines_frame(spark: SparkSession, batch: _Batch) -> DataFrame:
    """(idx, line_no, line) of every line of the batch's files."""
    from pyspark.sql import functions as F

    # monotonically_increasing_id() is (partition << 33) + the row's position in its partition.
    in_partition = F.monotonically_increasing_id().bitwiseAND(F.lit((1 << 33) - 1)) + 1
    frames = []
    for f in batch.files:
        if f.shipped is not None or f.unreadable is not None:
            continue
        df = spark.read.text(str(f.lf.path)).select(
            F.lit(f.idx).alias("idx"),
            F.lit(f.lf.dt).cast("date").alias("dt"),
            in_partition.alias("line_no"),
            F.col("value").alias("line"),
        )
        frames.append(df)
    schema = "idx int, line_no bigint, line string, dt date"
    shipped = [(f.idx, n, text, f.lf.dt) for f in batch.files if f.shipped for n, text in f.shipped]
    out: DataFrame | None = None
    if frames:
        out = _union(frames).select("idx", "line_no", "line", "dt")
    if shipped or out is None:
        rows = spark.createDataFrame(shipped, schema)
        out = rows if out is None else out.unionByName(rows)
    return out


def _union(frames: list[DataFrame]) -> DataFrame:
    """A balanced union: a chain of hundreds would nest the Spark Connect plan too deep."""
    while len(frames) > 1:
        frames = [
            frames[i].unionByName(frames[i + 1]) if i + 1 < len(frames) else frames[i]
            for i in range(0, len(frames), 2)
        ]
    return frames[0]


def _with_cut_reasons(
    spark: SparkSession, staged: DataFrame, cut: list[tuple[int, int, str | None]]
) -> DataFrame:
    from pyspark.sql import functions as F

    marks = spark.createDataFrame(cut, "idx int, line_no bigint, cut_reason string")
    joined = staged.join(marks, ["idx", "line_no"], "left")
    return joined.withColumn(
        "reason", F.coalesce(F.col("cut_reason"), F.col("reason"))
    ).drop("cut_reason").localCheckpoint()  # fmt: skip


def _mark_keepers(spark: SparkSession, kind: Kind, idx_list: str) -> None:
    """_KEEP: the batch's good rows, `keep` for the first copy of each key (the stored copy
    first), `conflict` 1 for a losing copy that differs from the one kept (DuckDB's count)."""
    ident = IDENTITY[kind]
    table = f"raw.{kind}"
    good = f"select * from {_STAGED} where reason is null and idx in ({idx_list})"
    if kind != "events":
        same = " and ".join(f"t.{c} <=> g.{c}" for c in ident)
        spark.sql(
            f"""select g.*, (g.rn = 1 and not g.stored) as keep, 0 as conflict from (
                select g.*,
                    row_number() over (partition by {", ".join(ident)} order by idx, line_no) as rn,
                    exists (select 1 from {table} t where {same}) as stored
                from ({good}) g) g"""
        ).localCheckpoint().createOrReplaceTempView(_KEEP)
        return
    content = ", ".join(f"g.{c}" for c in ident[1:])
    spark.sql(
        f"""with g as ({good}),
        stored as (
            select e.event_key, struct({", ".join(f"e.{c}" for c in ident[1:])}) as content
            from {table} e left semi join g on e.event_key = g.event_key
        ),
        ranked as (
            select g.*, struct({content}) as content,
                row_number() over (partition by idx, event_key order by line_no) as in_file,
                row_number() over (partition by event_key order by idx, line_no) as in_batch
            from g
        ),
        kept as (
            select event_key, content from stored
            union all
            select r.event_key, r.content from ranked r left anti join stored s
                on r.event_key = s.event_key
            where r.in_batch = 1
        ),
        judged as (
            select r.*, s.event_key is not null as stored, k.content as kept_content
            from ranked r left join stored s on r.event_key = s.event_key
            left join kept k on r.event_key = k.event_key
        ),
        versions as (
            select idx, event_key, count(distinct content) - 1 as extra
            from ranked group by idx, event_key having count(*) > 1
        )
        select j.*, (j.in_batch = 1 and not j.stored) as keep,
            case when j.in_file = 1 and (j.stored or j.in_batch > 1)
                      and not (j.content <=> j.kept_content) then 1 else 0 end
            + case when j.in_file = 1 then coalesce(v.extra, 0) else 0 end as conflict
        from judged j left join versions v on j.idx = v.idx and j.event_key = v.event_key"""
    ).drop("kept_content", "content").localCheckpoint().createOrReplaceTempView(_KEEP)


def _rel_case(batch: _Batch) -> str:
    return _case(batch, lambda f: _lit(f.lf.rel))


def _dt_case(batch: _Batch) -> str:
    return _case(batch, lambda f: f"date'{f.lf.dt.isoformat()}'" if f.lf.dt else "null")


def _case(batch: _Batch, value: Callable[[_File], str]) -> str:
    whens = " ".join(f"when {f.idx} then {value(f)}" for f in batch.files)
    return f"case idx {whens} end"


def _lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- raw.ingested_files and crash leftovers ------------------------------------------------------
_FILE_COLS = (
    "kind, path, dt, size_bytes, mtime, content_hash, lines_read, loaded, duplicates, rejected, "
    "run_id, ingested_at"
)


def _record_files(
    wh: Warehouse, done: list[tuple[_File, FileResult]], run_id: str, now: datetime
) -> None:
    if not done:
        return
    values = ", ".join(
        "(?, ?, cast(? as date), ?, cast(? as double), ?, ?, ?, ?, ?, ?, cast(? as timestamp))"
        for _ in done
    )
    params: list[Any] = []
    for f, r in done:
        params += [
            r.kind, r.path, r.dt, f.ident.size, f.ident.mtime, f.ident.content_hash,
            r.lines_read, r.loaded, r.duplicates, r.rejected, run_id, now,
        ]  # fmt: skip
    wh.execute(f"insert into raw.ingested_files ({_FILE_COLS}) values {values}", params).fetchall()


def _same_bytes(wh: Warehouse, lf: LandingFile, ident: FileIdentity) -> None:
    """Same bytes, new mtime: its file rows take the new stat (a small table, rewritten)."""
    spark: SparkSession = wh.conn
    rows = spark.sql(
        """select kind, path, dt,
            case when path = ? and content_hash = ? then cast(? as bigint) else size_bytes end
                as size_bytes,
            case when path = ? and content_hash = ? then cast(? as double) else mtime end
                as mtime,
            content_hash, lines_read, loaded, duplicates, rejected, run_id, ingested_at
        from raw.ingested_files""",
        args=[lf.rel, ident.content_hash, ident.size, lf.rel, ident.content_hash, ident.mtime],
    ).localCheckpoint()  # read whole before the table is overwritten
    rows.write.insertInto("raw.ingested_files", overwrite=True)


def _clear_leftovers(wh: Warehouse, batch: _Batch) -> None:
    """Remove the rows a crashed run appended for these files without recording them.

    Every recorded file version's rows carry its raw.ingested_files `ingested_at`; rows of the
    batch's paths with another `ingested_at` were appended by a run that did not finish. Only
    when there are any is the table rewritten (raw.events: only the dt partitions of the files).
    """
    spark: SparkSession = wh.conn
    paths = ", ".join(_lit(f.lf.rel) for f in batch.files)
    days = ", ".join(sorted({f"date'{f.lf.dt}'" for f in batch.files if f.lf.dt is not None}))
    scopes = {
        f"raw.{batch.kind}": f"dt in ({days})" if batch.kind == "events" and days else "true",
        "raw.rejected": "true",
    }

    def stray(table: str) -> str:
        at = "rejected_at" if table == "raw.rejected" else "ingested_at"
        return (
            f"source_file in ({paths}) and not exists (select 1 from raw.ingested_files i "
            f"where i.path = t.source_file and i.ingested_at = t.{at})"
        )

    counts = wh.fetchone(
        "select "
        + ", ".join(
            f"(select count(*) from {table} t where {scope} and {stray(table)})"
            for table, scope in scopes.items()
        )
    )
    for (table, scope), n in zip(scopes.items(), counts or (), strict=True):
        if not n:
            continue
        log.warning("%s: removing %d rows of an ingest that did not finish", table, n)
        # Read whole before the table (or its partitions) is overwritten.
        keep = spark.sql(f"select * from {table} t where {scope} and not ({stray(table)})")
        keep = keep.localCheckpoint()
        if scope != "true":
            for d in sorted({f.lf.dt for f in batch.files if f.lf.dt is not None}):
                # A partition left empty must go too: a dynamic overwrite would keep it.
                spark.sql(f"alter table raw.events drop if exists partition (dt = date'{d}')")
            keep.write.insertInto(table)
        else:
            keep.write.insertInto(table, overwrite=True)


# -- small pieces --------------------------------------------------------------------------------
def _size(lf: LandingFile) -> int:
    try:
        return lf.path.stat().st_size
    except FileNotFoundError:
        return 0


def _unchanged(known: Known, lf: LandingFile, st: os.stat_result | None = None) -> bool:
    try:
        st = st or lf.path.stat()
    except FileNotFoundError:
        return False
    return any(s == st.st_size and m == st.st_mtime for s, m, _ in known.get(lf.rel, []))


def _remember(known: Known, lf: LandingFile, ident: FileIdentity) -> None:
    known.setdefault(lf.rel, []).append((ident.size, ident.mtime, ident.content_hash))


def _moved_since(lf: LandingFile, before: os.stat_result) -> FileResult | None:
    try:
        now = lf.path.stat()
    except FileNotFoundError:
        return _vanished(lf, "while being read")
    if (now.st_size, now.st_mtime) != (before.st_size, before.st_mtime):
        return _changing(lf, "it will be ingested once it is stable")
    return None


def _vanished(lf: LandingFile, when: str) -> FileResult:
    log.warning("%s vanished %s; it will be retried", lf.rel, when)
    return FileResult(kind=lf.kind, path=lf.rel, status="vanished", dt=lf.dt)


def _changing(lf: LandingFile, then: str) -> FileResult:
    log.warning("%s changed while being read; %s", lf.rel, then)
    return FileResult(kind=lf.kind, path=lf.rel, status="changing", dt=lf.dt)
