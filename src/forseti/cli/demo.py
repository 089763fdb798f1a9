"""``forseti tour``: a tour of the registry (entities, provenance, aliases, conflicts, events,
operations), checking its own claims as it goes."""

from __future__ import annotations

import argparse
import json
import struct
import threading

import forseti as fs

from ..entities import Entity, utcnow
from ..errors import ConflictError, NotFoundError
from .output import Printer, blob_location, blob_root, fmt, history_table, kind, label

__all__ = ["run_tour", "DemoFailure"]

_DEMO_PREFIX = "demo-"


class DemoStepCompleted(fs.Event, frozen=True):
    """One step of the demo's fine-tuning loop."""

    topic = "forseti.demo.StepCompleted"
    step: int
    loss: float


class DemoFailure(Exception):
    """The library did not behave as the demo shows it does."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise DemoFailure(what)


def _demo_number(reg: fs.EntityRegistry) -> int:
    """1 + the highest demo number already used in this store."""
    highest = 0
    for ds in reg.find(fs.DatasetEntity):
        head, _, rest = ds.name.partition(_DEMO_PREFIX)
        number = rest.split("-", 1)[0]
        if not head and number.isdigit():
            highest = max(highest, int(number))
    return highest + 1


def _toy_dataset(n_examples: int) -> bytes:
    """JSON lines of toy arithmetic problems (the dataset's content)."""
    lines = []
    for i in range(n_examples):
        a, b = i % 10, (i * 7) % 10
        lines.append(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}))
    return ("\n".join(lines) + "\n").encode()


def _toy_safetensors(seed: int) -> bytes:
    """A tiny weights file in the safetensors layout, built by hand (no torch needed).

    The layout: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
    shape and byte range, then the raw tensor bytes.
    """
    values = [((seed * 31 + i * 7) % 17) / 17.0 for i in range(4 * 8)]
    data = struct.pack(f"<{len(values)}f", *values)
    header = {
        "__metadata__": {"format": "pt", "producer": "forseti demo"},
        "embed.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, len(data)]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def run_tour(args: argparse.Namespace, out: Printer) -> int:
    with fs.open(args.url) as reg:
        return _demo(reg, out)


def _demo(reg: fs.EntityRegistry, out: Printer) -> int:  # noqa: PLR0915 - a script, top to bottom
    n = _demo_number(reg)
    p = f"{_DEMO_PREFIX}{n}"
    out.title(f"Forseti tour #{n}")
    out.line(f"Store: {reg.url}")
    out.line(
        f"This run's entities are named {p}-*; each run of the demo adds fresh ones "
        f"(numbered by a counter kept in the store), so it can be run again."
    )

    # 1. inputs ---------------------------------------------------------------------------
    out.section("1. Register a dataset, a config and a model")
    content = _toy_dataset(200)
    data_blob = reg.put_blob(content, format="jsonl")
    dataset = reg.add(
        fs.DatasetEntity(
            name=f"{p}-dataset",
            format="jsonl",
            num_examples=200,
            size_bytes=len(content),
            splits={"train": 180, "test": 20},
            data=data_blob,
            description="toy arithmetic problems",
        )
    )
    config = reg.add(
        fs.ConfigEntity(
            name=f"{p}-config",
            params={"learning_rate": 3e-4, "batch_size": 16, "total_steps": 100},
        )
    )
    model = reg.add(
        fs.ModelEntity(
            name=f"{p}-model", architecture="tiny-transformer", hidden_size=64, num_layers=2,
            vocab_size=256,
        )
    )
    out.line(f"  dataset  {dataset.name} v1: 200 examples, content stored as a blob")
    out.line(f"  config   {config.name} v1: {fmt(reg, config.params)}")
    out.line(f"  model    {model.name} v1: hidden_size=64, num_layers=2, vocab_size=256")

    # 2. run ------------------------------------------------------------------------------
    out.section("2. Start a training run that references them")
    run = reg.add(
        fs.TrainingRunEntity(
            name=f"{p}-run",
            algorithm="sft",
            model=model.ref,
            config=config.ref,
            dataset=dataset.ref,
            status="running",
            total_steps=100,
            started_at=utcnow(),
        )
    )
    out.line(f"  run      {run.name} v1: status=running, inputs: model v1, config v1, dataset v1")

    # 3. evolve the model -------------------------------------------------------------------
    out.section("3. Evolve the model twice (each commit adds a version; old ones never change)")
    model_v2 = reg.commit(model.evolve(hidden_size=128))
    out.line(f"  model v{model_v2.version}: hidden_size 64 -> 128")
    weights = reg.put_blob(_toy_safetensors(n), format="safetensors")
    model_v3 = reg.commit(
        model_v2.evolve(weights=weights, num_parameters=32, derived_from=(run.ref,))
    )
    out.line(
        f"  model v{model_v3.version}: weights attached ({fmt(reg, weights)}), "
        f"derived from run v{run.version}"
    )
    _check(model.hidden_size == 64, "version 1 was changed by evolve()")

    # 4. finish the run, checkpoint --------------------------------------------------------
    out.section("4. Finish the run and record a checkpoint")
    run_v2 = reg.commit(
        run.evolve(status="completed", step=100, finished_at=utcnow(), metrics={"loss": 0.42})
    )
    checkpoint = reg.add(
        fs.CheckpointEntity(
            run=run_v2.ref, model=model_v3.ref, step=100, weights=weights, metrics={"loss": 0.42}
        )
    )
    out.line(f"  run v{run_v2.version}: status=completed, step 100/100, loss 0.42")
    out.line(f"  checkpoint v1: step 100, run v{run_v2.version}, model v{model_v3.version}")

    # 5. alias by compare-and-set ---------------------------------------------------------
    out.section("5. Point a 'production' alias at the model, by compare-and-set")
    alias = reg.move_alias(model.lineage_id, "production", 2, expected_revision=None)
    out.line(f"  created:  production -> v{alias.version} (revision {alias.revision})")
    alias = reg.move_alias(model.lineage_id, "production", 3, expected_revision=alias.revision)
    out.line(f"  moved:    production -> v{alias.version} (revision {alias.revision})")
    try:
        reg.move_alias(model.lineage_id, "production", 2, expected_revision=1)
    except ConflictError as exc:
        out.line(
            f"  refused:  a writer still holding revision {exc.expected} tried to move it back; "
            f"ConflictError (expected revision {exc.expected}, actual {exc.actual})"
        )
    else:
        raise DemoFailure("a stale alias move was accepted")
    _check(reg.get(model.lineage_id, alias="production").version == 3, "the alias moved")

    # 6. a stale draft ----------------------------------------------------------------------
    out.section("6. A stale draft is refused, and nothing is written")
    stale = model_v2.evolve(description="edited from an old copy of v2")
    out.line(f"  someone still holds v2 and commits a draft of v{stale.version} from it ...")
    try:
        reg.commit(stale)
    except ConflictError as exc:
        out.line(
            f"  ConflictError: the draft expected head v{exc.expected}, the store has "
            f"v{exc.actual}"
        )
    else:
        raise DemoFailure("a stale draft was committed")
    versions = reg.history(model.lineage_id)
    head = reg.get(model.lineage_id)
    try:
        reg.get_by_id(stale.id)
    except NotFoundError:
        pass
    else:
        raise DemoFailure("the stale draft was stored")
    _check(len(versions) == 3 and head.version == 3 and getattr(head, "description", None) == "", "history intact")
    out.line(
        f"  nothing was written: the model still has {len(versions)} versions, head "
        f"v{head.version}. To apply the change, reload the head and evolve it again:"
    )
    out.line("  reg.commit(reg.get(lineage_id).evolve(...))")

    # 7. events -----------------------------------------------------------------------------
    out.section("7. React to training events, and read the event log")
    fired: list[int] = []
    reg.bus.subscribe(
        DemoStepCompleted, lambda e: fired.append(e.step), where=lambda e: e.step % 5 == 0
    )

    @fs.emit_events(name="demo.fine_tune")
    def fine_tune(steps: int) -> None:
        loss = 0.42
        for step in range(1, steps + 1):
            loss *= 0.97
            reg.bus.publish(DemoStepCompleted(step=step, loss=loss, subject=run_v2.ref))

    with reg.bus.activate():  # @emit_events publishes to this bus
        fine_tune(20)
    out.line("  a fine-tuning loop published 20 StepCompleted events on reg.bus;")
    out.line(f"  a handler subscribed with where=step % 5 == 0 fired at steps {fired}")
    _check(fired == [5, 10, 15, 20], "the filtered handler fired every 5 steps")
    logged = reg.events(topic=DemoStepCompleted, subject=run_v2.ref)
    started = reg.events(topic=fs.CallStarted)[-1].event
    _check(len(logged) == 20, "the step events were persisted")
    _check(
        all(s.event.correlation_id == started.id for s in logged),
        "every step event is correlated with the fine_tune call",
    )
    out.line(
        f"  all {len(logged)} were persisted by the group-commit writer, each linked to the "
        f"CallStarted event of fine_tune (correlation id {str(started.id)[:8]}…)"
    )
    out.line("  the registry logs its own changes in the same transaction as the change:")
    rows = [
        [str(s.seq), type(s.event).__name__, f"v{s.event.subject.version}" if s.event.subject else ""]
        for s in reg.events(subject=model.lineage_id)
    ]
    out.table(["seq", "event", "version"], rows)
    _check(
        [r[1] for r in rows].count("EntityVersionCommitted") == 2, "two model commits logged"
    )

    # 8. operations -------------------------------------------------------------------------
    out.section("8. Concurrent updates as operations: no lost update, ever")
    counter = reg.add(fs.ConfigEntity(name=f"{p}-eval-counter", params={"evaluations": 0}))

    @fs.with_conflict_resolution(policy="merge", reason="count an evaluation")
    def count_evaluation(cfg: fs.ConfigEntity) -> fs.ConfigEntity:
        return cfg.evolve(params={"evaluations": cfg.params["evaluations"] + 1})

    def evaluator() -> None:
        for _ in range(25):
            count_evaluation(counter, registry=reg)

    workers = [threading.Thread(target=evaluator) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    final = reg.get(counter.lineage_id)
    _check(final.params["evaluations"] == 200, "200 concurrent increments all landed")  # type: ignore[attr-defined]
    out.line(
        f"  8 threads x 25 increments through @with_conflict_resolution(policy='merge'): "
        f"{final.params['evaluations']} evaluations counted, in {final.version - 1} commits"  # type: ignore[attr-defined]
    )
    out.line("  (pending merge operations on one lineage fold into one commit; none is lost)")
    audit = [
        s.event
        for s in reg.events(topic=fs.OperationCommitted)
        if isinstance(s.event, fs.OperationCommitted) and s.event.targets == (counter.lineage_id,)
    ]
    _check(len(audit) == 200, "every operation is in the audit trail")
    out.line(
        f"  the audit trail holds {len(audit)} OperationCommitted records for it, "
        f"each saying why: {audit[0].reason!r}"
    )

    # what the store now knows ------------------------------------------------------------
    out.title("What the store now knows")

    out.section(f"Model history: {model.name} (lineage {model.lineage_id})")
    history_table(out, reg, versions)
    out.line(
        "  aliases: "
        + ", ".join(f"{a.alias} -> v{a.version}" for a in reg.aliases(model.lineage_id))
    )

    out.section("Checkpoint provenance: which run, config and dataset produced it?")
    out.line("  reg.ancestors(checkpoint), nearest first:")
    direct = set(reg.ancestors(checkpoint, max_depth=1))
    ancestors = reg.ancestors(checkpoint)
    rows = []
    found: dict[str, Entity] = {}
    for ref in ancestors:
        entity = reg.get(ref)
        found.setdefault(kind(entity), entity)
        rows.append([
            kind(entity), label(entity), f"v{ref.version}",
            "direct input" if ref in direct else "further back",
        ])
    out.table(["type", "name", "version", "link"], rows)
    want = ("TrainingRun", "Model", "Config", "Dataset")
    _check(all(k in found for k in want), f"the checkpoint's ancestors include {want}")
    r, m, c, d = (found[k] for k in want)
    out.line(
        f"  In short: run {label(r)} v{r.version} trained model {label(m)} v{m.version} "
        f"with config {label(c)} v{c.version} on dataset {label(d)} v{d.version}."
    )

    out.section(f"Descendants of the dataset: everything derived from {dataset.name} v1")
    out.line("  reg.descendants(dataset), nearest first:")
    rows = []
    for ref in reg.descendants(dataset):
        entity = reg.get(ref)
        rows.append([kind(entity), label(entity), f"v{ref.version}"])
    out.table(["type", "name", "version"], rows)
    _check(any(row[0] == "Checkpoint" for row in rows), "the checkpoint descends from the dataset")

    out.section("Where the data lives")
    out.line(f"  entity versions, provenance and aliases: {reg.url}")
    out.line(f"  blobs (content-addressed, verified on every read): {blob_root(reg)}")
    out.line(f"    model v3 weights:  {blob_location(reg, weights)}")
    out.line(f"    dataset content:   {blob_location(reg, data_blob)}")

    out.section("Try next")
    if reg.store.dialect == "memory":
        out.line("  This store was memory://, so it is gone when the tour exits. Run it on a file:")
        out.line("  forseti tour --url sqlite:///demo.db")
    else:
        out.line(f"  forseti history {model.lineage_id} --url {reg.url}")
        out.line(f"  forseti info --url {reg.url}")
    return 0


