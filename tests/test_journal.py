"""The journal: what is committed is read back exactly, a torn end is ignored, segments
rotate and are pruned, a failed write leaves no torn frame; and the alert log is cut back to
a checkpoint's mark only when it is the file the checkpoint saw."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc import checkpoint, journal
from streamproc.config import load
from streamproc.pipeline import Pipeline

topics = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
messages = st.lists(
    st.tuples(topics, st.binary(max_size=300), st.integers(-(2**63), 2**63 - 1)), max_size=30
)


@settings(max_examples=50, deadline=None)
@given(groups=st.lists(messages, max_size=4))
def test_what_is_committed_is_read_back_in_order(tmp_path_factory: pytest.TempPathFactory,
                                                 groups: list) -> None:  # fmt: skip
    folder = tmp_path_factory.mktemp("j")
    j = journal.Journal(folder)
    for group in groups:
        for m in group:
            j.append(*m)
        j.commit().result()
    j.close()
    assert list(journal.read(folder)) == [m for g in groups for m in g]


def test_an_append_is_durable_only_once_committed(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.append("a/b", b"1", 5)
    assert j.pending > 0
    assert list(journal.read(tmp_path)) == []
    assert j.commit().result() > 0
    assert j.pending == 0
    assert list(journal.read(tmp_path)) == [("a/b", b"1", 5)]
    j.close()


def test_a_torn_frame_at_the_end_is_ignored_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    j = journal.Journal(tmp_path)
    j.append("t", b"first", 1)
    j.commit()
    j.append("t", b"second", 2)
    j.close()
    path = journal.segment_path(tmp_path, 0)
    whole = path.read_bytes()
    for cut in (1, 5, 12):  # inside the last frame's records, its length, its crc
        path.write_bytes(whole[:-cut])
        with caplog.at_level(logging.WARNING):
            assert list(journal.read(tmp_path)) == [("t", b"first", 1)]
        assert "torn frame" in caplog.text
        caplog.clear()
    flipped = bytearray(whole)
    flipped[-1] ^= 1  # a damaged byte fails the crc
    path.write_bytes(bytes(flipped))
    assert list(journal.read(tmp_path)) == [("t", b"first", 1)]


def test_rotate_prune_and_a_new_start_in_a_new_segment(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.append("t", b"0", 0)
    assert j.rotate().result() > 0  # the buffer goes to the segment being left
    assert j.segment == 1
    j.append("t", b"1", 1)
    j.commit()
    j.rotate()
    j.append("t", b"2", 2)
    j.close()
    assert journal.segments(tmp_path) == [0, 1, 2]
    assert [m[1] for m in journal.read(tmp_path, 1)] == [b"1", b"2"]
    again = journal.Journal(tmp_path)  # never appends to a segment a crash may have torn
    assert again.segment == 3
    again.prune(2).result()
    assert journal.segments(tmp_path) == [2]
    again.close()
    assert (os.stat(journal.segment_path(tmp_path, 2)).st_mode & 0o777) == 0o640


def test_a_failed_write_leaves_no_torn_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = journal.Journal(tmp_path)
    j.append("t", b"kept", 1)
    j.commit().result()
    real_writev = os.writev

    def half_then_full(fd: int, buffers: list[memoryview]) -> int:
        data = b"".join(buffers)
        real_writev(fd, [data[: len(data) // 2]])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.os, "writev", half_then_full)
    j.append("t", b"lost" * 100, 2)
    with pytest.raises(OSError, match="No space"):
        j.commit().result()
    monkeypatch.setattr(journal.os, "writev", real_writev)
    j.append("t", b"after", 3)
    j.close()
    assert list(journal.read(tmp_path)) == [("t", b"kept", 1), ("t", b"after", 3)]


@settings(max_examples=30, deadline=None)
@given(msgs=messages, cut=st.integers(1, 50))
def test_short_writes_are_carried_on_to_the_whole_frame(
    tmp_path_factory: pytest.TempPathFactory, msgs: list, cut: int
) -> None:
    """A ``writev`` that writes fewer bytes than asked: the frame is still written whole."""
    folder = tmp_path_factory.mktemp("j")
    real_writev = os.writev

    def short(fd: int, buffers: list[memoryview]) -> int:
        return real_writev(fd, [b"".join(buffers)[:cut]])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(journal.os, "writev", short)
        j = journal.Journal(folder)
        for m in msgs:
            j.append(*m)
        j.close()
    assert list(journal.read(folder)) == msgs


def _pipeline(out: Path) -> Pipeline:
    return Pipeline(load(None), out)


def _write_lines(p: Pipeline, lines: list[bytes]) -> None:
    p.alert_log._file.write(b"".join(line + b"\n" for line in lines))
    p.alert_log.flush()


def test_the_alert_log_is_cut_back_to_the_checkpoint_mark(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    _write_lines(p, [b'{"a":1}', b'{"a":2}'])
    mark = checkpoint._alert_log_mark(p)
    _write_lines(p, [b'{"a":3}'])
    assert checkpoint.rewind_alert_log(p, mark)
    _write_lines(p, [b'{"a":4}'])
    p.alert_log.close()
    assert (tmp_path / "alerts.jsonl").read_bytes() == b'{"a":1}\n{"a":2}\n{"a":4}\n'


@pytest.mark.parametrize("change", ["rotated", "edited", "shorter"])
def test_an_alert_log_changed_since_the_checkpoint_is_not_cut(tmp_path: Path, change: str) -> None:
    p = _pipeline(tmp_path)
    _write_lines(p, [b'{"a":1}', b'{"a":2}'])
    mark = checkpoint._alert_log_mark(p)
    p.alert_log.close()
    path = tmp_path / "alerts.jsonl"
    if change == "rotated":  # a new file that has grown past the mark
        path.write_bytes(b'{"b":0}\n' * 10)
    elif change == "edited":
        path.write_bytes(b'{"a":9}\n{"a":2}\n{"a":3}\n')
    else:
        path.write_bytes(b'{"a":1}\n')
    before = path.read_bytes()
    q = _pipeline(tmp_path)
    assert not checkpoint.rewind_alert_log(q, mark)
    q.alert_log.close()
    assert path.read_bytes() == before
