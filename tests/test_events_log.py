"""The persisted event log on every backend: outbox events, group commit, replay, projections."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import forseti as fs
from forseti.events import UnknownEventTopicError, new_event_id
from forseti.registry.eventlog import Projection, StoredEvent, to_record
from forseti.registry.records import EventRecord, TrackingUpdate, WriteBatch
from forseti.registry.urls import open_store

# -- event types ------------------------------------------------------------------------------


class StepDone(fs.Event, frozen=True):
    topic = "tests.events_log.StepDone"
    step: int
    loss: float = 0.0


class Note(fs.Event, frozen=True):
    topic = "tests.events_log.Note"
    text: str = ""


class Ephemeral(fs.Event, frozen=True):
    topic = "tests.events_log.Ephemeral"
    persist = False
    n: int = 0


# -- helpers ----------------------------------------------------------------------------------


class WriteSpy:
    """Records every ``store.write`` batch that went through, and lets a test wait for one."""

    def __init__(self, store: Any) -> None:
        self.batches: list[WriteBatch] = []
        self._cond = threading.Condition()
        self._orig = store.write
        store.write = self

    def __call__(self, batch: WriteBatch) -> Any:
        out = self._orig(batch)
        with self._cond:
            self.batches.append(batch)
            self._cond.notify_all()
        return out

    def event_batches(self) -> list[list[str]]:
        """The topics of the event-only batches (what the group-commit writer wrote)."""
        with self._cond:
            return [
                [e.topic for e in b.events]
                for b in self.batches
                if not b.versions and b.tracking is None and b.events
            ]

    def wait(self, pred: Callable[[], bool], timeout: float = 30) -> None:
        with self._cond:
            assert self._cond.wait_for(pred, timeout), "the writer did not write in time"


def open_registry(url: str, blob_dir: Path, **options: Any) -> fs.EntityRegistry:
    store, blobs = open_store(url, blob_dir)
    return fs.EntityRegistry(store, blobs, **options)


def topics(stored: Sequence[StoredEvent]) -> list[str]:
    return [s.event.topic for s in stored]


def steps(reg: fs.EntityRegistry) -> list[int]:
    return [s.event.step for s in reg.events(topic=StepDone)]  # type: ignore[attr-defined]


def record_all(reg: fs.EntityRegistry) -> list[fs.Event]:
    got: list[fs.Event] = []
    reg.bus.subscribe(fs.Event, got.append)
    return got


def assert_seqs_increase(stored: Sequence[StoredEvent]) -> None:
    seqs = [s.seq for s in stored]
    assert seqs == sorted(set(seqs)) and all(q > 0 for q in seqs), seqs


# -- registry events --------------------------------------------------------------------------


def test_registry_events_are_logged_in_commit_order_and_delivered(reg: fs.EntityRegistry) -> None:
    delivered = record_all(reg)
    m1 = reg.add(fs.ModelEntity(name="tiny", hidden_size=8))
    m2 = reg.commit(m1.evolve(hidden_size=16))
    a1 = reg.move_alias(m1.lineage_id, "prod", 1, expected_revision=None)
    a2 = reg.move_alias(m1.lineage_id, "prod", 2, expected_revision=a1.revision)
    assert (a1.revision, a2.revision) == (1, 2)

    logged = reg.events()
    assert_seqs_increase(logged)
    assert topics(logged) == [
        fs.EntityRegistered.topic,
        fs.EntityVersionCommitted.topic,
        fs.AliasMoved.topic,
        fs.AliasMoved.topic,
    ]
    reg_ev, commit_ev, moved1, moved2 = (s.event for s in logged)
    assert isinstance(reg_ev, fs.EntityRegistered)
    assert reg_ev.subject == m1.ref and reg_ev.entity_type == "forseti.Model"
    assert reg_ev.name == "tiny"
    assert isinstance(commit_ev, fs.EntityVersionCommitted)
    assert commit_ev.subject == m2.ref and commit_ev.previous == m1.ref
    assert commit_ev.version_id == m2.id and commit_ev.entity_type == "forseti.Model"
    assert isinstance(moved1, fs.AliasMoved) and isinstance(moved2, fs.AliasMoved)
    assert (moved1.alias, moved1.revision, moved1.previous, moved1.subject) == (
        "prod", 1, None, m1.ref,
    )  # fmt: skip
    assert (moved2.alias, moved2.revision, moved2.previous, moved2.subject) == (
        "prod", 2, m1.ref, m2.ref,
    )  # fmt: skip
    # the bus delivered exactly the logged events, in the same order
    assert delivered == [s.event for s in logged]


def test_commit_many_writes_given_events_with_the_versions(reg: fs.EntityRegistry) -> None:
    delivered = record_all(reg)
    a = fs.ModelEntity(name="a")
    b = fs.DatasetEntity(name="b", num_examples=3)
    note = Note(text="imported", subject=a.ref)
    reg.commit_many([a, b], op_id="import-1", events=[note])
    logged = reg.events()
    assert topics(logged) == [fs.EntityRegistered.topic] * 2 + [Note.topic]
    assert [s.event.subject for s in logged] == [a.ref, b.ref, a.ref]
    assert all(s.event.op_id == "import-1" for s in logged[:2])  # type: ignore[attr-defined]
    assert logged[2].event == note
    assert delivered == [s.event for s in logged]


def test_event_filters(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="m"))
    d = reg.add(fs.DatasetEntity(name="d", num_examples=1))
    m2 = reg.commit(m.evolve(hidden_size=2))
    m3 = reg.commit(m2.evolve(hidden_size=3))
    reg.bus.publish(StepDone(step=1, subject=m3.ref))
    reg.bus.publish(StepDone(step=2))
    everything = reg.events()
    assert len(everything) == 6
    assert_seqs_increase(everything)

    assert topics(reg.events(topic=fs.EntityRegistered)) == [fs.EntityRegistered.topic] * 2
    assert reg.events(topic=fs.EntityRegistered.topic) == reg.events(topic=fs.EntityRegistered)
    assert steps(reg) == [1, 2]
    assert reg.events(topic="tests.events_log.nothing") == []

    about_m = reg.events(subject=m.lineage_id)
    assert [s.event.subject for s in about_m] == [m.ref, m2.ref, m3.ref, m3.ref]
    assert reg.events(subject=str(m.lineage_id)) == about_m
    assert [s.event.subject for s in reg.events(subject=d.lineage_id)] == [d.ref]
    exact = reg.events(subject=m3.ref)
    assert [type(s.event) for s in exact] == [fs.EntityVersionCommitted, StepDone]
    assert reg.events(subject=m3.ref, limit=1) == exact[:1]
    assert reg.events(subject=m.lineage_id, topic=StepDone) == exact[1:]

    third = everything[2].seq
    assert reg.events(since_seq=third) == everything[3:]
    assert reg.events(since_seq=everything[-1].seq) == []
    assert reg.events(limit=2) == everything[:2]
    assert reg.events(since_seq=everything[0].seq, limit=2) == everything[1:3]
    assert reg.events(since_seq=everything[0].seq, subject=m.lineage_id, limit=2) == about_m[1:3]

    for bad in (
        {"since_seq": -1},
        {"since_seq": True},
        {"limit": 0},
        {"topic": 3},
        {"subject": "not-a-uuid"},
    ):
        with pytest.raises(fs.ValidationError):
            reg.events(**bad)  # type: ignore[arg-type]


# -- published events: the group-commit writer ------------------------------------------------


def test_published_events_are_persisted_and_delivered(reg: fs.EntityRegistry) -> None:
    delivered = record_all(reg)
    for i in range(5):
        reg.bus.publish(StepDone(step=i, loss=1.0 / (i + 1)))
    reg.bus.publish(Ephemeral(n=1))  # persist = False: delivered, never logged
    reg.flush_events()
    assert reg.flush_events() == 0  # nothing left
    logged = [s.event for s in reg.events()]
    assert [e.step for e in logged] == list(range(5))  # type: ignore[attr-defined]
    assert logged == delivered[:5]
    assert isinstance(delivered[5], Ephemeral)
    assert reg.events(topic=Ephemeral) == []


def test_events_of_handlers_and_failures_are_logged_with_causation(reg: fs.EntityRegistry) -> None:
    def on_registered(e: fs.EntityRegistered) -> None:
        reg.bus.publish(Note(text="welcome", subject=e.subject))

    def broken(e: Note) -> None:
        raise RuntimeError("handler bug")

    reg.bus.subscribe(fs.EntityRegistered, on_registered)
    reg.bus.subscribe(Note, broken)
    m = reg.add(fs.ModelEntity(name="m"))
    logged = [s.event for s in reg.events()]
    registered, note, failure = logged
    assert isinstance(registered, fs.EntityRegistered) and registered.subject == m.ref
    assert isinstance(note, Note) and note.causation_id == registered.id
    assert note.correlation_id == registered.id
    assert isinstance(failure, fs.HandlerFailed)
    assert failure.event_id == note.id and failure.error_message == "handler bug"
    assert failure.causation_id == note.id and failure.correlation_id == registered.id
    assert reg.bus.stats.failed == 1


def test_group_commit_every_batch_size_events(store_url: str, tmp_path: Path) -> None:
    store, blobs = open_store(store_url, tmp_path / "blobs")
    spy = WriteSpy(store)
    reg = fs.EntityRegistry(store, blobs, event_batch_size=3, event_interval=3600)
    try:
        reg.bus.publish(StepDone(step=0))
        reg.bus.publish(StepDone(step=1))
        # below the batch size and long before the interval: nothing written yet
        assert store.read_events(topic=StepDone.topic) == []
        assert spy.event_batches() == []
        reg.bus.publish(StepDone(step=2))  # the third event triggers a group commit
        spy.wait(lambda: len(spy.event_batches()) == 1)
        assert spy.event_batches() == [[StepDone.topic] * 3]
        assert [r.seq for r in store.read_events(topic=StepDone.topic)] == [1, 2, 3]
    finally:
        reg.close()


def test_group_commit_after_the_interval(store_url: str, tmp_path: Path) -> None:
    store, blobs = open_store(store_url, tmp_path / "blobs")
    spy = WriteSpy(store)
    reg = fs.EntityRegistry(store, blobs, event_batch_size=10_000, event_interval=0.02)
    try:
        reg.bus.publish(StepDone(step=0))
        # no flush: the writer commits a partial batch once the interval passed
        spy.wait(lambda: spy.event_batches() != [])
        assert spy.event_batches() == [[StepDone.topic]]
        assert len(store.read_events(topic=StepDone.topic)) == 1
    finally:
        reg.close()


def test_close_flushes_buffered_events(store_url: str, tmp_path: Path) -> None:
    store, blobs = open_store(store_url, tmp_path / "blobs")
    spy = WriteSpy(store)
    reg = fs.EntityRegistry(store, blobs, event_batch_size=10_000, event_interval=3600)
    for i in range(50):
        reg.bus.publish(StepDone(step=i))
    assert spy.event_batches() == []
    reg.close()
    reg.close()  # idempotent
    written = [t for batch in spy.event_batches() for t in batch]
    assert written == [StepDone.topic] * 50
    with pytest.raises(fs.StoreClosedError):
        reg.events()
    with pytest.raises(fs.StoreClosedError):
        reg.bus.publish(StepDone(step=99))
    if not store_url.startswith("memory"):
        with fs.open(store_url, blob_dir=tmp_path / "blobs") as again:
            assert steps(again) == list(range(50))


def test_concurrent_publishers_lose_nothing_and_keep_their_order(reg: fs.EntityRegistry) -> None:
    publishers, per_publisher = 4, 150
    barrier = threading.Barrier(publishers + 1)

    def publish(k: int) -> None:
        barrier.wait(timeout=30)
        for i in range(per_publisher):
            reg.bus.publish(StepDone(step=k * 1000 + i))

    threads = [threading.Thread(target=publish, args=(k,)) for k in range(publishers)]
    for t in threads:
        t.start()
    barrier.wait(timeout=30)
    while any(t.is_alive() for t in threads):
        reg.flush_events()  # flushing while others publish and the writer thread writes
        assert len(reg.events(topic=StepDone, limit=5)) <= 5
    for t in threads:
        t.join()
    logged = steps(reg)
    assert sorted(logged) == sorted(k * 1000 + i for k in range(publishers)
                                    for i in range(per_publisher))  # fmt: skip
    for k in range(publishers):  # one publisher's events are logged in publication order
        mine = [n for n in logged if n // 1000 == k]
        assert mine == sorted(mine)
    assert_seqs_increase(reg.events())


CRASHING_CHILD = """
import os, sys
import forseti as fs
from forseti.registry.urls import open_store

class StepDone(fs.Event, frozen=True):
    topic = "tests.events_log.StepDone"
    step: int
    loss: float = 0.0

store, blobs = open_store(sys.argv[1], sys.argv[2])
reg = fs.EntityRegistry(store, blobs, event_batch_size=10, event_interval=3600)
m = reg.add(fs.ModelEntity(name="crashy"))
print(m.lineage_id, flush=True)
for i in range(25):
    reg.bus.publish(StepDone(step=i))
    if i % 5 == 4:
        m = reg.commit(m.evolve(hidden_size=i))
os._exit(0)  # a crash: no close(), no flush
"""


def test_a_crash_loses_only_the_unflushed_tail_of_step_events(
    persistent_url: str, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, persistent_url, str(blob_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    lineage = UUID(child.stdout.split()[0])
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        versions = reg.history(lineage)
        assert len(versions) == 6
        about = reg.events(subject=lineage)
        registered = [s.event for s in about if isinstance(s.event, fs.EntityRegistered)]
        committed = [s.event for s in about if isinstance(s.event, fs.EntityVersionCommitted)]
        # every committed version has its event: they were written in the same transaction
        assert [e.subject for e in registered] == [versions[0].ref]
        assert [e.version_id for e in committed] == [v.id for v in versions[1:]]
        # step events: what survived is a prefix, without holes
        survived = steps(reg)
        assert survived == list(range(len(survived)))
        assert len(survived) <= 25


def test_registry_constructor_validates_writer_options(tmp_path: Path) -> None:
    for options in ({"event_batch_size": 0}, {"event_interval": 0}):
        store, blobs = open_store("memory://", None)
        with pytest.raises(fs.ValidationError):
            fs.EntityRegistry(store, blobs, **options)


def test_a_republished_event_does_not_jam_the_log(store_url: str, tmp_path: Path) -> None:
    """Publishing an event twice (or forwarding a logged one) must not block later events."""
    reg = fs.open(store_url, blob_dir=tmp_path / "blobs")
    try:
        m = reg.add(fs.ModelEntity(name="m"))
        (registered,) = [s.event for s in reg.events()]
        note = Note(text="twice")
        with contextlib.suppress(fs.ValidationError):
            reg.bus.publish(registered)  # forwarding an event the outbox already logged
        reg.bus.publish(note)
        with contextlib.suppress(fs.ValidationError):
            reg.bus.publish(note)
        reg.bus.publish(StepDone(step=1))
        logged = reg.events()  # must not raise
        ids = [s.event.id for s in logged]
        assert len(ids) == len(set(ids)), "an event id was logged twice"
        assert registered.id in ids and note.id in ids
        assert steps(reg) == [1]
        assert reg.get(m.lineage_id).version == 1
        reg.bus.publish(StepDone(step=2))
        reg.close()  # flushes without raising
    finally:
        with contextlib.suppress(Exception):
            reg.close()
    if not store_url.startswith("memory"):
        with fs.open(store_url, blob_dir=tmp_path / "blobs") as again:
            assert steps(again) == [1, 2]


def test_an_ill_typed_event_does_not_poison_the_log(reg: fs.EntityRegistry) -> None:
    """An event whose fields do not match its types is refused, or at least never breaks reads."""
    with contextlib.suppress(fs.ValidationError):
        reg.bus.publish(StepDone(step="not an int"))  # type: ignore[arg-type]
    m = fs.ModelEntity(name="m")
    with contextlib.suppress(fs.ValidationError):
        reg.commit_many([m], events=[StepDone(step=None)])  # type: ignore[arg-type]
    reg.bus.publish(StepDone(step=2))
    assert steps(reg) == [2]
    assert reg.run_projection(CountSteps(add_counter(reg))).processed == 1


def test_a_strict_bus_still_delivers_every_committed_event(tmp_path: Path) -> None:
    store, blobs = open_store("memory://")
    reg = fs.EntityRegistry(store, blobs, bus=fs.EventBus(strict=True))
    seen: list[str | None] = []

    def broken(e: fs.EntityRegistered) -> None:
        raise ValueError("handler bug")

    reg.bus.subscribe(fs.EntityRegistered, broken, priority=1)
    reg.bus.subscribe(fs.EntityRegistered, lambda e: seen.append(e.name))
    a, b = fs.ModelEntity(name="a"), fs.ModelEntity(name="b")
    try:
        with contextlib.suppress(ExceptionGroup):  # strict may report the handler's failure
            reg.commit_many([a, b])
        assert reg.get(a.lineage_id).name == "a" and reg.get(b.lineage_id).name == "b"
        assert seen == ["a", "b"], "an event of a durable commit was never delivered"
    finally:
        reg.close()


# -- outbox atomicity ---------------------------------------------------------------------------


def snapshot(reg: fs.EntityRegistry) -> list[StoredEvent]:
    return reg.events()


def test_commit_with_a_duplicate_event_writes_nothing(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="m"))
    before = snapshot(reg)
    delivered = record_all(reg)
    draft = m.evolve(hidden_size=2)
    dup = Note(text="twice", subject=draft.ref)
    with pytest.raises(fs.ValidationError):
        reg.commit_many([draft], events=[dup, dup])
    assert reg.get(m.lineage_id).version == 1
    assert len(reg.history(m.lineage_id)) == 1
    with pytest.raises(fs.NotFoundError):
        reg.get_by_id(draft.id)
    assert snapshot(reg) == before
    assert delivered == []
    # the same draft commits cleanly afterwards
    assert reg.commit(draft).version == 2
    assert topics(snapshot(reg)[len(before):]) == [fs.EntityVersionCommitted.topic]


def test_new_lineage_with_an_already_logged_event_writes_nothing(reg: fs.EntityRegistry) -> None:
    logged = Note(text="already")
    reg.bus.publish(logged)
    reg.flush_events()
    before = snapshot(reg)
    delivered = record_all(reg)
    fresh = fs.ModelEntity(name="fresh")
    other = fs.DatasetEntity(name="other", num_examples=1)
    with pytest.raises(fs.ValidationError):
        reg.commit_many([fresh, other], events=[Note(text="new"), logged])
    for e in (fresh, other):
        with pytest.raises(fs.NotFoundError):
            reg.get(e.lineage_id)
    assert reg.find(fs.ModelEntity, name="fresh") == []
    assert snapshot(reg) == before
    assert delivered == []


def test_failed_occ_commit_writes_no_event(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="m"))
    delivered = record_all(reg)
    winner = reg.commit(m.evolve(hidden_size=2))
    loser = m.evolve(hidden_size=3)
    with pytest.raises(fs.ConflictError):
        reg.commit_many([loser], events=[Note(text="should not be logged")])
    committed = reg.events(topic=fs.EntityVersionCommitted)
    assert [s.event.subject for s in committed] == [winner.ref]
    assert reg.events(topic=Note) == []
    assert [type(e) for e in delivered] == [fs.EntityVersionCommitted]


def test_failed_alias_move_writes_no_event(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="m"))
    reg.commit(m.evolve(hidden_size=2))
    reg.move_alias(m.lineage_id, "prod", 1, expected_revision=None)
    delivered = record_all(reg)
    with pytest.raises(fs.ConflictError):
        reg.move_alias(m.lineage_id, "prod", 2, expected_revision=None)
    with pytest.raises(fs.ConflictError):
        reg.move_alias(m.lineage_id, "prod", 2, expected_revision=7)
    with pytest.raises(fs.NotFoundError):
        reg.move_alias(m.lineage_id, "prod", 9, expected_revision=1)
    assert len(reg.events(topic=fs.AliasMoved)) == 1
    assert reg.alias(m.lineage_id, "prod").version == 1
    assert delivered == []


def test_tracking_conflict_rolls_back_versions_and_events(reg: fs.EntityRegistry) -> None:
    m = reg.add(fs.ModelEntity(name="m"))
    before = snapshot(reg)
    draft = m.evolve(hidden_size=2)
    with pytest.raises(fs.ConflictError):
        reg.commit_many(
            [draft], events=[Note()], tracking=TrackingUpdate("consumer", expected=5, last_seq=6)
        )
    assert reg.get(m.lineage_id).version == 1
    assert snapshot(reg) == before
    assert reg.store.get_tracking("consumer") is None


# -- replay ------------------------------------------------------------------------------------


def test_replay_after_restart(persistent_url: str, tmp_path: Path) -> None:
    blob_dir = tmp_path / "blobs"
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        reg.bus.subscribe(
            fs.EntityVersionCommitted, lambda e: reg.bus.publish(Note(text="reacted"))
        )
        m = reg.add(fs.ModelEntity(name="m"))
        reg.commit(m.evolve(hidden_size=4))
        reg.move_alias(m.lineage_id, "best", 2, expected_revision=None)
        for i in range(20):
            reg.bus.publish(StepDone(step=i, loss=i / 7, subject=m.ref))
        before = reg.events()
        reg.bus.publish(StepDone(step=20))  # buffered only: close() must flush it
    assert len(before) == 3 + 1 + 20

    with fs.open(persistent_url, blob_dir=blob_dir) as again:
        after = again.events()
        assert after[: len(before)] == before
        # outbox events are logged at commit; the handler's Note goes through the writer
        assert [type(s.event) for s in after[:4]] == [
            fs.EntityRegistered, fs.EntityVersionCommitted, fs.AliasMoved, Note,
        ]  # fmt: skip
        note = after[3].event
        assert note.causation_id == after[1].event.id
        assert after[-1].event == StepDone(
            step=20, id=after[-1].event.id, timestamp=after[-1].event.timestamp
        )
        assert len(after) == len(before) + 1
        assert_seqs_increase(after)
        # a new registry appends after what is there
        again.bus.publish(StepDone(step=21))
        last = again.events(since_seq=after[-1].seq)
        assert [s.event.step for s in last] == [21]  # type: ignore[attr-defined]


def test_unknown_topic_in_the_log_fails_clearly(reg: fs.EntityRegistry) -> None:
    reg.bus.publish(StepDone(step=1))
    reg.flush_events()
    reg.store.write(
        WriteBatch(
            events=[
                EventRecord(
                    event_id=new_event_id(),
                    topic="tests.events_log.NeverDefined",
                    payload=b"\x80",
                    recorded_at=datetime.now(UTC),
                )
            ]
        )
    )
    with pytest.raises(UnknownEventTopicError, match="NeverDefined"):
        reg.events()
    assert steps(reg) == [1]  # filtered reads that skip it still work


def test_corrupt_payload_is_an_integrity_error(reg: fs.EntityRegistry) -> None:
    rec = to_record(StepDone(step=1))
    reg.store.write(WriteBatch(events=[EventRecord(rec.event_id, rec.topic, b"\xc1junk",
                                                   rec.recorded_at)]))  # fmt: skip
    with pytest.raises(fs.IntegrityError):
        reg.events()


# -- projections --------------------------------------------------------------------------------


class Boom(Exception):
    pass


class CountSteps(Projection):
    """Appends each step to a counter entity: one committed version per event."""

    name = "count-steps"
    topics = (StepDone,)

    def __init__(
        self, counter: Any, fail_at: int | None = None, first_apply: Callable[[], None] | None = None
    ) -> None:
        self.counter = counter
        self.fail_at = fail_at
        self.first_apply = first_apply
        self.applied: list[int] = []

    def apply(self, event: fs.Event, registry: fs.EntityRegistry) -> list[fs.Entity]:
        assert isinstance(event, StepDone)
        if self.first_apply is not None:
            hook, self.first_apply = self.first_apply, None
            hook()
        if event.step == self.fail_at:
            raise Boom(f"crash at step {event.step}")
        self.applied.append(event.step)
        head = registry.get(self.counter)
        return [head.evolve(params={"seen": [*head.params["seen"], event.step]})]


def seen_steps(reg: fs.EntityRegistry, counter: Any) -> list[int]:
    return list(reg.get(counter).params["seen"])  # type: ignore[attr-defined]


def add_counter(reg: fs.EntityRegistry) -> Any:
    return reg.add(fs.ConfigEntity(name="counter", params={"seen": []})).lineage_id


def test_projection_processes_each_event_once(reg: fs.EntityRegistry) -> None:
    counter = add_counter(reg)
    for i in range(5):
        reg.bus.publish(StepDone(step=i))
    reg.bus.publish(Note(text="ignored"))
    report = reg.run_projection(CountSteps(counter))
    assert (report.name, report.processed, report.committed_versions) == ("count-steps", 5, 5)
    assert seen_steps(reg, counter) == [0, 1, 2, 3, 4]
    assert report.last_seq == reg.store.get_tracking("count-steps")
    assert report.last_seq >= reg.events(topic=Note)[0].seq
    again = reg.run_projection(CountSteps(counter))
    assert (again.processed, again.committed_versions) == (0, 0)
    for i in range(5, 8):
        reg.bus.publish(StepDone(step=i))
    third = reg.run_projection(CountSteps(counter), batch_size=2)
    assert third.processed == 3
    assert seen_steps(reg, counter) == list(range(8))
    # the projection's own commits are in the log too, and were not fed back to it
    assert len(reg.events(topic=fs.EntityVersionCommitted, subject=counter)) == 8


def test_projection_needs_a_name(reg: fs.EntityRegistry) -> None:
    class Nameless(Projection):
        def apply(self, event: fs.Event, registry: fs.EntityRegistry) -> list[fs.Entity]:
            return []

    with pytest.raises(fs.ValidationError):
        reg.run_projection(Nameless())


def test_projection_exactly_once_across_restarts(persistent_url: str, tmp_path: Path) -> None:
    blob_dir = tmp_path / "blobs"
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        counter = add_counter(reg)
        for i in range(5):
            reg.bus.publish(StepDone(step=i))
        assert reg.run_projection(CountSteps(counter)).processed == 5
        for i in range(5, 9):
            reg.bus.publish(StepDone(step=i))  # buffered: flushed by close()
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        projection = CountSteps(counter)
        report = reg.run_projection(projection)
        assert projection.applied == [5, 6, 7, 8]
        assert report.processed == 4
        assert seen_steps(reg, counter) == list(range(9))
    with fs.open(persistent_url, blob_dir=blob_dir) as reg:
        assert reg.run_projection(CountSteps(counter)).processed == 0
        assert seen_steps(reg, counter) == list(range(9))


def test_projection_resumes_after_a_crash(reg: fs.EntityRegistry) -> None:
    counter = add_counter(reg)
    for i in range(10):
        reg.bus.publish(StepDone(step=i))
    with pytest.raises(Boom):
        reg.run_projection(CountSteps(counter, fail_at=4))
    assert seen_steps(reg, counter) == [0, 1, 2, 3]
    step3 = next(s for s in reg.events(topic=StepDone) if s.event.step == 3)  # type: ignore[attr-defined]
    assert reg.store.get_tracking("count-steps") == step3.seq
    projection = CountSteps(counter)
    report = reg.run_projection(projection)
    assert projection.applied == list(range(4, 10))
    assert report.processed == 6
    assert seen_steps(reg, counter) == list(range(10))


def test_racing_projection_runners_never_double_apply(
    persistent_url: str, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    with fs.open(persistent_url, blob_dir=blob_dir) as setup:
        counter = add_counter(setup)
        for i in range(12):
            setup.bus.publish(StepDone(step=i))
    regs = [fs.open(persistent_url, blob_dir=blob_dir) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[Any] = [None, None]

    def runner(k: int) -> None:
        # both runners have read the tracking row and the first event before either commits
        projection = CountSteps(counter, first_apply=lambda: barrier.wait(timeout=30))
        try:
            outcomes[k] = (regs[k].run_projection(projection), projection.applied)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcomes[k] = exc

    try:
        threads = [threading.Thread(target=runner, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        conflicts = [o for o in outcomes if isinstance(o, fs.ConflictError)]
        reports = [o for o in outcomes if isinstance(o, tuple)]
        assert len(conflicts) == 1 and len(reports) == 1, outcomes
        report, applied = reports[0]
        assert report.processed == 12 and applied == list(range(12))
        assert seen_steps(regs[0], counter) == list(range(12))
        assert regs[0].run_projection(CountSteps(counter)).processed == 0
        assert regs[1].run_projection(CountSteps(counter)).processed == 0
        assert seen_steps(regs[1], counter) == list(range(12))
    finally:
        for r in regs:
            r.close()


# -- ordering for tailing readers ---------------------------------------------------------------


def test_a_tailing_reader_never_skips_a_row(reg: fs.EntityRegistry) -> None:
    writers, per_writer = 4, 40
    barrier = threading.Barrier(writers + 1)
    seen: list[Any] = []
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(per_writer):
                events = [to_record(StepDone(step=k * 1000 + i * 2 + j)) for j in range(2)]
                reg.store.write(WriteBatch(events=events))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    barrier.wait(timeout=30)
    cursor = 0
    finished = False
    while True:
        if not finished and not any(t.is_alive() for t in threads):
            finished = True  # one more read after every writer is done
        batch = reg.store.read_events(since_seq=cursor)
        seen.extend(batch)
        if batch:
            cursor = batch[-1].seq
        elif finished:
            break
    for t in threads:
        t.join()
    assert errors == []
    expected = {k * 1000 + i for k in range(writers) for i in range(per_writer * 2)}
    steps_seen = [s.event.step for s in reg.events()]  # type: ignore[attr-defined]
    assert sorted(steps_seen) == sorted(expected)
    # the tailer saw every row exactly once, in seq order, without gaps
    seqs = [r.seq for r in seen]
    assert seqs == list(range(1, len(expected) + 1))
    # events of one batch are adjacent and in batch order
    by_seq = {s.seq: s.event.step for s in reg.events()}  # type: ignore[attr-defined]
    for q in range(1, len(expected) + 1, 2):
        assert by_seq[q + 1] == by_seq[q] + 1


# -- isolation, notebooks ----------------------------------------------------------------------


def test_registries_have_their_own_buses(tmp_path: Path) -> None:
    one = fs.open("memory://")
    two = fs.open(f"sqlite:///{tmp_path / 'two.db'}", blob_dir=tmp_path / "blobs")
    try:
        assert one.bus is not two.bus
        seen_one = record_all(one)
        seen_two = record_all(two)
        one.add(fs.ModelEntity(name="one"))
        assert [type(e) for e in seen_one] == [fs.EntityRegistered] and seen_two == []
        one.close()
        with pytest.raises(fs.StoreClosedError):
            one.bus.publish(Note())
        m = two.add(fs.ModelEntity(name="two"))
        two.bus.publish(Note(text="still here"))
        assert [type(e) for e in seen_two] == [fs.EntityRegistered, Note]
        assert len(seen_one) == 1
        assert topics(two.events()) == [fs.EntityRegistered.topic, Note.topic]
        assert two.events()[0].event.subject == m.ref
    finally:
        one.close()
        two.close()


def test_registry_inside_a_running_loop(reg: fs.EntityRegistry) -> None:
    got: list[tuple[str, Any]] = []

    async def async_handler(e: fs.EntityRegistered) -> None:
        await asyncio.sleep(0)
        got.append(("async", e.subject))

    reg.bus.subscribe(fs.EntityRegistered, async_handler)
    reg.bus.subscribe(fs.EntityRegistered, lambda e: got.append(("sync", e.subject)))

    async def notebook_cell() -> None:
        counter = add_counter(reg)
        m = reg.add(fs.ModelEntity(name="m"))
        for i in range(3):
            await reg.bus.apublish(StepDone(step=i))
        reg.bus.publish(StepDone(step=3))
        await reg.bus.drain()
        assert steps(reg) == [0, 1, 2, 3]
        assert reg.run_projection(CountSteps(counter)).processed == 4
        assert seen_steps(reg, counter) == [0, 1, 2, 3]
        assert [ref for kind, ref in got if kind == "sync"][-1] == m.ref

    asyncio.run(notebook_cell())
    assert [kind for kind, _ in got] == ["async", "sync", "async", "sync"]


def test_apublish_backpressure_on_a_registry_bus_loses_no_step_event(
    reg: fs.EntityRegistry,
) -> None:
    gate_box: dict[str, asyncio.Event] = {}
    handled: list[int] = []

    async def slow(e: StepDone) -> None:
        await gate_box["gate"].wait()
        handled.append(e.step)

    reg.bus.subscribe(StepDone, slow)

    async def main() -> None:
        gate_box["gate"] = asyncio.Event()
        producer = asyncio.create_task(produce())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not producer.done()  # blocked by the full queue (1000 events)
        gate_box["gate"].set()
        await producer
        await reg.bus.drain()

    async def produce() -> None:
        for i in range(1010):
            await reg.bus.apublish(StepDone(step=i))

    asyncio.run(main())
    assert handled == list(range(1010))
    assert steps(reg) == list(range(1010))
