"""A file's identity and line count, taken ahead of its read.

Every read path needs the file's content hash (its identity in `raw.ingested_files`) and, for
NDJSON, its physical line count (what proves a clean read kept every line). Both come from one
read of the bytes, done in a helper thread while DuckDB reads the file before.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nudge.ingest.landing import GZIP_MAGIC

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Scanned:
    content_hash: str  # sha256 of the bytes as stored (compressed files hashed compressed)
    lines: int | None  # physical lines of the (decompressed) text; None when unreadable
    size: int  # the file's size and mtime before it was read
    mtime: float


def scan(path: Path) -> Scanned:
    """Hash the file and count its lines in one read (hashlib and zlib release the GIL, so this
    runs in a helper thread while DuckDB stages the previous file).

    One buffer is read into and reused: hashing and counting then work on memory still in the
    cache, and no chunk is allocated (fresh allocations cost as much as the hashing).
    """
    sha = hashlib.sha256()
    newlines = 0
    last = b""
    inflate: Any = None
    lines: int | None
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        n = f.readinto(buf)
        if buf[:2] == GZIP_MAGIC and n >= 2:
            inflate = zlib.decompressobj(wbits=31)
        try:
            while n:
                chunk = view[:n]
                sha.update(chunk)
                if inflate is None:
                    newlines += buf.count(b"\n", 0, n)
                    last = buf[n - 1 : n]
                else:
                    data = inflate.decompress(chunk)
                    while inflate.eof and inflate.unused_data:  # concatenated gzip members
                        rest = inflate.unused_data
                        inflate = zlib.decompressobj(wbits=31)
                        data += inflate.decompress(rest)
                    if data:
                        newlines += data.count(b"\n")
                        last = data[-1:]
                n = f.readinto(buf)
            complete = inflate is None or inflate.eof
            lines = newlines + (1 if last not in (b"", b"\n") else 0) if complete else None
        except zlib.error:
            while n := f.readinto(buf):  # the rest of the file, for its hash
                sha.update(view[:n])
            lines = None
    return Scanned("sha256:" + sha.hexdigest(), lines, st.st_size, st.st_mtime)


class Prefetch:
    """Scans the files about to be ingested, in order, in one helper thread, so that hashing a
    file overlaps DuckDB's work on the one before."""

    def __init__(self, paths: list[Path]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nudge-scan")
        self._pending: dict[Path, Future[Scanned]] = {p: self._pool.submit(scan, p) for p in paths}

    def get(self, path: Path) -> Scanned:
        """The scan of `path` (its size and mtime say when it was taken)."""
        future = self._pending.pop(path, None)
        return future.result() if future is not None else scan(path)

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
