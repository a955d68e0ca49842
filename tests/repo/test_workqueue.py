"""The byte-bounded, failable queue between pipeline stages (sidecar/repo/workqueue.py)."""

from __future__ import annotations

import threading
import time

import pytest

from sidecar.repo.workqueue import ByteBoundedQueue, QueueClosed

SETTLE = 0.15  # long enough for a thread to reach a blocking wait


class Producer(threading.Thread):
    """Puts items one after another, recording how far it got."""

    def __init__(self, queue: ByteBoundedQueue, items: list[tuple[object, int]]) -> None:
        super().__init__(daemon=True)
        self.queue = queue
        self.items = items
        self.done: list[object] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for item, size in self.items:
                self.queue.put(item, size)
                self.done.append(item)
        except BaseException as exc:
            self.error = exc


def test_fifo_order():
    q = ByteBoundedQueue(1000)
    for i in range(10):
        q.put(i, 10)
    assert [q.get() for _ in range(10)] == list(range(10))


@pytest.mark.parametrize(
    "limit,sizes,accepted,gets_to_unblock",
    [
        (100, [40, 40, 40], 2, 1),  # the third would exceed 100
        (100, [50, 50, 1], 2, 1),  # exactly full; one more byte waits
        (100, [100, 1], 1, 1),
        (100, [0, 0, 0, 100, 1], 4, 4),  # empty items take no room, so taking them frees none
        (100, [10] * 10 + [1], 10, 1),
    ],
)
def test_producer_blocks_over_the_byte_limit_until_a_consumer_takes(limit, sizes, accepted, gets_to_unblock):
    q = ByteBoundedQueue(limit)
    producer = Producer(q, [(i, size) for i, size in enumerate(sizes)])
    producer.start()
    time.sleep(SETTLE)
    assert producer.is_alive()
    assert producer.done == list(range(accepted))
    got = [q.get() for _ in range(gets_to_unblock - 1)]
    if got:
        time.sleep(SETTLE)
        assert producer.done == list(range(accepted))  # still waiting: no room was freed
    got.append(q.get())
    producer.join(timeout=2)
    assert not producer.is_alive()
    assert producer.error is None
    assert producer.done == list(range(len(sizes)))
    got += [q.get() for _ in range(len(sizes) - len(got))]
    assert got == list(range(len(sizes)))


@pytest.mark.parametrize("size", [101, 10**9])
def test_item_larger_than_the_limit_is_accepted_when_empty(size):
    q = ByteBoundedQueue(100)
    q.put("big", size)  # does not block
    producer = Producer(q, [("small", 1)])
    producer.start()
    time.sleep(SETTLE)
    assert producer.done == []  # the big one fills the queue
    assert q.get() == "big"
    producer.join(timeout=2)
    assert producer.done == ["small"]
    assert q.get() == "small"


def test_consumer_blocks_until_an_item_arrives():
    q = ByteBoundedQueue(100)
    got: list = []
    consumer = threading.Thread(target=lambda: got.append(q.get()), daemon=True)
    consumer.start()
    time.sleep(SETTLE)
    assert consumer.is_alive() and got == []
    q.put("x", 1)
    consumer.join(timeout=2)
    assert got == ["x"]


def test_close_lets_consumers_drain_then_raises():
    q = ByteBoundedQueue(100)
    for i in range(3):
        q.put(i, 10)
    q.close()
    with pytest.raises(QueueClosed):
        q.put("late", 1)
    assert [q.get() for _ in range(3)] == [0, 1, 2]
    for _ in range(2):
        with pytest.raises(QueueClosed) as info:
            q.get()
        assert info.value.__cause__ is None
    assert q.error is None


def test_close_wakes_a_waiting_consumer():
    q = ByteBoundedQueue(100)
    outcome: list = []

    def consume():
        try:
            q.get()
        except QueueClosed:
            outcome.append("closed")

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(SETTLE)
    q.close()
    consumer.join(timeout=2)
    assert outcome == ["closed"]


def test_close_with_error_wakes_a_blocked_producer_and_drops_pending_items():
    q = ByteBoundedQueue(100)
    q.put("pending-1", 60)
    q.put("pending-2", 40)
    producer = Producer(q, [("blocked", 10)])
    producer.start()
    time.sleep(SETTLE)
    assert producer.is_alive()
    failure = RuntimeError("the reader stage failed")
    q.close(failure)
    producer.join(timeout=2)
    assert not producer.is_alive()
    assert isinstance(producer.error, QueueClosed)
    assert producer.error.__cause__ is failure
    assert producer.done == []
    assert q.error is failure
    with pytest.raises(QueueClosed) as info:
        q.get()  # pending items were dropped
    assert info.value.__cause__ is failure


def test_close_with_error_wakes_every_waiter():
    q = ByteBoundedQueue(10)
    q.put("full", 10)
    producers = [Producer(q, [(f"p{i}", 5)]) for i in range(3)]
    for p in producers:
        p.start()
    time.sleep(SETTLE)
    failure = ValueError("boom")
    q.close(failure)
    for p in producers:
        p.join(timeout=2)
        assert not p.is_alive()
        assert isinstance(p.error, QueueClosed)
        assert p.error.__cause__ is failure


def test_the_first_error_is_kept():
    q = ByteBoundedQueue(10)
    first, second = RuntimeError("first"), RuntimeError("second")
    q.close(first)
    q.close(second)
    q.close()
    assert q.error is first
    with pytest.raises(QueueClosed) as info:
        q.put("x", 1)
    assert info.value.__cause__ is first


def test_error_after_plain_close_drops_what_is_left():
    q = ByteBoundedQueue(100)
    q.put("a", 1)
    q.put("b", 1)
    q.close()
    assert q.get() == "a"
    q.close(RuntimeError("consumer failed"))
    with pytest.raises(QueueClosed):
        q.get()


def test_room_is_given_back_by_get():
    q = ByteBoundedQueue(100)
    for _ in range(50):
        q.put("x", 100)  # each fills the queue; would block if get did not give room back
        assert q.get() == "x"
    assert q._used == 0


def test_many_producers_and_consumers_deliver_everything_once():
    q = ByteBoundedQueue(64)
    producers = [Producer(q, [((p, i), 1 + (i % 7)) for i in range(200)]) for p in range(4)]
    received: list = []
    lock = threading.Lock()

    def consume():
        while True:
            try:
                item = q.get()
            except QueueClosed:
                return
            with lock:
                received.append(item)

    consumers = [threading.Thread(target=consume, daemon=True) for _ in range(3)]
    for t in consumers + producers:
        t.start()
    for p in producers:
        p.join(timeout=10)
        assert p.error is None
    q.close()
    for c in consumers:
        c.join(timeout=10)
        assert not c.is_alive()
    assert sorted(received) == sorted((p, i) for p in range(4) for i in range(200))
    assert q._used == 0


def test_store_workers_take_the_nice_value_they_are_given(tmp_path, monkeypatch):
    import os
    import time

    from sidecar.repo.backends.local import LocalBackend
    from sidecar.repo.blobwriter import BlobWriter
    from sidecar.repo.repository import Repository
    from sidecar.repo.snapshot import SourceStats

    repo = Repository.init(LocalBackend(tmp_path / "repo"), b"k")
    monkeypatch.setenv("BACKUP_WORKER_NICE", "7")
    writer = BlobWriter(repo, [SourceStats()], workers=1)
    try:
        writer.store(0, b"some data", 0)  # the first new blob starts the workers
        pid = writer._workers[0].process.pid
        deadline = time.monotonic() + 10
        while os.getpriority(os.PRIO_PROCESS, pid) != os.getpriority(os.PRIO_PROCESS, 0) + 7:
            assert time.monotonic() < deadline, "the worker did not lower its priority"
            time.sleep(0.05)
    finally:
        writer.abort()
