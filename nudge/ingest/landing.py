"""The landing folder: which dump files exist, what shape they have, and their identity.

A file's identity is (relative path, content hash; `file_scan`). Hashing costs a full read, so
callers first compare size and mtime with what was recorded and hash only when those changed.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from nudge.ingest.report import Kind

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")  # events and profiles alike
_DT_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class LandingFile:
    kind: Kind
    path: Path  # absolute
    rel: str  # relative to the landing folder, with "/" separators
    dt: date | None  # events only: the dt= folder


@dataclass(frozen=True)
class FileShape:
    gzip: bool
    is_array: bool  # first non-blank character is "[": one JSON array for the whole file


def discover(landing_dir: Path) -> list[LandingFile]:
    """Every dump file in the landing layout, in a stable order (kind, then path)."""
    out: list[LandingFile] = []
    events_dir = landing_dir / "events"
    if events_dir.is_dir():
        for day in sorted(p for p in events_dir.iterdir() if p.is_dir()):
            m = _DT_DIR.match(day.name)
            if not m:
                log.warning("ignoring %s: event folders are named dt=YYYY-MM-DD", day)
                continue
            try:
                dt = date.fromisoformat(m.group(1))
            except ValueError:
                log.warning("ignoring %s: %s is not a calendar date", day, m.group(1))
                continue
            out.extend(
                LandingFile("events", f, f.relative_to(landing_dir).as_posix(), dt)
                for f in _files(day, _SUFFIXES)
            )
    for kind in ("users", "companies"):
        d = landing_dir / kind
        if d.is_dir():
            out.extend(
                LandingFile(kind, f, f.relative_to(landing_dir).as_posix(), None)  # type: ignore[arg-type]
                for f in _files(d, _SUFFIXES)
            )
    return out


def select(
    files: list[LandingFile],
    *,
    kinds: Collection[str] | None = None,
    dts: Collection[date] | None = None,
) -> list[LandingFile]:
    """The files of the given kinds, and of the given dt= folders for events (None: all)."""
    wanted = set(dts) if dts is not None else None
    return [
        f
        for f in files
        if (kinds is None or f.kind in kinds)
        and (wanted is None or f.kind != "events" or f.dt in wanted)
    ]


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.name.endswith(suffixes)
        and not p.name.startswith(".")  # editors' and uploaders' temporary files
    )


def sniff(path: Path) -> FileShape:
    """Compression by magic bytes (not by name), array-vs-lines from the head."""
    with path.open("rb") as f:
        magic = f.read(2)
    is_gz = magic == GZIP_MAGIC
    head = b""
    try:
        with gzip.open(path, "rb") if is_gz else path.open("rb") as f:
            head = f.read(64 * 1024)
    except (OSError, EOFError, zlib.error):
        pass  # a corrupt stream is reported by the reader, with its own message
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return FileShape(gzip=is_gz, is_array=text.startswith(b"["))


@dataclass(frozen=True)
class BrokenGzip:
    """What can still be read from a gzip file whose stream breaks off (truncated or corrupt)."""

    lines: int  # complete lines (terminated by a line break) written to the destination
    tail: bytes  # the start of the bytes after the last line break: a line cut short
    readable: int  # decompressed bytes before the break
    compressed: int  # compressed bytes consumed before the break
    problem: str  # "ends early" or "is corrupt"


_TAIL_KEEP = 64 * 1024


def read_broken_gzip(path: Path, dest: Path) -> BrokenGzip | None:
    """Write the complete lines of a gzip file that cannot be read to its end to `dest`
    (uncompressed) and describe the break; None when the file reads to its end after all.

    DuckDB refuses the whole file when its gzip stream ends early (an upload cut off, a copy
    still running); the complete lines before the break are worth loading, and the break itself
    is worth reporting. Concatenated gzip members are followed as gzip itself does.
    """
    consumed = readable = lines = 0
    pending = bytearray()  # decompressed bytes after the last line break written
    in_member = False  # bytes of the current member were fed and its end not yet seen
    problem: str | None = None
    d = zlib.decompressobj(wbits=31)
    with path.open("rb") as f, dest.open("wb") as out:

        def emit(data: bytes) -> None:
            nonlocal readable, lines
            readable += len(data)
            pending.extend(data)
            cut = pending.rfind(b"\n") + 1
            if cut:
                out.write(pending[:cut])
                lines += pending.count(b"\n", 0, cut)
                del pending[:cut]

        while problem is None and (chunk := f.read(1024 * 1024)):
            while chunk:
                try:
                    emit(d.decompress(chunk))
                except zlib.error:
                    problem = "is corrupt"
                    break
                if not d.eof:
                    consumed += len(chunk)
                    in_member = True
                    break
                consumed += len(chunk) - len(d.unused_data)
                chunk = d.unused_data  # the next member, if any
                in_member = False
                d = zlib.decompressobj(wbits=31)
    if problem is None:
        if not in_member:
            return None
        emit(d.flush())
        problem = "ends early"
    return BrokenGzip(
        lines=lines,
        tail=bytes(pending[:_TAIL_KEEP]),
        readable=readable,
        compressed=consumed,
        problem=problem,
    )
