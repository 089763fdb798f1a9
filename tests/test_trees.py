"""forseti.trees: building, DAG safety, traversal, O(changed) commits, builders and renderers."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forseti as fs
from forseti.trees import (
    CycleError,
    EdgeKind,
    EntityTree,
    TreeEdge,
    commit_change,
    model_lineage,
    pipeline_tree,
    to_dot,
    to_mermaid,
    to_text,
)
from forseti.trees.edges import EDGE_KINDS


class Node(fs.Entity):
    """A test entity: owns ``children``, uses ``link``."""

    entity_type: ClassVar[str] = "tests.trees.Node"
    child_fields: ClassVar[tuple[str, ...]] = ("children",)

    name: str
    children: tuple[fs.EntityRef, ...] = ()
    link: fs.EntityRef | None = None
    size: int = 0


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class Recipe:
    """A small stored pipeline: two stages sharing a config, two runs, three checkpoints."""

    config: fs.ConfigEntity
    dataset: fs.DatasetEntity
    model: fs.ModelEntity
    model2: fs.ModelEntity
    pre: fs.TrainingRunEntity
    sft: fs.TrainingRunEntity
    c50: fs.CheckpointEntity
    c100: fs.CheckpointEntity
    c10: fs.CheckpointEntity
    s1: fs.TrainingStageEntity
    s2: fs.TrainingStageEntity
    pipeline: fs.PipelineEntity


def make_recipe(reg: fs.EntityRegistry) -> Recipe:
    w = reg.put_blob(b"w" * 32, format="safetensors")
    config = reg.add(fs.ConfigEntity(name="shared-cfg", params={"lr": 1e-3}))
    dataset = reg.add(fs.DatasetEntity(name="arith"))
    model = reg.add(fs.ModelEntity(name="tiny", hidden_size=64))
    pre = reg.add(
        fs.TrainingRunEntity(
            name="pretrain-run",
            model=model.ref,
            config=config.ref,
            dataset=dataset.ref,
            status="running",
            total_steps=100,
        )
    )
    c50 = reg.add(fs.CheckpointEntity(run=pre.ref, model=model.ref, step=50, weights=w))
    pre = reg.commit(pre.evolve(status="completed", step=100, finished_at=datetime.now(UTC)))
    c100 = reg.add(fs.CheckpointEntity(run=pre.ref, model=model.ref, step=100, weights=w))
    c100 = reg.commit(c100.evolve(metrics={"loss": 0.5}))  # the head is version 2
    model2 = reg.commit(model.evolve(weights=w, derived_from=(c100.ref,)))
    sft = reg.add(fs.TrainingRunEntity(name="sft-run", model=model2.ref, config=config.ref))
    c10 = reg.add(fs.CheckpointEntity(run=sft.ref, model=model2.ref, step=10, weights=w))
    s1 = reg.add(
        fs.TrainingStageEntity(name="pretrain", kind="pretrain", config=config.ref, run=pre.ref)
    )
    s2 = reg.add(
        fs.TrainingStageEntity(
            name="sft",
            kind="sft",
            order=1,
            config=config.ref,
            run=sft.ref,
            depends_on=("pretrain",),
        )
    )
    pipeline = reg.add(fs.PipelineEntity(name="recipe", stages=(s1.ref, s2.ref)))
    return Recipe(config, dataset, model, model2, pre, sft, c50, c100, c10, s1, s2, pipeline)


def version_count(reg: fs.EntityRegistry, lineages: Any) -> int:
    return sum(len(reg.history(lid)) for lid in set(lineages))


def store_tree(reg: fs.EntityRegistry, fanout: int, depth: int) -> Node:
    """A stored tree of Nodes, ``fanout`` children per inner node, ``depth`` levels below the
    root; committed bottom-up in one batch. Returns the root."""
    drafts: list[Node] = []

    def make(level: int, name: str) -> Node:
        kids = (
            ()
            if level == depth
            else tuple(make(level + 1, f"{name}.{i}").ref for i in range(fanout))
        )
        node = Node(name=name, children=kids)
        drafts.append(node)
        return node

    root = make(0, "r")
    reg.commit_many(drafts)
    return root


# -- child_fields ----------------------------------------------------------------------------


def test_child_fields_mark_owned_references() -> None:
    assert fs.PipelineEntity.child_fields == ("stages",)
    assert fs.TrainingStageEntity.child_fields == ("run",)
    assert fs.TrainingRunEntity.child_fields == ()
    assert Node.child_fields == ("children",)


def test_child_fields_must_name_reference_fields() -> None:
    with pytest.raises(TypeError, match="'nope', which is not a user field"):

        class Bad(fs.Entity):
            child_fields: ClassVar[tuple[str, ...]] = ("nope",)

    with pytest.raises(TypeError, match="'size', which is not a reference field"):

        class Bad2(fs.Entity):
            child_fields: ClassVar[tuple[str, ...]] = ("size",)
            size: int = 0

    with pytest.raises(TypeError, match="not a user field"):

        class Bad3(fs.Entity):
            child_fields: ClassVar[tuple[str, ...]] = ("derived_from",)


# -- building from stored references ---------------------------------------------------------


def test_build_from_ai_entities_types_each_edge(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    tree = EntityTree.build(reg, r.pipeline)
    assert tree.root == r.pipeline and tree.root_ref == r.pipeline.ref
    expected = {r.pipeline, r.s1, r.s2, r.config, r.pre, r.sft, r.model, r.model2, r.dataset}
    assert {e.ref for e in expected} == set(tree.nodes) and len(tree) == len(expected)
    kinds = {(tree[e.parent].name, e.relation, tree[e.child].name): e.kind for e in tree.edges}  # type: ignore[attr-defined]
    assert kinds[("recipe", "stages", "pretrain")] == "hierarchical"
    assert kinds[("pretrain", "run", "pretrain-run")] == "hierarchical"
    assert kinds[("pretrain", "config", "shared-cfg")] == "reference"
    assert kinds[("pretrain-run", "model", "tiny")] == "reference"
    assert not any(e.kind == "derived_from" for e in tree.edges)  # not asked for
    assert r.c50.ref not in tree  # nothing references checkpoints


def test_a_shared_child_is_one_node_with_several_parents(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    tree = EntityTree.build(reg, r.pipeline)
    assert [e for _, e in tree.walk()].count(r.config) == 1
    parents = tree.parents(r.config.ref)
    assert {p.ref for p in parents} == {r.s1.ref, r.s2.ref, r.pre.ref, r.sft.ref}
    assert {e.relation for e in tree.in_edges(r.config)} == {"config"}
    assert tree.parents(r.config, kinds=["hierarchical"]) == []
    assert tree.children(r.s1) == [r.config, r.pre]  # field order: config before run
    assert tree.children(r.s1, kinds=("hierarchical",)) == [r.pre]


def test_build_roots_depth_kinds_and_heads(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    by_ref = EntityTree.build(reg, r.s1.ref)
    by_lineage = EntityTree.build(reg, r.s1.lineage_id)
    by_text = EntityTree.build(reg, f"{r.s1.lineage_id}@1")
    by_id = EntityTree.build(reg, str(r.s1.id))  # a version id, not a lineage id
    assert by_ref.edges == by_lineage.edges == by_text.edges == by_id.edges
    assert len(EntityTree.build(reg, r.pipeline, max_depth=0)) == 1
    assert set(EntityTree.build(reg, r.pipeline, max_depth=1).nodes) == {
        r.pipeline.ref,
        r.s1.ref,
        r.s2.ref,
    }
    owned = EntityTree.build(reg, r.pipeline, kinds=("hierarchical",))
    assert set(owned.nodes) == {e.ref for e in (r.pipeline, r.s1, r.s2, r.pre, r.sft)}
    # provenance only, upwards: the checkpoint came from its run and model
    up = EntityTree.build(reg, r.model2, kinds=("reference", "derived_from"))
    assert {e.kind for e in up.out_edges(r.model2)} == {"derived_from"}
    assert r.c100.ref in up and r.pre.ref in up and r.config.ref in up
    # follow="head": a newer config version replaces the stored one
    config2 = reg.commit(r.config.evolve(params={"lr": 2e-3}))
    heads = EntityTree.build(reg, r.pipeline, follow="head")
    assert config2.ref in heads and r.config.ref not in heads
    exact = EntityTree.build(reg, r.pipeline)
    assert r.config.ref in exact and config2.ref not in exact


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": ("owned",)}, "edge kinds are"),
        ({"kinds": ()}, "edge kinds are"),
        ({"follow": "latest"}, "follow is"),
        ({"max_depth": -1}, "max_depth"),
        ({"max_depth": True}, "max_depth"),
    ],
)
def test_build_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with fs.open("memory://") as reg:
        root = reg.add(Node(name="r"))
        with pytest.raises(fs.ValidationError, match=message):
            EntityTree.build(reg, root, **kwargs)


def test_build_with_unknown_roots_is_a_clear_error() -> None:
    with fs.open("memory://") as reg:
        with pytest.raises(fs.NotFoundError, match="no lineage and no version"):
            EntityTree.build(reg, "8f4c51b6-5c1a-4d7b-9d39-0b8f2a1f1c11")
        with pytest.raises(fs.ValidationError, match="must be a UUID"):
            EntityTree.build(reg, "not-a-uuid")
        with pytest.raises(fs.ValidationError, match="numeric version"):
            EntityTree.build(reg, "8f4c51b6-5c1a-4d7b-9d39-0b8f2a1f1c11@x")
        with pytest.raises(fs.ValidationError, match="expected an Entity"):
            EntityTree.build(reg, 42)  # type: ignore[arg-type]


def test_following_heads_into_a_cycle_raises(reg: fs.EntityRegistry) -> None:
    a = reg.add(Node(name="a"))
    b = reg.add(Node(name="b", link=a.ref))
    a2 = reg.commit(a.evolve(link=b.ref))  # a's head now points at b, which points at a v1
    exact = EntityTree.build(reg, a2)  # exact refs: a v2 -> b v1 -> a v1, no cycle
    assert [e.ref for _, e in exact.walk()] == [a2.ref, b.ref, a.ref]
    with pytest.raises(CycleError) as info:
        EntityTree.build(reg, a2, follow="head")
    assert isinstance(info.value, fs.ValidationError)
    assert info.value.cycle == (a2.ref, b.ref, a2.ref)
    assert "Node 'a' v2" in str(info.value) and "Node 'b' v1" in str(info.value)


# -- explicit edges, and invariants by Hypothesis ------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[Node], list[TreeEdge]]:
    """A random DAG of unstored Nodes rooted at node 0: each node has 1-3 earlier parents."""
    n = draw(st.integers(1, 30))
    nodes = [Node(name=f"n{i}") for i in range(n)]
    kinds: st.SearchStrategy[EdgeKind] = st.sampled_from(EDGE_KINDS)
    edges = []
    for i in range(1, n):
        for p in draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=3, unique=True)):
            edges.append(TreeEdge(nodes[p].ref, nodes[i].ref, draw(kinds), f"r{p}"))
    order = draw(st.permutations(range(len(edges))))
    return nodes, [edges[k] for k in order]


def _distances(nodes: list[Node], edges: list[TreeEdge]) -> dict[fs.EntityRef, int]:
    dist = {nodes[0].ref: 0}
    frontier = [nodes[0].ref]
    while frontier:
        nxt = []
        for ref in frontier:
            for e in edges:
                if e.parent == ref and e.child not in dist:
                    dist[e.child] = dist[ref] + 1
                    nxt.append(e.child)
        frontier = nxt
    return dist


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dags_are_accepted_and_walked_once_per_node(
    dag: tuple[list[Node], list[TreeEdge]],
) -> None:
    nodes, edges = dag
    tree = EntityTree.from_edges(nodes[0], nodes[1:], edges)
    assert len(tree) == len(nodes) and set(tree.edges) == set(edges)
    dfs = list(tree.walk())
    bfs = list(tree.walk("bfs"))
    for visit in (dfs, bfs):
        refs = [e.ref for _, e in visit]
        assert sorted(refs) == sorted(n.ref for n in nodes)  # each node exactly once
        assert refs[0] == nodes[0].ref
    position = {e.ref: i for i, (_, e) in enumerate(dfs)}
    for _, entity in dfs[1:]:  # pre-order: some parent comes before every child
        assert any(position[p.ref] < position[entity.ref] for p in tree.parents(entity))
    assert {e.ref: d for d, e in bfs} == _distances(nodes, edges)
    for node in nodes:
        path = tree.path_to(node.ref)
        assert path[0] == nodes[0].ref and path[-1] == node.ref
        assert len(path) - 1 == _distances(nodes, edges)[node.ref]
        assert all(
            TreeEdge(a, b) in {TreeEdge(e.parent, e.child) for e in edges}
            for a, b in itertools.pairwise(path)
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_a_back_edge_that_closes_a_cycle_is_rejected(
    dag: tuple[list[Node], list[TreeEdge]], data: st.DataObject
) -> None:
    nodes, edges = dag
    tree = EntityTree.from_edges(nodes[0], nodes[1:], edges)
    nodes_by_ref = {n.ref: n for n in nodes}
    low = data.draw(st.sampled_from(nodes))  # high (on a path to low) reaches low
    high = data.draw(st.sampled_from([nodes_by_ref[r] for r in tree.path_to(low.ref)]))
    back = TreeEdge(low.ref, high.ref, "reference", "back")
    with pytest.raises(CycleError) as info:
        EntityTree.from_edges(nodes[0], nodes[1:], [*edges, back])
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and len(cycle) >= 2
    pairs = {(e.parent, e.child) for e in [*edges, back]}
    assert all((a, b) in pairs for a, b in itertools.pairwise(cycle))
    assert f"Node '{high.name}' v1" in str(info.value)


def test_from_edges_rejects_bad_input() -> None:
    a, b, c = Node(name="a"), Node(name="b"), Node(name="c")
    with pytest.raises(fs.ValidationError, match="not a node"):
        EntityTree.from_edges(a, [b], [TreeEdge(a.ref, c.ref)])
    with pytest.raises(fs.ValidationError, match="cannot be reached from the root"):
        EntityTree.from_edges(a, [b, c], [TreeEdge(a.ref, b.ref)])
    with pytest.raises(fs.ValidationError, match="edge kind"):
        EntityTree.from_edges(a, [b], [TreeEdge(a.ref, b.ref, "owns")])  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError, match="two different entities"):
        twin = Node(name="twin", lineage_id=b.lineage_id)
        EntityTree.from_edges(a, [b, twin], [TreeEdge(a.ref, b.ref)])
    with pytest.raises(fs.ValidationError, match="TreeEdge"):
        EntityTree.from_edges(a, [b], [(a.ref, b.ref)])  # type: ignore[list-item]
    with pytest.raises(CycleError, match="Node 'a' v1"):
        EntityTree.from_edges(a, [], [TreeEdge(a.ref, a.ref)])
    tree = EntityTree.from_edges(a, [a, b], [TreeEdge(a.ref, b.ref)] * 2)  # repeats count once
    assert len(tree) == 2 and len(tree.edges) == 1


# -- traversal -------------------------------------------------------------------------------


def test_walk_find_and_path_to(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    tree = EntityTree.build(reg, r.pipeline)
    names = [(d, e.name) for d, e in tree.walk()]  # type: ignore[attr-defined]
    assert names == [
        (0, "recipe"),
        (1, "pretrain"),
        (2, "shared-cfg"),
        (2, "pretrain-run"),
        (3, "tiny"),
        (3, "arith"),
        (1, "sft"),
        (2, "sft-run"),
        (3, "tiny"),  # model v2, a different version than model v1 above
    ]
    by_level = [(d, e.name) for d, e in tree.walk("bfs", kinds=("hierarchical",))]  # type: ignore[attr-defined]
    assert by_level == [
        (0, "recipe"),
        (1, "pretrain"),
        (1, "sft"),
        (2, "pretrain-run"),
        (2, "sft-run"),
    ]
    assert tree.find(type=fs.TrainingRunEntity, status="completed") == [r.pre]
    assert tree.find(type=fs.ModelEntity) == [r.model, r.model2]
    assert tree.find(lambda e: e.version > 1) == [r.pre, r.model2]
    assert tree.find(params={"lr": 1e-3}) == [r.config]  # compared as plain data
    assert tree.find(no_such_field=1) == []
    with pytest.raises(fs.ValidationError, match="Entity subclass"):
        tree.find(type=str)  # type: ignore[arg-type]
    assert tree.path_to(r.model2) == [r.pipeline.ref, r.s2.ref, r.sft.ref, r.model2.ref]
    assert tree.path_to(r.config.ref) == [r.pipeline.ref, r.s1.ref, r.config.ref]
    with pytest.raises(fs.NotFoundError):
        tree.path_to(r.c10.ref)
    with pytest.raises(fs.NotFoundError):
        tree[r.c10.ref]
    with pytest.raises(fs.ValidationError, match="order"):
        tree.walk("sideways")  # type: ignore[arg-type]
    assert r.pipeline in tree and r.c10 not in tree and "x" not in tree
    assert list(tree) == list(tree.nodes) and len(list(tree)) == len(tree)
    assert "9 nodes" in repr(tree)


# -- O(changed) commits ----------------------------------------------------------------------


def test_commit_change_commits_the_target_and_its_tree_ancestors_only(
    reg: fs.EntityRegistry,
) -> None:
    r = make_recipe(reg)
    tree = EntityTree.build(reg, r.pipeline)
    lineages = [e.lineage_id for e in tree.nodes.values()]
    before = version_count(reg, lineages)
    old = list(tree.nodes.items())  # in node order, which a change keeps
    # the shared config: both runs, both stages and the pipeline store a reference to it
    ancestors = {r.pre.lineage_id, r.sft.lineage_id, r.s1.lineage_id, r.s2.lineage_id}
    ancestors.add(r.pipeline.lineage_id)
    same = commit_change(reg, tree, r.config.ref, params={"lr": 2e-3})
    assert same is tree
    assert version_count(reg, lineages) == before + 1 + len(ancestors)
    for (ref, entity), (was_ref, was) in zip(tree.nodes.items(), old, strict=True):
        if ref.lineage_id in ancestors | {r.config.lineage_id}:
            assert ref.version == was_ref.version + 1 and entity.previous_id == was.id
            assert reg.get(ref.lineage_id) == entity  # the new head
        else:
            assert ref == was_ref and entity is was  # untouched, not even copied
    new_config = tree.find(type=fs.ConfigEntity)[0]
    assert new_config.params["lr"] == 2e-3  # type: ignore[attr-defined]
    assert all(s.config == new_config.ref for s in tree.find(type=fs.TrainingStageEntity))  # type: ignore[attr-defined]
    # the updated tree is what a fresh build from the new pipeline head finds
    fresh = EntityTree.build(reg, reg.get(r.pipeline.lineage_id))
    assert fresh.edges == tree.edges and dict(fresh.nodes) == dict(tree.nodes)
    # the method form; a leaf with no stored parent in the tree changes alone
    before = version_count(reg, lineages)
    tree.commit_change(reg, tree.find(type=fs.DatasetEntity)[0], num_examples=10)
    assert version_count(reg, lineages) == before + 1 + 3  # + pretrain-run, pretrain, recipe


def test_commit_change_is_atomic(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    tree = EntityTree.build(reg, r.pipeline)
    lineages = [e.lineage_id for e in tree.nodes.values()]
    before = version_count(reg, lineages)
    snapshot = dict(tree.nodes)
    with pytest.raises(fs.ValidationError):
        commit_change(reg, tree, r.dataset.ref, num_examples=-5)  # bad value
    with pytest.raises(fs.ValidationError, match="at least one field"):
        commit_change(reg, tree, r.dataset.ref)
    # someone else moves a stage: the whole batch is refused, the config included
    reg.commit(r.s2.evolve(status="running"))
    with pytest.raises(fs.ConflictError):
        commit_change(reg, tree, r.config.ref, params={"lr": 9.0})
    assert version_count(reg, lineages) == before + 1  # only the other writer's commit
    assert reg.get(r.config.lineage_id) == r.config and reg.get(r.pre.lineage_id) == r.pre
    assert dict(tree.nodes) == snapshot  # the tree is untouched too
    with pytest.raises(fs.NotFoundError):
        commit_change(reg, tree, r.c10.ref, step=11)


@pytest.mark.parametrize("fanout", [4, 12])
def test_commit_change_cost_does_not_grow_with_the_tree(fanout: int) -> None:
    with fs.open("memory://") as reg:
        root = store_tree(reg, fanout, depth=3)  # 85 or 1885 nodes
        tree = EntityTree.build(reg, root)
        assert len(tree) == sum(fanout**k for k in range(4))
        leaf = tree.find(name="r.1.2.3")[0]
        untouched = {ref: e for ref, e in tree.nodes.items()}
        committed: list[int] = []
        real = reg.commit_many

        def spy(drafts: Any, **kw: Any) -> list[fs.Entity]:
            committed.append(len(drafts))
            return real(drafts, **kw)

        reg.commit_many = spy  # type: ignore[method-assign]
        tree.commit_change(reg, leaf, size=1)
        assert committed == [4]  # leaf, r.1.2, r.1, r: one batch whatever the fan-out
        changed = [ref for ref in tree.nodes if ref not in untouched]
        assert sorted(tree[ref].name for ref in changed) == ["r", "r.1", "r.1.2", "r.1.2.3"]  # type: ignore[attr-defined]
        assert all(tree[ref] is e for ref, e in untouched.items() if ref in tree)
        path = [tree[ref] for ref in tree.path_to(tree.find(name="r.1.2.3")[0])]
        assert [(n.name, n.version) for n in path] == [  # type: ignore[attr-defined]
            ("r", 2),
            ("r.1", 2),
            ("r.1.2", 2),
            ("r.1.2.3", 2),
        ]
        assert [n.name for n in tree.children(tree.root)][:2] == ["r.0", "r.1"]  # type: ignore[attr-defined]


def test_a_shared_child_changes_all_its_parents() -> None:
    with fs.open("memory://") as reg:
        shared = reg.add(Node(name="shared"))
        left = reg.add(Node(name="left", children=(shared.ref,)))
        right = reg.add(Node(name="right", link=shared.ref))
        other = reg.add(Node(name="other"))
        root = reg.add(Node(name="root", children=(left.ref, right.ref, other.ref)))
        tree = EntityTree.build(reg, root)
        tree.commit_change(reg, shared, size=7)
        assert {e.name: e.version for e in tree.nodes.values()} == {  # type: ignore[attr-defined]
            "shared": 2,
            "left": 2,
            "right": 2,
            "other": 1,
            "root": 2,
        }
        head = reg.get(root.lineage_id)
        assert head == tree.root and head.children[2] == other.ref  # type: ignore[attr-defined]
        assert len(tree.parents(tree.find(name="shared")[0])) == 2


# -- builders --------------------------------------------------------------------------------


def test_pipeline_tree_answers_which_stages_runs_and_checkpoints(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    tree = pipeline_tree(reg, r.pipeline.lineage_id)
    shape = [
        (d, type(e).__name__, getattr(e, "name", getattr(e, "step", None))) for d, e in tree.walk()
    ]
    assert shape == [
        (0, "PipelineEntity", "recipe"),
        (1, "TrainingStageEntity", "pretrain"),
        (2, "ConfigEntity", "shared-cfg"),
        (2, "TrainingRunEntity", "pretrain-run"),
        (3, "CheckpointEntity", 50),  # made from run v1: every version of the run counts
        (3, "CheckpointEntity", 100),
        (1, "TrainingStageEntity", "sft"),
        (2, "TrainingRunEntity", "sft-run"),
        (3, "CheckpointEntity", 10),
    ]
    assert r.c100.version == 2 and r.c100.ref in tree  # the head of the checkpoint's lineage
    assert {e.relation: e.kind for e in tree.edges} == {
        "stages": "hierarchical",
        "config": "reference",
        "run": "hierarchical",
        "checkpoints": "hierarchical",
    }
    assert len(tree.parents(r.config)) == 2
    # a checkpoint hangs from its run by an inferred edge: changing it changes nothing above
    lineages = [e.lineage_id for e in tree.nodes.values()]
    before = version_count(reg, lineages)
    tree.commit_change(reg, r.c10, metrics={"loss": 0.1})
    assert version_count(reg, lineages) == before + 1
    with pytest.raises(fs.ValidationError, match="takes a pipeline"):
        pipeline_tree(reg, r.model)


def test_model_lineage_shows_evolution_through_runs_and_checkpoints(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    w = reg.put_blob(b"d" * 8, format="safetensors")
    student = reg.add(fs.ModelEntity(name="student", derived_from=(r.c10.ref,), weights=w))
    tree = model_lineage(reg, r.model2)  # any version: rooted at version 1
    assert tree.root == r.model
    edges = {(tree[e.parent].ref, e.relation, tree[e.child].ref): e.kind for e in tree.edges}
    assert edges == {
        (r.model.ref, "previous", r.model2.ref): "derived_from",
        (r.model.ref, "runs", r.pre.ref): "derived_from",
        (r.pre.ref, "checkpoints", r.c50.ref): "hierarchical",
        (r.pre.ref, "checkpoints", r.c100.ref): "hierarchical",
        (r.c100.ref, "derived_from", r.model2.ref): "derived_from",
        (r.model2.ref, "runs", r.sft.ref): "derived_from",
        (r.sft.ref, "checkpoints", r.c10.ref): "hierarchical",
        (r.c10.ref, "derived_from", student.ref): "derived_from",
    }
    assert {p.ref for p in tree.parents(r.model2)} == {r.model.ref, r.c100.ref}
    assert tree.path_to(r.c10) == [r.model.ref, r.model2.ref, r.sft.ref, r.c10.ref]
    with pytest.raises(fs.ValidationError, match="takes a model"):
        model_lineage(reg, r.config)


# -- rendering -------------------------------------------------------------------------------


def test_renderers_draw_every_node_and_edge(reg: fs.EntityRegistry) -> None:
    r = make_recipe(reg)
    tree = pipeline_tree(reg, r.pipeline)
    text = to_text(tree)
    assert text == tree.to_text()
    for label in ("Pipeline 'recipe' v1", "TrainingStage 'sft' v1", "Checkpoint step 100 v2"):
        assert label in text
    assert "config (ref): Config 'shared-cfg' v1  (shown above)" in text
    assert "├──" in text
    plain = tree.to_text(plain=True)
    assert plain.isascii() and plain.splitlines()[0] == "Pipeline 'recipe' v1"
    assert "|-- stages: TrainingStage 'pretrain' v1" in plain
    assert "    `-- run: TrainingRun 'sft-run' v1" in plain

    mermaid = to_mermaid(tree)
    assert mermaid == tree.to_mermaid() and mermaid.startswith("graph TD\n")
    declared = re.findall(r'^    (n\d+)\["(.*)"\]$', mermaid, re.M)
    assert len(declared) == len(tree) == len({n for n, _ in declared})
    assert "TrainingRun 'pretrain-run' v2" in {label for _, label in declared}
    links = re.findall(r"^    (n\d+) (-->|-\.->)\|(\w+)\| (n\d+)$", mermaid, re.M)
    assert len(links) == len(tree.edges)
    assert {(arrow, rel) for _, arrow, rel, _ in links} == {
        ("-->", "stages"),
        ("-.->", "config"),
        ("-->", "run"),
        ("-->", "checkpoints"),
    }
    assert "linkStyle" in mermaid and "stroke-dasharray" in mermaid

    dot = to_dot(tree)
    assert dot == tree.to_dot() and dot.startswith("digraph entity_tree {")
    assert dot.count("{") == dot.count("}") == 1 and dot.rstrip().endswith("}")
    nodes = re.findall(r"^    (n\d+) \[label=", dot, re.M)
    assert len(nodes) == len(set(nodes)) == len(tree)
    dot_edges = re.findall(r'^    (n\d+) -> (n\d+) \[label="(\w+)"(.*)\];$', dot, re.M)
    assert len(dot_edges) == len(tree.edges)
    assert {(rel, style) for _, _, rel, style in dot_edges} >= {("config", ", style=dashed")}
    assert f'tooltip="{r.pipeline.ref}"' in dot


def test_renderers_escape_names_and_mark_derived_edges() -> None:
    odd = Node(name='say "hi" \\ <b>#1</b> | [bold]x[/bold]')
    root = Node(name="root")
    tree = EntityTree.from_edges(root, [odd], [TreeEdge(root.ref, odd.ref, "derived_from", "made")])
    dot = tree.to_dot()
    label = re.search(r'n1 \[label="((?:[^"\\]|\\.)*)"', dot)
    assert label is not None and '\\"hi\\"' in label[1] and "\\\\" in label[1]
    assert "style=dotted" in dot
    mermaid = tree.to_mermaid()
    line = next(ln for ln in mermaid.splitlines() if ln.startswith("    n1["))
    assert '"' not in line[len('    n1["') : -2] and "#quot;" in line and "#lt;b#gt;" in line
    assert "-.->|made| n1" in mermaid and "stroke-dasharray: 1 3" in mermaid
    text = tree.to_text()
    assert "[bold]x[/bold]" in text  # not read as rich markup
    assert "made (derived): " in text
