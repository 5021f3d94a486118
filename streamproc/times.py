"""Time conversions. Event times are int64 epoch milliseconds everywhere inside streamproc."""

from __future__ import annotations

from datetime import UTC, datetime

MS_PER_S = 1000
# Numbers at or above this are epoch milliseconds, below it epoch seconds
# (1e11 s is the year 5138; 1e11 ms is March 1973).
MS_CUTOFF = 100_000_000_000


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 time -> epoch milliseconds (a time without offset is taken as UTC)."""
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return round(t.timestamp() * MS_PER_S)


def number_to_ms(x: float) -> int:
    """Epoch seconds or epoch milliseconds (told apart by size) -> epoch milliseconds."""
    return int(x) if abs(x) >= MS_CUTOFF else round(x * MS_PER_S)


def format_ms(ts_ms: int) -> str:
    """Epoch milliseconds -> RFC 3339 UTC with millisecond precision."""
    t = datetime.fromtimestamp(ts_ms / MS_PER_S, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"
