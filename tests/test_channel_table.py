"""The compiled (device, metric) -> channel table against a Python dict."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.channel_table import ChannelTable
from streamproc.config import ChannelSettings
from streamproc.registry import Registry

# entries never hold a NUL (ids are checked before registration); look-ups may
entry_text = st.text(st.characters(exclude_characters="\0", codec="utf-8"), max_size=6)
any_text = st.text(st.characters(codec="utf-8"), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.dictionaries(st.tuples(entry_text, entry_text), st.integers(0, 10**6), max_size=40),
    others=st.lists(st.tuples(any_text, any_text), max_size=20),
    large=st.booleans(),
    skip=st.integers(0, 3),
    group=st.integers(1, 9),
)
def test_pairs_are_found_as_a_dict_finds_them(
    entries: dict[tuple[str, str], int],
    others: list[tuple[str, str]],
    large: bool,
    skip: int,
    group: int,
) -> None:
    table = ChannelTable()
    items = list(entries.items())
    for a in range(0, len(items), group):  # added a few at a time: the table grows between
        part = items[a : a + group]
        keys = [f"{d}\0{m}".encode() for (d, m), _ in part]
        table.add_keys(keys, np.array([c for _, c in part], np.int32))
    asked = [("pad", "pad")] * skip + list(entries) + others
    string = pa.large_string() if large else pa.string()
    # sliced arrays: their offsets start past the buffer's first
    device = pa.array([d for d, _ in asked], string).slice(skip)
    metric = pa.array([m for _, m in asked], string).slice(skip)
    got = table.find_pairs(device, metric).tolist()
    assert got == [entries.get(pair, -1) for pair in asked[skip:]]
    for pair in asked[skip:]:
        assert table.find(pair[0].encode(), pair[1].encode()) == entries.get(pair, -1)


def test_the_table_follows_the_registry() -> None:
    reg = Registry(ChannelSettings())
    table = ChannelTable()
    first = [reg.channel(f"st{i}", "pm25", "air", "north") for i in range(3000)]
    table.follow(reg)
    later = [reg.channel("st0", m, "air", "north") for m in ("no2", "o3")]
    table.follow(reg)
    table.follow(reg)  # nothing new: nothing added twice
    assert table.n == reg.n == 3002
    devices = pa.array([f"st{i}" for i in range(3000)] + ["st0", "st0", "st1"])
    metrics = pa.array(["pm25"] * 3000 + ["no2", "o3", "no2"])
    assert table.find_pairs(devices, metrics).tolist() == [*first, *later, -1]
