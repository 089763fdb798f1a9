"""Quickstart: open a registry, add an entity, evolve it, read it back, handle a conflict.

Run it with ``python examples/quickstart.py``. It keeps everything in memory (``memory://``), so it
leaves nothing behind; use ``fs.open("sqlite:///runs.db")`` (or just ``fs.open()``) to keep data.
"""

import forseti as fs

reg = fs.open("memory://")

# Add the first version of a new lineage.
model = reg.add(fs.ModelEntity(name="tiny", architecture="mlp", hidden_size=64))
print(f"added   {model.name} v{model.version}  lineage {model.lineage_id}")

# Change it: evolve() makes a draft of the next version; commit() stores it.
draft = model.evolve(hidden_size=128)
model_v2 = reg.commit(draft)
print(f"commit  {model_v2.name} v{model_v2.version}  hidden_size {model.hidden_size} -> {model_v2.hidden_size}")

# Read: the head, an exact version, the whole history, a query by type and fields.
head = reg.get(model.lineage_id)
first = reg.get(model.lineage_id, version=1)
versions = reg.history(model.lineage_id)
found = reg.find(fs.ModelEntity, name="tiny")
print(f"head    v{head.version}; v1 still has hidden_size={first.hidden_size}")
print(f"history {[(v.version, v.hidden_size) for v in versions]}")
print(f"find    {len(found)} model(s) named 'tiny'")

# A draft made from an old version is refused (optimistic concurrency control).
stale = model.evolve(hidden_size=256)  # made from v1, but the head is now v2
conflict = None
try:
    reg.commit(stale)
except fs.ConflictError as exc:
    conflict = exc
    print(f"conflict: the draft expected head v{exc.expected}, the store has v{exc.actual}")
    # What to do: reload the head, re-apply the change, commit again.
    model_v3 = reg.commit(reg.get(model.lineage_id).evolve(hidden_size=256))
    print(f"retried  v{model_v3.version}  hidden_size={model_v3.hidden_size}")

reg.close()

# What this script showed, checked.
assert model.version == 1 and model.hidden_size == 64  # the stored v1 never changes
assert model_v2.version == 2 and model_v2.previous_id == model.id
assert head == model_v2 and first == model
assert [v.version for v in versions] == [1, 2]
assert [m.lineage_id for m in found] == [model.lineage_id]
assert conflict is not None and (conflict.expected, conflict.actual) == (1, 2)
assert model_v3.version == 3 and model_v3.hidden_size == 256
