"""Alert log: one JSON object per line (``Alert.to_json``), appended.

The file is created with mode 0o640 and missing parent folders with 0o750 (``os.open`` and
``os.mkdir`` with a mode, so the umask can only tighten them).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from streamproc.alerts import Alert

FILE_MODE = 0o640
DIR_MODE = 0o750


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """Create ``path`` and any missing parents, each with ``mode`` (unlike ``os.makedirs``,
    which applies the mode to the last folder only)."""
    missing: list[Path] = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not d.is_dir():
                raise


class AlertLog:
    """Appends alerts to a JSON Lines file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        make_dirs(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self._file = os.fdopen(fd, "ab")

    def add(self, alerts: list[Alert]) -> None:
        """Append one line per alert (buffered; see ``flush``)."""
        if alerts:
            self._file.write(b"".join(a.to_json() + b"\n" for a in alerts))

    def flush(self) -> None:
        """Hand buffered lines to the OS."""
        self._file.flush()

    def size(self) -> int:
        """Bytes in the file, counting the buffered lines."""
        return os.path.getsize(self.path) if self._file.closed else self._file.tell()

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes; lines added later go after them."""
        self._file.flush()
        os.truncate(self._file.fileno(), size)
        self._file.seek(size)

    def close(self) -> None:
        """Flush, fsync and close; closing twice is harmless."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> AlertLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
