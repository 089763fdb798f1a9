"""The in-process event bus: typed events, ordered isolated delivery, backpressure, causation.

Everything here runs without a store: ``fs.EventBus()`` on its own. The persisted log lives in
``test_events_log.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any
from uuid import RFC_4122, UUID

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forseti as fs
from forseti.events import (
    UnknownEventTopicError,
    active_bus,
    decode_event,
    encode_event,
    event_type,
    event_types,
    new_event_id,
)

# -- event types used by these tests ----------------------------------------------------------


class Ping(fs.Event, frozen=True):
    topic = "tests.events_bus.Ping"
    n: int = 0


class SubPing(Ping, frozen=True):
    topic = "tests.events_bus.SubPing"
    extra: str = ""


class Pong(fs.Event, frozen=True):
    topic = "tests.events_bus.Pong"
    n: int = 0


class Pang(fs.Event, frozen=True):
    topic = "tests.events_bus.Pang"
    n: int = 0


class Payload(fs.Event, frozen=True):
    topic = "tests.events_bus.Payload"
    step: int
    loss: float
    tags: tuple[str, ...] = ()
    metrics: dict[str, float] = {}
    ref: fs.EntityRef | None = None


class NoTopic(fs.Event, frozen=True):
    value: int = 0


@pytest.fixture
def bus() -> Iterator[fs.EventBus]:
    b = fs.EventBus()
    yield b
    b.close()


def recorder(log: list[Any], tag: Any) -> Callable[[fs.Event], None]:
    def handler(event: fs.Event) -> None:
        log.append((tag, event))

    handler.__qualname__ = f"recorder[{tag}]"
    return handler


# -- event structs ----------------------------------------------------------------------------


def test_event_defaults() -> None:
    before = time.time()
    a = Ping(n=1)
    b = Ping(n=1)
    after = time.time()
    assert isinstance(a.id, UUID) and a.id.version == 7  # time-ordered (UUIDv7)
    assert a.id != b.id
    assert before <= a.timestamp <= after
    assert a.causation_id is None and a.correlation_id is None
    assert a.subject is None
    assert Ping.topic == "tests.events_bus.Ping"
    assert Ping.persist is True
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(u.version == 7 and u.variant == RFC_4122 for u in ids)
    millis = [u.int >> 80 for u in ids]  # the leading 48 bits are Unix milliseconds, in order
    assert millis == sorted(millis) and int(before * 1000) <= millis[0] <= int(after * 1000) + 1000


def test_event_is_frozen() -> None:
    e = Ping(n=1)
    with pytest.raises(AttributeError):
        e.n = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        e.id = new_event_id()  # type: ignore[misc]
    assert msgspec.structs.replace(e, n=2).n == 2 and e.n == 1


def test_event_without_topic_gets_module_qualname() -> None:
    assert NoTopic.topic == f"{__name__}.NoTopic"
    assert event_type(NoTopic.topic) is NoTopic


def test_msgpack_round_trip_keeps_every_field() -> None:
    ref = fs.EntityRef(new_event_id(), 3)
    with fs.caused_by(Ping(n=0)):
        e = Payload(
            step=7,
            loss=0.125,
            tags=("a", "b"),
            metrics={"acc": 0.5},
            ref=ref,
            subject=fs.EntityRef(new_event_id(), 1),
        )
    assert e.causation_id is not None
    data = encode_event(e)
    assert isinstance(data, bytes)
    back = decode_event(Payload.topic, data)
    assert type(back) is Payload
    assert back == e
    assert isinstance(back.subject, fs.EntityRef) and back.subject == e.subject
    assert isinstance(back.ref, fs.EntityRef) and back.ref == ref
    assert back.causation_id == e.causation_id and back.correlation_id == e.correlation_id
    assert back.timestamp == e.timestamp


def test_topic_registry() -> None:
    known = event_types()
    for cls in (Ping, SubPing, Pong, Payload, fs.HandlerFailed, fs.CallStarted,
                fs.EntityRegistered, fs.EntityVersionCommitted, fs.AliasMoved):  # fmt: skip
        assert known[cls.topic] is cls
        assert event_type(cls.topic) is cls
    # a copy: mutating it changes nothing
    known.pop(Ping.topic)
    assert event_type(Ping.topic) is Ping


def test_unknown_topic_fails_clearly() -> None:
    with pytest.raises(UnknownEventTopicError, match="no.such.topic"):
        event_type("no.such.topic")
    with pytest.raises(UnknownEventTopicError):
        decode_event("no.such.topic", encode_event(Ping(n=1)))
    assert issubclass(UnknownEventTopicError, fs.NotFoundError)


def test_duplicate_topic_from_another_class_is_refused() -> None:
    with pytest.raises(TypeError, match="already used"):

        class Impostor(fs.Event, frozen=True):
            topic = "tests.events_bus.Ping"

    assert event_type("tests.events_bus.Ping") is Ping


def test_decode_wrong_payload_shape_fails() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(Payload.topic, encode_event(Ping(n=1)))


# -- subscriptions ----------------------------------------------------------------------------


def test_priority_then_registration_order(bus: fs.EventBus) -> None:
    log: list[Any] = []
    bus.subscribe(Ping, recorder(log, "a0"))
    bus.subscribe(Ping, recorder(log, "b5"), priority=5)
    bus.subscribe(Ping, recorder(log, "c0"))
    bus.subscribe(Ping, recorder(log, "d-1"), priority=-1)
    bus.subscribe(Ping, recorder(log, "e5"), priority=5)
    e = Ping(n=1)
    bus.publish(e)
    assert [t for t, _ in log] == ["b5", "e5", "a0", "c0", "d-1"]
    assert all(ev is e for _, ev in log)
    assert [s.priority for s in bus.subscriptions] == [5, 5, 0, 0, -1]
    assert bus.stats.published == 1 and bus.stats.delivered == 5 and bus.stats.failed == 0


def test_subclass_events_reach_base_subscribers(bus: fs.EventBus) -> None:
    log: list[Any] = []
    bus.subscribe(Ping, recorder(log, "ping"))
    bus.subscribe(SubPing, recorder(log, "sub"))
    bus.subscribe(fs.Event, recorder(log, "all"))
    bus.publish(Ping(n=1))
    bus.publish(SubPing(n=2))
    bus.publish(Pong(n=3))
    assert [(t, type(e).__name__, e.n) for t, e in log] == [
        ("ping", "Ping", 1),
        ("all", "Ping", 1),
        ("ping", "SubPing", 2),
        ("sub", "SubPing", 2),
        ("all", "SubPing", 2),
        ("all", "Pong", 3),
    ]


def test_where_filter(bus: fs.EventBus) -> None:
    log: list[Any] = []
    bus.subscribe(Ping, recorder(log, "even"), where=lambda e: e.n % 2 == 0)
    bus.subscribe(Ping, recorder(log, "any"))
    for i in range(4):
        bus.publish(Ping(n=i))
    assert [(t, e.n) for t, e in log] == [
        ("even", 0), ("any", 0), ("any", 1), ("even", 2), ("any", 2), ("any", 3),
    ]  # fmt: skip
    assert bus.stats.delivered == 6


def test_unsubscribe(bus: fs.EventBus) -> None:
    log: list[Any] = []
    s1 = bus.subscribe(Ping, recorder(log, 1))
    h2 = recorder(log, 2)
    bus.subscribe(Ping, h2)
    bus.publish(Ping(n=0))
    bus.unsubscribe(s1)
    bus.unsubscribe(s1)  # already gone: no error
    bus.publish(Ping(n=1))
    assert [(t, e.n) for t, e in log] == [(1, 0), (2, 0), (2, 1)]
    assert [s.handler for s in bus.subscriptions] == [h2]


def test_bus_on_decorator(bus: fs.EventBus) -> None:
    seen: list[int] = []

    @bus.on(Ping, where=lambda e: e.n > 0, priority=3)
    def handler(e: Ping) -> None:
        seen.append(e.n)

    assert callable(handler)
    bus.publish(Ping(n=0))
    bus.publish(Ping(n=4))
    assert seen == [4]
    assert bus.subscriptions[0].priority == 3


def test_subscribe_validates(bus: fs.EventBus) -> None:
    with pytest.raises(fs.ValidationError):
        bus.subscribe(int, print)  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        bus.subscribe(Ping, "not callable")  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        bus.subscribe(Ping, print, priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        fs.on(str)  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        bus.publish("not an event")  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        fs.EventBus(queue_size=0)
    assert bus.subscriptions == []


# handlers marked with fs.on (marking alone subscribes nothing)
MARKED_LOG: list[tuple[str, int]] = []


@fs.on(Ping, priority=1)
@fs.on(Pong)
def marked_both(e: fs.Event) -> None:
    MARKED_LOG.append(("both", e.n))  # type: ignore[attr-defined]


@fs.on(Ping, where=lambda e: e.n == 7)
def marked_seven(e: Ping) -> None:
    MARKED_LOG.append(("seven", e.n))


def test_include_marked_function(bus: fs.EventBus) -> None:
    MARKED_LOG.clear()
    other = fs.EventBus()
    other.publish(Ping(n=7))  # marking alone subscribed nothing anywhere
    other.close()
    assert MARKED_LOG == []
    subs = bus.include(marked_both)
    assert {s.event_type for s in subs} == {Ping, Pong}
    bus.publish(Ping(n=1))
    bus.publish(Pong(n=2))
    assert MARKED_LOG == [("both", 1), ("both", 2)]


def test_include_module_and_object(bus: fs.EventBus) -> None:
    MARKED_LOG.clear()
    module = types.ModuleType("fake_handlers")
    module.marked_both = marked_both  # type: ignore[attr-defined]
    module.marked_seven = marked_seven  # type: ignore[attr-defined]
    module.unmarked = lambda e: MARKED_LOG.append(("unmarked", 0))  # type: ignore[attr-defined]
    subs = bus.include(module)
    assert len(subs) == 3

    class Handlers:
        def __init__(self) -> None:
            self.got: list[int] = []

        @fs.on(Ping, priority=10)
        def first(self, e: Ping) -> None:
            self.got.append(e.n)
            MARKED_LOG.append(("method", e.n))

        def not_a_handler(self, e: Ping) -> None:
            raise AssertionError("unmarked methods are not subscribed")

    obj = Handlers()
    assert len(bus.include(obj)) == 1
    bus.publish(Ping(n=7))
    bus.publish(Ping(n=1))
    assert obj.got == [7, 1]
    assert MARKED_LOG == [
        ("method", 7), ("both", 7), ("seven", 7),
        ("method", 1), ("both", 1),
    ]  # fmt: skip


# -- publication order, sync and async handlers -----------------------------------------------


def test_publish_from_plain_code_runs_sync_and_async_handlers_in_order(bus: fs.EventBus) -> None:
    log: list[tuple[str, int]] = []

    async def a(e: Ping) -> None:
        await asyncio.sleep(0)
        log.append(("async", e.n))

    bus.subscribe(Ping, a, priority=1)
    bus.subscribe(Ping, lambda e: log.append(("sync", e.n)))
    for i in range(3):
        bus.publish(Ping(n=i))
        # delivered before publish returned
        assert log[-2:] == [("async", i), ("sync", i)]
    assert bus.stats.delivered == 6


def test_apublish_and_drain_inside_a_loop(bus: fs.EventBus) -> None:
    log: list[tuple[str, int]] = []

    async def a(e: Ping) -> None:
        await asyncio.sleep(0)
        log.append(("async", e.n))

    bus.subscribe(Ping, a)
    bus.subscribe(Ping, lambda e: log.append(("sync", e.n)))

    async def main() -> None:
        for i in range(20):
            await bus.apublish(Ping(n=i))
        await bus.drain()
        assert len(log) == 40

    asyncio.run(main())
    assert log == [(kind, i) for i in range(20) for kind in ("async", "sync")]


def test_bus_delivers_across_successive_event_loops(bus: fs.EventBus) -> None:
    seen: list[int] = []

    async def a(e: Ping) -> None:
        seen.append(e.n)

    bus.subscribe(Ping, a)

    async def run(start: int) -> None:
        for i in range(start, start + 3):
            await bus.apublish(Ping(n=i))
        await bus.drain()

    asyncio.run(run(0))
    asyncio.run(run(3))
    bus.publish(Ping(n=6))  # and from plain code after both loops are gone
    asyncio.run(run(7))
    assert seen == list(range(10))


def test_queued_events_are_delivered_when_the_loop_ends_without_drain(bus: fs.EventBus) -> None:
    """Closing the loop (``asyncio.run`` returning) must not drop queued events."""
    log: list[tuple[str, int]] = []

    async def slow(e: Ping) -> None:
        log.append(("slow", e.n))
        await asyncio.sleep(0)  # a handler doing I/O: it yields to the loop

    bus.subscribe(Ping, slow, priority=1)
    bus.subscribe(Ping, lambda e: log.append(("sync", e.n)))

    async def main() -> None:
        for i in range(3):
            await bus.apublish(Ping(n=i))
        # no drain: asyncio.run cancels the dispatcher while it is inside a handler

    asyncio.run(main())
    assert [n for kind, n in log if kind == "sync"] == [0, 1, 2]
    assert [n for kind, n in log if kind == "slow"] == [0, 1, 2]


def test_publish_nowait_without_a_loop_publishes_now(bus: fs.EventBus) -> None:
    seen: list[int] = []
    bus.subscribe(Ping, lambda e: seen.append(e.n))
    bus.publish_nowait(Ping(n=1))
    assert seen == [1]


def test_closed_bus_refuses_events(bus: fs.EventBus) -> None:
    seen: list[int] = []
    bus.subscribe(Ping, lambda e: seen.append(e.n))
    bus.close()
    bus.close()  # idempotent
    with pytest.raises(fs.StoreClosedError):
        bus.publish(Ping(n=1))

    async def main() -> None:
        with pytest.raises(fs.StoreClosedError):
            await bus.apublish(Ping(n=2))

    asyncio.run(main())
    assert seen == [] and bus.stats.published == 0


# -- error isolation --------------------------------------------------------------------------


def failing(e: fs.Event) -> None:
    raise ValueError(f"bad {type(e).__name__}")


def test_failing_handler_is_isolated_and_reported(bus: fs.EventBus) -> None:
    log: list[str] = []
    failures: list[fs.HandlerFailed] = []
    bus.subscribe(Ping, lambda e: log.append("before"), priority=1)
    bus.subscribe(Ping, failing)
    bus.subscribe(Ping, lambda e: log.append("after"), priority=-1)
    bus.subscribe(fs.HandlerFailed, failures.append)
    subject = fs.EntityRef(new_event_id(), 2)
    e = Ping(n=1, subject=subject)
    bus.publish(e)  # does not raise
    assert log == ["before", "after"]
    assert len(failures) == 1
    f = failures[0]
    assert f.handler == f"{__name__}.failing"
    assert f.event_id == e.id and f.event_topic == Ping.topic
    assert f.error_type == "ValueError" and f.error_message == "bad Ping"
    assert f.subject == subject
    assert f.causation_id == e.id and f.correlation_id == e.id
    assert bus.stats.failed == 1
    assert bus.stats.published == 2  # the event and its HandlerFailed
    assert bus.history() == [e, f]

    bus.publish(Ping(n=2))  # the bus keeps working
    assert log == ["before", "after", "before", "after"]
    assert bus.stats.failed == 2 and len(failures) == 2


def test_failing_failure_handler_does_not_recurse(bus: fs.EventBus) -> None:
    calls: list[str] = []

    def bad_failure_handler(f: fs.HandlerFailed) -> None:
        calls.append(f.error_type)
        raise RuntimeError("the failure handler fails too")

    bus.subscribe(Ping, failing)
    bus.subscribe(fs.HandlerFailed, bad_failure_handler)
    bus.subscribe(fs.HandlerFailed, lambda f: calls.append("second"))
    bus.publish(Ping(n=1))
    assert calls == ["ValueError", "second"]
    assert bus.stats.failed == 2
    assert len(bus.history(fs.HandlerFailed)) == 1


def test_async_handler_failure_is_isolated(bus: fs.EventBus) -> None:
    log: list[int] = []

    async def bad(e: Ping) -> None:
        await asyncio.sleep(0)
        raise KeyError("nope")

    bus.subscribe(Ping, bad, priority=1)
    bus.subscribe(Ping, lambda e: log.append(e.n))
    bus.publish(Ping(n=1))

    async def main() -> None:
        await bus.apublish(Ping(n=2))
        await bus.drain()

    asyncio.run(main())
    assert log == [1, 2]
    failed = bus.history(fs.HandlerFailed)
    assert [f.error_type for f in failed] == ["KeyError", "KeyError"]
    assert bus.stats.failed == 2


def test_strict_reraises_after_every_handler_ran() -> None:
    bus = fs.EventBus(strict=True)
    log: list[str] = []

    def bad2(e: fs.Event) -> None:
        raise TypeError("second")

    bus.subscribe(Ping, failing, priority=2)
    bus.subscribe(Ping, lambda e: log.append("middle"), priority=1)
    bus.subscribe(Ping, bad2)
    bus.subscribe(Ping, lambda e: log.append("last"), priority=-1)
    with pytest.raises(ExceptionGroup) as info:
        bus.publish(Ping(n=1))
    assert log == ["middle", "last"]
    assert [type(x) for x in info.value.exceptions] == [ValueError, TypeError]
    assert bus.stats.failed == 2
    assert len(bus.history(fs.HandlerFailed)) == 2

    async def main() -> None:
        await bus.apublish(Ping(n=2))
        with pytest.raises(ExceptionGroup) as ainfo:
            await bus.drain()
        assert [type(x) for x in ainfo.value.exceptions] == [ValueError, TypeError]
        await bus.drain()  # reported once

    asyncio.run(main())
    assert log == ["middle", "last", "middle", "last"]
    bus.close()


# -- backpressure -----------------------------------------------------------------------------


def test_backpressure_blocks_the_producer_and_drops_nothing() -> None:
    bus = fs.EventBus(queue_size=2)
    delivered: list[int] = []
    gate_holder: dict[str, asyncio.Event] = {}

    async def slow(e: Ping) -> None:
        delivered.append(e.n)
        if e.n == 0:
            gate_holder["entered"].set()
            await gate_holder["gate"].wait()

    bus.subscribe(Ping, slow)

    async def yield_many() -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def main() -> None:
        gate_holder["entered"] = asyncio.Event()
        gate_holder["gate"] = asyncio.Event()
        await bus.apublish(Ping(n=0))
        await gate_holder["entered"].wait()  # the consumer holds event 0
        await bus.apublish(Ping(n=1))
        await bus.apublish(Ping(n=2))  # the queue (size 2) is now full
        published = bus.stats.published
        history = bus.history()
        with pytest.raises(fs.BackpressureError):
            bus.publish_nowait(Ping(n=99))
        assert bus.stats.published == published and bus.history() == history
        third = asyncio.create_task(bus.apublish(Ping(n=3)))
        await yield_many()
        assert not third.done(), "apublish returned while the queue was full"
        assert delivered == [0]
        gate_holder["gate"].set()
        await third
        bus.publish_nowait(Ping(n=4))  # room again
        for i in range(5, 40):
            await bus.apublish(Ping(n=i))
            # never more than the queue plus the one being handled is outstanding
            assert i + 1 - len(delivered) <= 3
        await bus.drain()

    asyncio.run(main())
    assert delivered == list(range(40))
    assert bus.stats.delivered == 40
    bus.close()


def test_slow_consumer_throttles_a_fast_producer() -> None:
    bus = fs.EventBus(queue_size=4)
    delivered: list[int] = []
    lag: list[int] = []
    sent = 0

    async def slow(e: Ping) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        delivered.append(e.n)

    bus.subscribe(Ping, slow)

    async def main() -> None:
        nonlocal sent
        for i in range(300):
            await bus.apublish(Ping(n=i))
            sent += 1
            lag.append(sent - len(delivered))
        await bus.drain()

    asyncio.run(main())
    assert delivered == list(range(300))
    assert max(lag) <= 4 + 1
    bus.close()


def test_apublish_from_a_handler_never_deadlocks() -> None:
    """A handler that apublishes more events than the queue holds must not wait for itself."""
    bus = fs.EventBus(queue_size=1)
    got: list[int] = []

    async def fan_out(e: Ping) -> None:
        got.append(e.n)
        if e.n == 0:
            for i in range(1, 5):
                await bus.apublish(Ping(n=i))

    bus.subscribe(Ping, fan_out)

    async def main() -> None:
        await bus.apublish(Ping(n=0))
        # the timeout only turns a hang into a failure; a correct bus finishes at once
        await asyncio.wait_for(bus.drain(), timeout=5)

    try:
        asyncio.run(main())
    finally:
        bus.close()
    assert got == [0, 1, 2, 3, 4]


# -- history ----------------------------------------------------------------------------------


def test_history_is_a_bounded_ring() -> None:
    bus = fs.EventBus(history_size=3)
    events = [Ping(n=i) for i in range(5)] + [Pong(n=5)]
    for e in events:
        bus.publish(e)
    assert bus.history() == events[-3:]
    assert bus.history(Ping) == events[3:5]
    assert bus.history(Pong) == [events[5]]
    assert bus.stats.published == 6
    empty = fs.EventBus(history_size=0)
    empty.publish(Ping())
    assert empty.history() == []
    with pytest.raises(fs.ValidationError):
        fs.EventBus(history_size=-1)


# -- causation --------------------------------------------------------------------------------


def test_events_published_inside_handlers_are_linked(bus: fs.EventBus) -> None:
    def on_ping(e: Ping) -> None:
        assert fs.current_event() is e
        bus.publish(Pong(n=e.n))

    def on_pong(e: Pong) -> None:
        bus.publish(Pang(n=e.n))

    bus.subscribe(Ping, on_ping)
    bus.subscribe(Pong, on_pong)
    root = Ping(n=1)
    bus.publish(root)
    assert fs.current_event() is None
    (pong,) = bus.history(Pong)
    (pang,) = bus.history(Pang)
    assert root.causation_id is None and root.correlation_id is None
    assert pong.causation_id == root.id and pong.correlation_id == root.id
    assert pang.causation_id == pong.id and pang.correlation_id == root.id
    # publication order: a nested publish is delivered before the outer publish returns
    assert [type(e) for e in bus.history()] == [Ping, Pong, Pang]


def test_sync_publish_inside_an_async_handler(bus: fs.EventBus) -> None:
    """An async handler publishing an event with async handlers of its own (from plain code)."""
    seen: list[tuple[str, Any]] = []

    async def on_ping(e: Ping) -> None:
        bus.publish(Pong(n=e.n))

    async def on_pong(e: Pong) -> None:
        seen.append(("pong", e.causation_id))

    bus.subscribe(Ping, on_ping)
    bus.subscribe(Pong, on_pong)
    root = Ping(n=1)
    bus.publish(root)
    assert seen == [("pong", root.id)]
    assert bus.stats.failed == 0, bus.history(fs.HandlerFailed)


def test_causation_follows_tasks_spawned_by_async_handlers(bus: fs.EventBus) -> None:
    async def on_ping(e: Ping) -> None:
        async def child(i: int) -> None:
            await asyncio.sleep(0)
            await bus.apublish(Pong(n=i))

        await asyncio.gather(child(1), child(2))
        await asyncio.create_task(child(3))

    bus.subscribe(Ping, on_ping)

    async def main() -> Ping:
        root = Ping(n=0)
        await bus.apublish(root)
        await bus.drain()
        await bus.drain()  # the Pongs were queued while the root was handled
        return root

    root = asyncio.run(main())
    pongs = bus.history(Pong)
    assert sorted(p.n for p in pongs) == [1, 2, 3]
    assert all(p.causation_id == root.id and p.correlation_id == root.id for p in pongs)


def test_caused_by_context_manager() -> None:
    root = Ping(n=0)
    with fs.caused_by(root) as cause:
        assert cause is root and fs.current_event() is root
        child = Pong()
        with fs.caused_by(child):
            grandchild = Pang()
    assert fs.current_event() is None
    assert child.causation_id == root.id and child.correlation_id == root.id
    assert grandchild.causation_id == child.id and grandchild.correlation_id == root.id
    assert Pong().causation_id is None


# -- emit_events ------------------------------------------------------------------------------


@fs.emit_events
def double(x: int) -> int:
    return 2 * x


@fs.emit_events(name="custom.label")
def make_model(name: str) -> fs.ModelEntity:
    return fs.ModelEntity(name=name)


@fs.emit_events
def explode(msg: str) -> None:
    raise ValueError(msg)


@fs.emit_events
async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@fs.emit_events
async def aexplode(msg: str) -> None:
    await asyncio.sleep(0)
    raise LookupError(msg)


def test_emit_events_without_a_bus_just_runs(bus: fs.EventBus) -> None:
    assert active_bus() is None
    assert double(2) == 4
    assert asyncio.run(adouble(3)) == 6
    with pytest.raises(ValueError):
        explode("x")
    assert bus.history() == []


def test_emit_events_sync_started_completed(bus: fs.EventBus) -> None:
    t0 = time.perf_counter()
    with bus.activate():
        assert active_bus() is bus
        assert double(21) == 42
    elapsed = time.perf_counter() - t0
    assert active_bus() is None
    started, completed = bus.history()
    assert isinstance(started, fs.CallStarted) and isinstance(completed, fs.CallCompleted)
    assert started.function == completed.function == f"{__name__}.double"
    assert 0 <= completed.duration_s <= elapsed
    assert completed.result is None
    assert started.causation_id is None
    assert completed.causation_id == started.id and completed.correlation_id == started.id


def test_emit_events_result_ref_for_an_entity(bus: fs.EventBus) -> None:
    with bus.activate():
        model = make_model("tiny")
    started, completed = bus.history()
    assert started.function == "custom.label"
    assert isinstance(completed, fs.CallCompleted) and completed.result == model.ref


def test_emit_events_failed_reraises(bus: fs.EventBus) -> None:
    with bus.activate(), pytest.raises(ValueError, match="boom"):
        explode("boom")
    started, failed = bus.history()
    assert isinstance(failed, fs.CallFailed)
    assert failed.error_type == "ValueError" and failed.error_message == "boom"
    assert failed.duration_s >= 0 and failed.causation_id == started.id
    assert not bus.history(fs.CallCompleted)
    assert fs.current_event() is None  # the context was restored


def test_emit_events_async(bus: fs.EventBus) -> None:
    async def main() -> None:
        assert await adouble(5) == 10
        with pytest.raises(LookupError, match="gone"):
            await aexplode("gone")

    explicit = fs.emit_events(bus=bus)(adouble.__wrapped__)  # type: ignore[attr-defined]
    with bus.activate():
        asyncio.run(main())
    assert asyncio.run(explicit(1)) == 2  # an explicit bus needs no activation
    kinds = [(type(e).__name__, e.function) for e in bus.history()]  # type: ignore[attr-defined]
    assert kinds == [
        ("CallStarted", f"{__name__}.adouble"),
        ("CallCompleted", f"{__name__}.adouble"),
        ("CallStarted", f"{__name__}.aexplode"),
        ("CallFailed", f"{__name__}.aexplode"),
        ("CallStarted", f"{__name__}.adouble"),
        ("CallCompleted", f"{__name__}.adouble"),
    ]
    failed = bus.history(fs.CallFailed)[0]
    assert failed.error_type == "LookupError" and failed.error_message == "gone"


def test_emit_events_nesting_sync(bus: fs.EventBus) -> None:
    @fs.emit_events
    def outer() -> int:
        bus.publish(Ping(n=1))
        return double(1) + double(2)

    with bus.activate():
        assert outer() == 6
    events = bus.history()
    root = events[0]
    assert isinstance(root, fs.CallStarted) and root.function.endswith("outer")
    assert root.causation_id is None and root.correlation_id is None
    inner_started = bus.history(fs.CallStarted)[1:]
    assert len(inner_started) == 2
    for s in inner_started:
        assert s.causation_id == root.id and s.correlation_id == root.id
    ping = bus.history(Ping)[0]
    assert ping.causation_id == root.id
    completions = bus.history(fs.CallCompleted)
    assert completions[-1].causation_id == root.id  # outer's completion comes last
    assert all(e.correlation_id == root.id for e in events[1:])


def test_emit_events_nesting_across_await_tasks_and_gather(bus: fs.EventBus) -> None:
    @fs.emit_events
    async def leaf(i: int) -> int:
        await asyncio.sleep(0)
        return i

    @fs.emit_events
    async def root_fn() -> int:
        a = await leaf(0)
        task = asyncio.create_task(leaf(1))
        b, c = await asyncio.gather(leaf(2), leaf(3))
        return a + b + c + await task

    async def main() -> int:
        with bus.activate():
            return await root_fn()

    assert asyncio.run(main()) == 6
    starts = bus.history(fs.CallStarted)
    root = next(s for s in starts if s.function.endswith("root_fn"))
    leaves = [s for s in starts if s.function.endswith("leaf")]
    assert len(leaves) == 4
    for s in leaves:
        assert s.causation_id == root.id and s.correlation_id == root.id
    done = bus.history(fs.CallCompleted)
    by_cause = {d.causation_id: d for d in done}
    assert set(by_cause) == {s.id for s in starts}  # every call completed, linked to its start
    assert all(d.correlation_id == root.id for d in done)
    assert by_cause[root.id].function.endswith("root_fn")


def test_emit_events_inside_a_handler_uses_the_handlers_bus(bus: fs.EventBus) -> None:
    bus.subscribe(Ping, lambda e: double(e.n))
    root = Ping(n=4)
    bus.publish(root)  # no activate(): the handler runs with the bus active
    (started,) = bus.history(fs.CallStarted)
    (completed,) = bus.history(fs.CallCompleted)
    assert started.causation_id == root.id and started.correlation_id == root.id
    assert completed.causation_id == started.id and completed.correlation_id == root.id
    assert active_bus() is None


def test_emit_events_inside_async_handlers(bus: fs.EventBus) -> None:
    async def on_ping(e: Ping) -> None:
        assert await adouble(e.n) == 2 * e.n

    bus.subscribe(Ping, on_ping)
    first = Ping(n=1)
    bus.publish(first)  # from plain code: the handler runs on the bus's loop thread

    async def main() -> Ping:
        second = Ping(n=2)
        await bus.apublish(second)
        await bus.drain()
        return second

    second = asyncio.run(main())
    starts = bus.history(fs.CallStarted)
    assert [s.causation_id for s in starts] == [first.id, second.id]
    assert [c.causation_id for c in bus.history(fs.CallCompleted)] == [s.id for s in starts]


# -- inside a running loop (notebooks) --------------------------------------------------------


def test_sync_publish_inside_a_running_loop(bus: fs.EventBus) -> None:
    log: list[tuple[str, int]] = []

    async def a(e: Ping) -> None:
        await asyncio.sleep(0)
        log.append(("async", e.n))

    bus.subscribe(Ping, a)
    bus.subscribe(Ping, lambda e: log.append(("sync", e.n)))

    async def notebook_cell() -> None:
        loop = asyncio.get_running_loop()
        for i in range(3):
            bus.publish(Ping(n=i))
            assert log[-2:] == [("async", i), ("sync", i)]
        assert asyncio.get_running_loop() is loop
        with bus.activate():
            assert double(2) == 4
        bus.publish_nowait(Ping(n=3))
        await bus.drain()

    asyncio.run(notebook_cell())
    assert log == [(k, i) for i in range(4) for k in ("async", "sync")]
    assert len(bus.history(fs.CallCompleted)) == 1


def test_publish_from_several_threads_delivers_everything(bus: fs.EventBus) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def handler(e: Ping) -> None:
        with lock:
            seen.append(e.n)

    bus.subscribe(Ping, handler)
    barrier = threading.Barrier(4)

    def worker(k: int) -> None:
        barrier.wait(timeout=30)
        for i in range(250):
            bus.publish(Ping(n=k * 1000 + i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(k * 1000 + i for k in range(4) for i in range(250))
    for k in range(4):  # per producer, publication order is kept
        mine = [n for n in seen if n // 1000 == k]
        assert mine == sorted(mine)


# -- a property: delivery order ----------------------------------------------------------------

handler_spec = st.tuples(
    st.integers(-3, 3),  # priority
    st.sampled_from([Ping, SubPing, fs.Event]),  # subscribed type
    st.booleans(),  # even-n events only
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    handlers=st.lists(handler_spec, max_size=6),
    events=st.lists(st.sampled_from([Ping, SubPing, Pong]), max_size=12),
    mode=st.sampled_from(["publish", "apublish", "mixed", "mixed-publish"]),
)
def test_delivery_order_property(
    handlers: list[tuple[int, type[fs.Event], bool]],
    events: list[type[fs.Event]],
    mode: str,
) -> None:
    bus = fs.EventBus(queue_size=3)
    log: list[tuple[int, int]] = []
    for idx, (priority, etype, evens) in enumerate(handlers):

        def handler(e: Any, idx: int = idx) -> None:
            log.append((e.n, idx))

        async def ahandler(e: Any, idx: int = idx) -> None:
            log.append((e.n, idx))

        where = (lambda e: e.n % 2 == 0) if evens else None
        chosen = ahandler if (mode.startswith("mixed") and idx % 2) else handler
        bus.subscribe(etype, chosen, priority=priority, where=where)

    published = [cls(n=i) for i, cls in enumerate(events)]
    if mode in ("publish", "mixed-publish"):
        for e in published:
            bus.publish(e)
    else:

        async def main() -> None:
            for e in published:
                await bus.apublish(e)
            await bus.drain()

        asyncio.run(main())
    bus.close()

    expected = []
    for e in published:
        matching = [
            (priority, idx)
            for idx, (priority, etype, evens) in enumerate(handlers)
            if isinstance(e, etype) and (not evens or e.n % 2 == 0)
        ]
        matching.sort(key=lambda p: (-p[0], p[1]))
        expected.extend((e.n, idx) for _, idx in matching)
    assert log == expected
    assert bus.stats.delivered == len(expected) and bus.stats.failed == 0
