"""EventLog: sequence numbers, resume tokens, retention, slow watchers."""

from __future__ import annotations

import time

import grpc
import pytest

from orion_grpc.api.errors import ApiError
from orion_grpc.api.event_log import EventLog
from orion_grpc.core import DeviceEvent, EventType
from orion_grpc.gen.orion.v1 import event_pb2


def device_event(device_id: str = "d1", status: str = "idle") -> DeviceEvent:
    return DeviceEvent(EventType.DEVICE_STATUS_CHANGED, "dm", time.time(), {}, device_id, status,
                       {"device_id": device_id, "status": status})


def fill(log: EventLog, n: int) -> None:
    for i in range(n):
        log.append(device_event(status="idle" if i % 2 else "busy"))


def test_sequences_are_gapless_and_tokens_point_at_them():
    log = EventLog(retention=100)
    fill(log, 5)
    sub = log.subscribe(0)
    entries = log.read(sub)
    assert [e.sequence for e in entries] == [1, 2, 3, 4, 5]
    assert all(log.parse_token(e.event.resume_token) == e.sequence for e in entries)
    assert entries[1].event.device.previous_status == entries[0].event.device.status


def test_read_after_a_cursor_survives_eviction():
    log = EventLog(retention=10)
    fill(log, 25)
    assert (log.oldest_sequence, log.latest_sequence) == (16, 25)
    sub = log.subscribe(18)
    assert [e.sequence for e in log.read(sub)] == list(range(19, 26))
    assert [e.sequence for e in log.read(sub, limit=3)] == [19, 20, 21]


def test_a_token_from_another_server_run_is_failed_precondition():
    old = EventLog(epoch="aaaa")
    fill(old, 3)
    log = EventLog(epoch="bbbb")
    fill(log, 3)
    with pytest.raises(ApiError) as info:
        log.parse_token(old.token(2))
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "RESUME_TOKEN_EPOCH_MISMATCH"
    assert "watch again without a token" in info.value.message


def test_an_expired_token_is_out_of_range_and_says_what_is_left():
    log = EventLog(retention=5)
    fill(log, 20)
    assert log.parse_token(log.token(15)) == 15  # the one just before the oldest is fine
    with pytest.raises(ApiError) as info:
        log.parse_token(log.token(14))
    assert info.value.code is grpc.StatusCode.OUT_OF_RANGE
    assert info.value.reason == "RESUME_TOKEN_EXPIRED"
    assert info.value.metadata["oldest_retained_sequence"] == "16"


@pytest.mark.parametrize("token", ["not a token", "dGhyZWUuZmllbGRzLm5vdGFu", "%%%"])
def test_a_malformed_token_is_invalid_argument(token):
    with pytest.raises(ApiError) as info:
        EventLog().parse_token(token)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.reason == "INVALID_RESUME_TOKEN"


def test_a_token_from_the_future_is_refused():
    log = EventLog()
    fill(log, 2)
    with pytest.raises(ApiError) as info:
        log.parse_token(log.token(3))
    assert info.value.reason == "RESUME_TOKEN_AHEAD"


def test_a_watcher_that_falls_too_far_behind_is_flagged_and_memory_stays_bounded():
    log = EventLog(retention=50, max_lag=10)
    fast, slow = log.subscribe(0), log.subscribe(0)
    for _ in range(30):
        fill(log, 1)
        fast.cursor = log.latest_sequence  # keeps up
    assert not fast.overflow and slow.overflow
    assert len(log._entries) == 30  # one shared ring, no per-watcher copies
    fill(log, 100)
    assert len(log._entries) == 50
    assert log.lost(slow)


def test_bookmark_carries_the_cursor_and_the_oldest_retained_event():
    log = EventLog(retention=3)
    fill(log, 7)
    mark = log.bookmark(6)
    assert mark.type == event_pb2.EVENT_TYPE_BOOKMARK
    assert (mark.sequence, mark.bookmark.oldest_retained_sequence) == (6, 5)
    assert log.parse_token(mark.resume_token) == 6
