"""respan_gateway.ids: the request path's random ids, cut from a block of os.urandom."""

from __future__ import annotations

import os
import time
import uuid

from respan_gateway import ids


def test_ids_are_distinct_across_blocks_and_log_ids_are_time_ordered_uuids() -> None:
    request_ids = [ids.hex_id() for _ in range(1000)]  # some 3 blocks of 4 KiB
    assert len(set(request_ids)) == 1000
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in request_ids)
    before = time.time_ns() // 1_000_000
    log_ids = [ids.uuid7() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert len(set(log_ids)) == 1000
    for text in log_ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # its first 48 bits: the Unix time in ms
    # Ordered by time: an id made a millisecond later sorts after every id made before it.
    time.sleep(0.002)
    later = ids.uuid7()
    assert all(later > text for text in log_ids)


def test_a_forked_process_does_not_repeat_the_parents_ids() -> None:
    ids.hex_id()  # the parent holds a block partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(ids.hex_id() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [ids.hex_id() for _ in range(5)]
    assert len(child) == 5
    assert not set(child) & set(parent), "the child handed out the ids of the parent's block"
