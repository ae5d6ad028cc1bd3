"""The worker's log lines written a group at a time (bus/log_buffer.py), in order, warnings at once."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from typing import Any

import pytest

from bus import log_buffer
from bus.logging import configure_logging, get_logger, saved_logging


class CountingStream(io.StringIO):
    """A text stream that counts its writes (each one a system call on a real file)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            self.writes += 1
            return super().write(s)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def stream() -> Any:
    restore = saved_logging()
    out = CountingStream()
    configure_logging("debug", "json", stream=out, buffered=True)
    yield out
    configure_logging("info", "json", stream=io.StringIO())  # closes the test's buffer
    restore()


def _wait_for(out: CountingStream, count: int) -> None:
    deadline = time.monotonic() + 2
    while len(out.getvalue().splitlines()) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_info_lines_go_out_a_group_at_a_time_and_all_of_them(
    stream: CountingStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 lines ▶ a few writes, every line in order. The group's window is widened to 0.5 s so that a slow,
    shared machine logging the 200 lines in more than 50 ms cannot split them into more writes."""
    monkeypatch.setattr(log_buffer, "FLUSH_AFTER", 0.5)
    log = get_logger("t")
    for i in range(200):
        log.info("processed", n=i)
    assert stream.writes < 5, "each line was written on its own"
    _wait_for(stream, 200)
    assert [line["n"] for line in stream.lines()] == list(range(200))
    assert stream.writes <= 3


def test_an_info_line_waits_no_longer_than_the_flush_delay(stream: CountingStream) -> None:
    log = get_logger("t")
    log.info("first")  # a quiet stream: written at once
    started = time.monotonic()
    log.info("second")  # right after: waits for the group
    _wait_for(stream, 2)
    assert [line["event"] for line in stream.lines()] == ["first", "second"]
    assert time.monotonic() - started < log_buffer.FLUSH_AFTER + 0.5


def test_a_line_after_a_quiet_spell_is_written_at_once(stream: CountingStream) -> None:
    """A quiet worker's line is as prompt as before the buffer: a reader never waits for it."""
    log = get_logger("t")
    log.info("early")
    time.sleep(log_buffer.FLUSH_AFTER * 2)
    _wait_for(stream, 1)
    log.info("after the quiet spell")
    assert [line["event"] for line in stream.lines()] == ["early", "after the quiet spell"]  # no waiting


def test_a_warning_goes_out_at_once_after_every_line_before_it(stream: CountingStream) -> None:
    log = get_logger("t")
    log.info("first")
    log.debug("second")
    log.warning("third")
    # no waiting: the warning wrote the lines queued before it, in order
    assert [line["event"] for line in stream.lines()] == ["first", "second", "third"]


def test_stdlib_lines_join_the_same_queue_in_order(stream: CountingStream) -> None:
    get_logger("t").info("ours")
    logging.getLogger("somelib").warning("theirs")
    assert [line["event"] for line in stream.lines()] == ["ours", "theirs"]


def test_too_many_waiting_lines_are_written_without_waiting(
    stream: CountingStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_LINES waiting ▶ written by the line that filled the group, not by the flusher: its window is made
    30 s here (CI met the flusher writing part of the group when the lines took over 50 ms to log)."""
    monkeypatch.setattr(log_buffer, "FLUSH_AFTER", 30.0)
    log = get_logger("t")
    for i in range(log_buffer.MAX_LINES + 1):  # the first goes out at once (a quiet stream), then a full group
        log.info("x", n=i)
    assert len(stream.lines()) == log_buffer.MAX_LINES + 1  # the last one wrote the group


def test_a_new_configuration_writes_what_the_old_buffer_held() -> None:
    restore = saved_logging()
    try:
        old = CountingStream()
        configure_logging("info", "json", stream=old, buffered=True)
        get_logger("t").info("held")
        configure_logging("info", "json", stream=io.StringIO())
        assert [line["event"] for line in old.lines()] == ["held"]
    finally:
        restore()


def test_unbuffered_logging_writes_each_line_at_once() -> None:
    restore = saved_logging()
    try:
        out = CountingStream()
        configure_logging("info", "json", stream=out)
        get_logger("t").info("now")
        assert [line["event"] for line in out.lines()] == ["now"]
    finally:
        restore()


def test_vietnamese_text_stays_readable(stream: CountingStream) -> None:
    get_logger("t").warning("note", text="Hệ thống tích hợp đã nhận hồ sơ")
    assert "Hệ thống tích hợp đã nhận hồ sơ" in stream.getvalue()
