"""Verifiable toy tasks and reward functions (GSPO.md, "Toy tasks")."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from forseti.errors import ValidationError
from forseti.gspo.generation import generate, left_pad
from forseti.gspo.model import TinyCausalLM, TinyLMConfigEntity
from forseti.gspo.tasks import (
    BOS,
    EOS,
    PAD,
    SEP,
    VOCAB,
    VOCAB_SIZE,
    CountTask,
    ExactMatchReward,
    PartialCreditReward,
    ReverseTask,
    RewardFunction,
    TargetTask,
    WeightedReward,
    get_task,
    partial_credit,
    reward_tensor,
)

torch.set_num_threads(1)


def score(task: RewardFunction, prompt: list[int], responses: list[list[int]]) -> list[float]:
    out = reward_tensor(task([prompt] * len(responses), responses), len(responses))
    return [round(float(x), 6) for x in out]


def test_vocabulary_constants_and_vocab_helper() -> None:
    assert (BOS, SEP, EOS, PAD, VOCAB_SIZE) == (10, 11, 12, 13, 14)
    assert VOCAB.encode("^409|") == [BOS, 4, 0, 9, SEP]
    assert VOCAB.decode([BOS, 4, 0, 9, SEP, 6, EOS, PAD]) == "^409|6$_"
    assert VOCAB.decode(torch.tensor([1, 99])) == "1?"
    with pytest.raises(ValidationError):
        VOCAB.encode("12x")


def test_target_task_rewards_by_hand() -> None:
    task = TargetTask("4096")
    prompt = [BOS, 1, 2, 3, 4, SEP]
    assert task.target(prompt) == [4, 0, 9, 6] and task.max_new_tokens == 6
    responses = [
        [4, 0, 9, 6, EOS],  # perfect
        [EOS],  # empty answer: 0 − 0.5·4/4
        [],  # nothing at all, no EOS: 0 − 0.5 − 0.5
        [4, 0, 9, 6],  # right digits, missing EOS: 1 − 0.5
        [4, 0, 9, 6, 6, EOS],  # one too long: 1 − 0.5·1/4
        [4, 1, 9, EOS],  # 2 hits, one short: 2/4 − 0.5·1/4
        [6, 9, 0, 4, EOS],  # right length, no hits
        [4, 0, 9, 6, EOS, 3],  # anything after the EOS is not part of the answer
    ]
    assert score(task.reward, prompt, responses) == [1.0, -0.5, -1.0, 0.5, 0.875, 0.375, 0.0, 1.0]
    assert task.exact([prompt] * 8, responses).tolist() == [
        True, False, False, False, False, False, False, True,
    ]  # fmt: skip


def test_reverse_task_rewards_by_hand() -> None:
    task = ReverseTask(k=4)
    prompt = [BOS, 1, 2, 3, 4, SEP]
    assert task.target(prompt) == [4, 3, 2, 1]
    responses = [
        [4, 3, 2, 1, EOS],
        [1, 2, 3, 4, EOS],  # the prompt copied: no hits
        [4, 3, EOS],  # 2/4 − 0.5·2/4
        [4, 3, 2, 1, 0, 0],  # 1 − 0.5·2/4 − 0.5
        [4, 0, 2, 0, EOS],  # 2/4
    ]
    assert score(task.reward, prompt, responses) == [1.0, 0.0, 0.25, 0.25, 0.5]
    assert ExactMatchReward(task.target)([prompt] * 5, responses).tolist() == [1, 0, 0, 0, 0]


def test_count_task_rewards_by_hand_including_n_zero() -> None:
    task = CountTask(max_n=9)
    assert task.max_new_tokens == 11
    three = [BOS, 3, SEP]
    assert task.target(three) == [7, 7, 7]
    got = score(task.reward, three, [[7, 7, 7, EOS], [7, EOS], [7, 7, 7, 7, EOS], [EOS], [7, 7]])
    assert got == [1.0, 0.0, round(1 - 0.5 / 3, 6), -0.5, round(2 / 3 - 0.5 / 3 - 0.5, 6)]
    zero = [BOS, 0, SEP]  # k = 0: empty answer scores 1; each extra token costs 0.5
    assert task.target(zero) == []
    assert score(task.reward, zero, [[EOS], [7, EOS], [7, 7, EOS], [7]]) == [1.0, -0.5, -1.0, -1.0]
    assert task.exact([zero, zero], [[EOS], [7, EOS]]).tolist() == [True, False]


@given(
    target=st.lists(st.integers(0, 9), max_size=6),
    response=st.lists(st.integers(0, 13), max_size=10),
)
def test_partial_credit_is_at_most_one_and_one_exactly_when_right(
    target: list[int], response: list[int]
) -> None:
    r = partial_credit(target, response)
    right = EOS in response and response[: response.index(EOS)] == target
    assert r <= 1.0 and (r == 1.0) == right
    assert r >= -0.5 * len(response) - 1.5


@pytest.mark.parametrize("name", ["target", "reverse", "count"])
def test_prompts_are_deterministic_and_well_formed(name: str) -> None:
    task = get_task(name)
    a = task.sample_prompts(64, torch.Generator().manual_seed(0))
    b = task.sample_prompts(64, torch.Generator().manual_seed(0))
    c = task.sample_prompts(64, torch.Generator().manual_seed(1))
    assert a == b and a != c and len(a) == 64
    width = {"target": 4, "reverse": 4, "count": 1}[name]
    for p in a:
        assert p[0] == BOS and p[-1] == SEP and len(p) == width + 2
        assert all(0 <= d <= 9 for d in p[1:-1])
        assert len(task.target(p)) + 1 <= task.max_new_tokens  # the answer and EOS fit
    if name == "count":
        assert {p[1] for p in a} == set(range(10))  # n covers 0..max_n
    assert task.sample_prompts(0, torch.Generator()) == []


def test_task_and_get_task_validation() -> None:
    three = get_task("reverse", k=3)
    assert isinstance(three, ReverseTask) and three.k == 3 and three.max_new_tokens == 5
    assert get_task("target", target="123").target([BOS, 0, SEP]) == [1, 2, 3]
    assert get_task("count", max_n=4).max_new_tokens == 6
    with pytest.raises(ValidationError, match="known tasks"):
        get_task("sort")
    with pytest.raises(ValidationError, match="bad arguments"):
        get_task("reverse", width=3)
    bad: list[Callable[[], object]] = [
        lambda: TargetTask("40a6"),
        lambda: TargetTask(""),
        lambda: ReverseTask(k=0),
        lambda: CountTask(max_n=10),
        lambda: CountTask(max_n=9, max_new_tokens=9),  # 9 sevens + EOS need 10
        lambda: ReverseTask(max_new_tokens=0),
    ]
    for make in bad:
        with pytest.raises(ValidationError):
            make()
    with pytest.raises(ValidationError):
        ReverseTask().target([1, 2, 3])  # no BOS/SEP
    with pytest.raises(ValidationError):
        CountTask().target([BOS, 1, 2, SEP])
    assert "k=4" in repr(ReverseTask())


def test_plain_function_is_a_reward_function_and_weighted_reward_reports_components() -> None:
    def brevity(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        return [-float(len(r)) for r in responses]

    task = ReverseTask(reward_fn=brevity)  # a plain function satisfies RewardFunction
    assert task.reward is brevity
    prompt = [BOS, 1, 2, 3, 4, SEP]
    responses = [[4, 3, 2, 1, EOS], [EOS], [4, 3, 2, 1, 0, 0]]
    combo = WeightedReward([(PartialCreditReward(ReverseTask().target), 1.0), (brevity, 0.1)])
    parts = combo.components([prompt] * 3, responses)
    assert list(parts) == ["partial", "brevity"]
    assert parts["partial"].tolist() == [1.0, -0.5, 0.25]
    assert parts["brevity"].tolist() == [-5.0, -1.0, -6.0]
    total = combo([prompt] * 3, responses)
    torch.testing.assert_close(total, torch.tensor([0.5, -0.6, -0.35]))
    torch.testing.assert_close(combo.total(parts), total)
    twice = WeightedReward([(brevity, 1.0), (brevity, 2.0)])
    assert twice.names == ["brevity_0", "brevity_1"]
    assert twice([prompt], [[EOS]]).tolist() == [-3.0]
    with pytest.raises(ValidationError):
        WeightedReward([])
    with pytest.raises(ValidationError):
        WeightedReward([(brevity, 1.0)], names=["a", "b"])

    def two(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        return [0.0, 0.0]

    with pytest.raises(ValidationError, match="2 rewards for 3"):
        WeightedReward([(two, 1.0)]).components([prompt] * 3, responses)
    with pytest.raises(ValidationError, match="non-finite"):
        reward_tensor([float("nan")], 1)
    with pytest.raises(ValidationError):
        ReverseTask().reward([prompt], [])


def test_rewards_from_a_real_generation() -> None:
    torch.manual_seed(0)
    model = TinyCausalLM(TinyLMConfigEntity()).eval()
    task = get_task("count")
    prompts = task.sample_prompts(4, torch.Generator().manual_seed(0))
    ids, mask = left_pad(prompts, PAD)
    gen = generate(
        model, ids, mask, num_samples=3, max_new_tokens=task.max_new_tokens, eos_id=EOS,
        pad_id=PAD, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert gen.prompt_lists() == [p for p in prompts for _ in range(3)]
    responses = gen.response_lists()
    assert [len(r) for r in responses] == gen.lengths.tolist()
    rewards = reward_tensor(task.reward(gen.prompt_lists(), responses), 12)
    assert rewards.shape == (12,) and (rewards <= 1).all()
    expected = [
        partial_credit(task.target(p), r)
        for p, r in zip(gen.prompt_lists(), responses, strict=True)
    ]
    torch.testing.assert_close(rewards, torch.tensor(expected))


def test_get_task_picks_a_built_in_reward_by_name() -> None:
    from forseti.gspo.tasks import EOS, ExactMatchReward, PartialCreditReward, get_task

    exact = get_task("reverse", reward="exact")
    assert isinstance(exact.reward, ExactMatchReward)
    assert isinstance(get_task("reverse", reward="partial").reward, PartialCreditReward)
    prompt = [10, 1, 2, 3, 4, 11]
    assert exact.reward([prompt], [[4, 3, 2, 1, EOS]]).tolist() == [1.0]
    assert exact.reward([prompt], [[4, 3, 2, 0, EOS]]).tolist() == [0.0]  # no partial credit
    with pytest.raises(ValidationError, match="unknown reward"):
        get_task("reverse", reward="sparse")
