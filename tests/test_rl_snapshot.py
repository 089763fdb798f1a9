"""The codec of the RL training-state blob (``forseti.rl.snapshot``): plain Python/numpy values →
a JSON tree + a tensor table → safetensors → back, without pickle.

Property tests (hypothesis) round-trip nested values through the same path a checkpoint takes
(``Packer.pack`` → ``json.dumps`` → ``write_safetensors`` → ``read_safetensors`` → ``json.loads``
→ ``unpack``) and compare them type-strictly; values the codec cannot store must raise
``Unsupported`` at ``pack`` time (callers skip those attributes).
"""

from __future__ import annotations

import io
import json
import math
from collections import deque
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from forseti.errors import IntegrityError
from forseti.export.tensorfile import read_safetensors, write_safetensors
from forseti.rl.snapshot import Packer, Unsupported, generator_state, set_generator_state, unpack

# -- helpers -------------------------------------------------------------------------------------


def roundtrip(value: Any) -> Any:
    """``value`` through the checkpoint's path: pack, JSON, safetensors bytes, and back."""
    packer = Packer()
    tree = packer.pack("v", value)
    header = json.dumps(tree)  # the training state's description is a JSON header entry
    buf = io.BytesIO()
    write_safetensors(buf, packer.tensors, {"tree": header}, self_digest=False)
    tensors, meta = read_safetensors(bytearray(buf.getvalue()))
    return unpack(json.loads(meta["tree"]), tensors)


def same(a: Any, b: Any) -> bool:
    """Type-strict structural equality (NaN equals NaN, -0.0 differs from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    if isinstance(a, np.generic):
        if a.dtype != b.dtype:
            return False
        return bool(a == b) or bool(a.dtype.kind == "f" and np.isnan(a) and np.isnan(b))
    if isinstance(a, np.random.Generator):
        return type(a.bit_generator) is type(b.bit_generator) and same_state(
            a.bit_generator.state, b.bit_generator.state
        )
    if isinstance(a, deque):
        return (
            a.maxlen == b.maxlen
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def same_state(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return bool(a == b)


# -- strategies ----------------------------------------------------------------------------------

DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]
# dict keys: any text (dotted keys included: "a.b" and ["a"]["b"] must not collide)
KEYS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)

arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
scalars = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.from_dtype(np.dtype(dt)).map(np.dtype(dt).type)
)


@st.composite
def generators(draw: st.DrawFn) -> np.random.Generator:
    kind = draw(st.sampled_from([np.random.PCG64, np.random.PCG64DXSM]))
    gen = np.random.Generator(kind(draw(st.integers(0, 2**64))))
    gen.random(draw(st.integers(0, 5)))  # somewhere along its stream
    return gen


@st.composite
def deques(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> deque[Any]:
    items = draw(st.lists(children, max_size=4))
    maxlen = draw(st.one_of(st.none(), st.integers(0, 6)))
    return deque(items, maxlen=maxlen)


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    arrays,
    scalars,
    generators(),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        deques(children),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=12,
)


# -- round trips ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_nested_values_round_trip_through_safetensors(value: Any) -> None:
    assert same(roundtrip(value), value)


@settings(max_examples=100, deadline=None)
@given(arrays)
def test_arrays_keep_dtype_shape_and_bits(array: np.ndarray) -> None:
    back = roundtrip(array)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()  # bit-exact (NaN payloads, -0.0, uint64 above 2**63)
    assert back.flags.writeable and back.flags.c_contiguous


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        -0.0,
        5e-324,
        np.float32("nan"),
        np.float32("-inf"),
        np.float16(65504.0),
        np.uint64(2**64 - 1),
        np.int64(-(2**63)),
        np.bool_(True),
        np.uint32(4_000_000_000),
        np.array([2**64 - 1, 0, 2**63], dtype=np.uint64),
        np.array([4_294_967_295], dtype=np.uint32),
        np.array([[True, False]]),
        np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],  # not contiguous
        np.zeros((0, 3), dtype=np.float32),
        deque([1, 2.5, "x"], maxlen=5),
        deque([], maxlen=0),
        deque([np.zeros(2)]),
        ({"a": [1, (2, None)]}, []),
        {"": {"nested": {"deeper": [np.ones(1, dtype=np.int8)]}}},
        2**100,
        "ünïcødé ☃",
    ],
    ids=repr,
)
def test_edge_values_round_trip(value: Any) -> None:
    assert same(roundtrip(value), value)


def test_numpy_legacy_global_state_round_trips() -> None:
    """``np.random.get_state()`` (a tuple with a uint32 array) is what capture() stores."""
    np.random.seed(123)
    np.random.random(7)
    state = np.random.get_state()
    expected = np.random.random(5)
    back = roundtrip(state)
    assert same(back, state)
    np.random.set_state(back)
    assert np.array_equal(np.random.random(5), expected)


@settings(max_examples=40, deadline=None)
@given(generators(), st.integers(1, 20))
def test_a_generator_continues_its_stream_after_a_round_trip(
    gen: np.random.Generator, n: int
) -> None:
    state = generator_state(gen)
    expected = gen.random(n)
    gen.bit_generator.state = state
    back = roundtrip(gen)
    assert np.array_equal(back.random(n), expected)


def test_a_generator_state_is_set_into_the_current_generator() -> None:
    source = np.random.default_rng(7)
    source.random(3)
    packer = Packer()
    tree = packer.pack("g", source)
    target = np.random.default_rng(99)
    out = unpack(json.loads(json.dumps(tree)), packer.tensors, target)
    assert out is target  # the environment's own generator object is kept
    assert np.array_equal(out.random(4), source.random(4))


def test_set_generator_state_makes_a_generator_of_the_recorded_kind() -> None:
    state = generator_state(np.random.Generator(np.random.PCG64DXSM(5)))
    gen = set_generator_state(np.random.default_rng(0), state)  # PCG64 given, PCG64DXSM recorded
    assert isinstance(gen.bit_generator, np.random.PCG64DXSM)
    assert gen.random() == np.random.Generator(np.random.PCG64DXSM(5)).random()
    with pytest.raises(IntegrityError, match="bit generator"):
        set_generator_state(None, {"bit_generator": "Mersenne", "state": {}})
    with pytest.raises(IntegrityError):
        set_generator_state(None, {"bit_generator": "Generator", "state": {}})  # not a BitGenerator


# -- rows: replay buffers --------------------------------------------------------------------------


def test_rows_store_only_the_filled_rows_and_restore_in_place() -> None:
    buffer = np.arange(40, dtype=np.float32).reshape(10, 4)
    packer = Packer()
    tree = packer.pack("rb.obs", buffer, rows=3)
    assert packer.tensors["rb.obs"].shape == (3, 4)  # the empty rows are not written
    into = np.full((10, 4), -1.0, dtype=np.float32)
    out = unpack(json.loads(json.dumps(tree)), packer.tensors, into)
    assert out is into
    assert np.array_equal(into[:3], buffer[:3]) and (into[3:] == -1.0).all()


def test_rows_of_a_dict_of_arrays() -> None:
    obs = {"a": np.arange(10, dtype=np.int64), "b": np.ones((10, 2), dtype=np.float32)}
    packer = Packer()
    tree = packer.pack("rb.obs", obs, rows=4)
    into = {"a": np.zeros(10, dtype=np.int64), "b": np.zeros((10, 2), dtype=np.float32)}
    out = unpack(json.loads(json.dumps(tree)), packer.tensors, into)
    assert out["a"] is into["a"] and np.array_equal(out["a"][:4], np.arange(4))
    assert (out["a"][4:] == 0).all() and (out["b"][:4] == 1).all() and (out["b"][4:] == 0).all()


@pytest.mark.parametrize("into", [None, np.zeros((10, 5), dtype=np.float32), [0.0] * 10])
def test_rows_into_a_buffer_of_another_shape_is_an_integrity_error(into: Any) -> None:
    packer = Packer()
    tree = packer.pack("rb.obs", np.ones((10, 4), dtype=np.float32), rows=2)
    with pytest.raises(IntegrityError, match="does not fit"):
        unpack(tree, packer.tensors, into)


# -- corrupted trees -------------------------------------------------------------------------------


def test_a_missing_array_is_an_integrity_error() -> None:
    packer = Packer()
    tree = packer.pack("x", {"w": np.ones(3)})
    with pytest.raises(IntegrityError, match="lacks the array"):
        unpack(tree, {})


@pytest.mark.parametrize(
    "tree", [{"mystery": 1}, {}, [{"nope": None}], {"dict": {"a": {"huh": 2}}}]
)
def test_an_unknown_entry_is_an_integrity_error(tree: Any) -> None:
    with pytest.raises(IntegrityError, match="unknown entry"):
        unpack(tree, {})


# -- what the codec refuses --------------------------------------------------------------------------


class _Thing:
    pass


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset(),
        b"bytes",
        bytearray(b"x"),
        1 + 2j,
        _Thing(),
        object(),
        lambda: None,
        {1: "int key"},
        {("a",): 1},
        [1, {2.5: "float key"}],
        (None, [object()]),
        deque([b"x"]),
        {"ok": 1, "bad": {3}},
        np.array([object()], dtype=object),
        torch.zeros(2),
        range(3),
    ],
    ids=lambda v: type(v).__name__,
)
def test_values_it_cannot_store_raise_unsupported(value: Any) -> None:
    with pytest.raises(Unsupported):
        Packer().pack("v", value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(
            np.array(["left", "right"]),
        ),
        pytest.param(
            np.array([b"ab"]),
        ),
        pytest.param(
            np.array(["2020-01-01"], dtype="datetime64[D]"),
        ),
        pytest.param(
            np.complex128(1j),
        ),
        pytest.param(
            np.datetime64("2020-01-01"),
        ),
        pytest.param(
            np.array([1 + 2j]),
        ),
    ],
    ids=[
        "str-array",
        "bytes-array",
        "datetime-array",
        "complex-scalar",
        "datetime-scalar",
        "complex-array",
    ],
)
def test_what_pack_accepts_can_be_written_else_it_is_unsupported(value: Any) -> None:
    """Either pack refuses the value with Unsupported (capture skips it), or it round-trips."""
    try:
        back = roundtrip(value)
    except Unsupported:
        return
    assert same(back, value)


@pytest.mark.parametrize(
    "kind",
    [
        np.random.PCG64,
        np.random.PCG64DXSM,
        pytest.param(
            np.random.MT19937,
        ),
        pytest.param(
            np.random.Philox,
        ),
        pytest.param(
            np.random.SFC64,
        ),
    ],
    ids=lambda k: k.__name__,
)
def test_generators_of_every_numpy_bit_generator_round_trip(
    kind: type[np.random.BitGenerator],
) -> None:
    gen = np.random.Generator(kind(11))
    gen.random(3)
    state = generator_state(gen)
    expected = gen.random(4)
    gen.bit_generator.state = state
    try:
        back = roundtrip(gen)
    except Unsupported:
        return
    assert np.array_equal(back.random(4), expected)


def test_a_zero_dimensional_array_keeps_its_shape() -> None:
    value = np.array(2.5)
    back = roundtrip(value)
    assert back.shape == () and back.dtype == np.float64 and back == 2.5


def test_dotted_keys_do_not_collide_with_nested_ones() -> None:
    value = {"a.b": np.zeros(2), "a": {"b": np.ones(2)}}
    assert same(roundtrip(value), value)


def test_a_float64_scalar_comes_back_as_a_float64() -> None:
    back = roundtrip([np.float64(0.5), np.float64(-2.0)])
    assert [type(x) for x in back] == [np.float64, np.float64]


@pytest.mark.parametrize(
    "value", [np.float64("nan"), np.float64("inf"), np.float64("-inf")], ids=repr
)
def test_a_non_finite_float64_scalar_round_trips(value: np.float64) -> None:
    back = roundtrip({"best": value})
    assert math.isnan(back["best"]) if math.isnan(value) else back["best"] == value
