"""MQTT topic patterns with named fields, and the id rules for names taken from topics."""

from __future__ import annotations

import re

FIELDS = ("group", "kind", "device", "metric")
# Ids that name devices, metrics, kinds and groups. Anything else is rejected, so an id
# can always be used as a topic segment or a file name without escaping.
ID_PATTERN = r"[A-Za-z0-9_.:@-]{1,128}"
ID_RE = re.compile(ID_PATTERN)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@-]")


def valid_id(text: str) -> bool:
    return ID_RE.fullmatch(text) is not None


def sanitise_segment(text: str) -> str:
    """Make text safe as one MQTT topic segment (no '/', '+', '#', control characters)."""
    return _UNSAFE.sub("_", text)[:128] or "_"


class TopicPattern:
    """``city/{group}/{kind}/{device}`` style pattern; ``+`` matches any one segment.

    >>> TopicPattern("city/{group}/{kind}/{device}").match("city/north/air/st1".split("/"))
    {'group': 'north', 'kind': 'air', 'device': 'st1'}
    """

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.parts: list[tuple[bool, str]] = []  # (is_field, name or literal)
        seen: set[str] = set()
        for seg in pattern.split("/"):
            if seg.startswith("{") and seg.endswith("}"):
                name = seg[1:-1]
                if name not in FIELDS:
                    raise ValueError(f"unknown field {{{name}}} (known: {', '.join(FIELDS)})")
                if name in seen:
                    raise ValueError(f"field {{{name}}} appears twice")
                seen.add(name)
                self.parts.append((True, name))
            elif "{" in seg or "}" in seg or "#" in seg or (seg != "+" and "+" in seg):
                raise ValueError(f"bad segment {seg!r}: use a whole-segment {{field}} or +")
            else:
                self.parts.append((False, seg))
        if "kind" not in seen:
            raise ValueError("a pattern needs a {kind} field")
        self.fields = seen

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.parts):
            return None
        out = {}
        for (is_field, name), seg in zip(self.parts, segments, strict=True):
            if is_field:
                out[name] = seg
            elif name != "+" and name != seg:
                return None
        return out

    def subscription(self) -> str:
        """The MQTT filter that covers this pattern."""
        return "/".join("+" if f or n == "+" else n for f, n in self.parts)
