"""The journal: every MQTT message as received, written and fsynced before its QoS 1
acknowledgement goes out, so that a daemon killed between two checkpoints loses nothing the
broker considers delivered.

``append`` adds a message to a buffer in memory; ``commit`` hands the buffer to the journal's
own thread, which writes it to the current segment file as one frame and fsyncs it (a group
commit: what arrives while one commit runs goes into the next). Each checkpoint starts a new
segment (``rotate``) and, once the checkpoint is on disk, the older segments are deleted
(``prune``). At start, the segments from the one the checkpoint names on are read back
(``read``) and run through the pipeline again with their original receive times.

A frame is ``crc32 (u32) | length (u32) | records``, the crc over the records; a record is
``topic length (u16) | payload length (u32) | receive time ms (i64) | topic | payload``. A
segment is appended to by one process only (a start opens a new one), so a torn frame can
only be the last of its segment; reading stops there and logs how much was ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from streamproc.sinks.jsonl import FILE_MODE, make_dirs

log = logging.getLogger("streamproc")
FRAME = struct.Struct("<II")
RECORD = struct.Struct("<HIq")
SUFFIX = ".journal"


def segment_path(folder: Path, n: int) -> Path:
    return folder / f"{n:012d}{SUFFIX}"


def segments(folder: Path) -> list[int]:
    """Numbers of the segment files in ``folder``, in order."""
    if not folder.is_dir():
        return []
    names = (p.name for p in folder.iterdir())
    return sorted(int(n[: -len(SUFFIX)]) for n in names if n.endswith(SUFFIX) and n[:12].isdigit())


class Journal:
    """Appends to segment ``self.segment`` of ``folder`` (one past the last one found)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        make_dirs(self.folder)
        self.segment = max(segments(self.folder), default=-1) + 1
        self.bytes_written = 0
        self._parts: list[bytes] = []  # records appended since the last commit, in pieces
        self._fd: int | None = None
        self._fd_segment = -1
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="journal")

    def append(self, topic: str, payload: bytes, recv_ms: int) -> None:
        t = topic.encode()
        self._parts.extend((RECORD.pack(len(t), len(payload), recv_ms), t, payload))

    @property
    def pending(self) -> int:
        """Pieces appended and not yet handed to a commit (0: nothing to commit)."""
        return len(self._parts)

    def commit(self) -> Future[int]:
        """Write and fsync everything appended so far (in the order of the commits); the
        future gives the bytes written or raises the ``OSError``."""
        data, self._parts = b"".join(self._parts), []
        return self._thread.submit(self._write, self.segment, data)

    def rotate(self) -> Future[int]:
        """Commit the buffer to the current segment and start a new one (``self.segment``)."""
        done = self.commit()
        self.segment += 1
        return done

    def prune(self, before: int) -> Future[None]:
        """Delete the segments numbered below ``before`` (after the commits handed over)."""
        return self._thread.submit(self._prune, before)

    def close(self) -> None:
        """Commit what is left, wait for every commit, close the file."""
        self.commit()
        self._thread.shutdown(wait=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- on the journal thread ----------------------------------------------------------
    def _write(self, segment: int, data: bytes) -> int:
        """``data`` as one frame, fdatasynced. The frame's header and ``data`` go out in one
        ``writev``: joining them would copy the whole commit while holding the GIL."""
        if not data:
            return 0
        fd = self._fd
        if fd is None or self._fd_segment != segment:
            if fd is not None:
                os.close(fd)
                self._fd = None
            path = segment_path(self.folder, segment)
            fd = self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
            self._fd_segment = segment
            _fsync_dir(self.folder)  # the new file's name is durable too
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, [FRAME.pack(zlib.crc32(data), len(data)), data])
            os.fdatasync(fd)
        except OSError:
            with contextlib.suppress(OSError):  # no torn frame before the next ones
                os.ftruncate(fd, end)
            raise
        self.bytes_written += FRAME.size + len(data)
        return FRAME.size + len(data)

    def _prune(self, before: int) -> None:
        for n in segments(self.folder):
            if n < before:
                segment_path(self.folder, n).unlink(missing_ok=True)


def _write_all(fd: int, buffers: list[bytes]) -> None:
    """Write the buffers, in order, with ``writev``, carrying on after short writes."""
    views = [memoryview(b) for b in buffers]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(folder: Path, start: int = 0) -> Iterator[tuple[str, bytes, int]]:
    """``(topic, payload, recv_ms)`` of every message in the segments numbered ``start`` on."""
    for n in segments(Path(folder)):
        if n >= start:
            yield from _read_segment(segment_path(Path(folder), n))


def _read_segment(path: Path) -> Iterator[tuple[str, bytes, int]]:
    with open(path, "rb") as f:
        at = 0
        while head := f.read(FRAME.size):
            body = b""
            if len(head) == FRAME.size:
                crc, length = FRAME.unpack(head)
                body = f.read(length)
            if len(head) < FRAME.size or len(body) < length or zlib.crc32(body) != crc:
                size = os.fstat(f.fileno()).st_size
                log.warning("journal %s: a torn frame at byte %d; the last %d bytes ignored",
                            path, at, size - at)  # fmt: skip
                return
            at += FRAME.size + length
            i = 0
            while i < length:
                tlen, plen, recv_ms = RECORD.unpack_from(body, i)
                i += RECORD.size
                topic = body[i : i + tlen].decode()
                payload = body[i + tlen : i + tlen + plen]
                i += tlen + plen
                yield topic, payload, recv_ms
