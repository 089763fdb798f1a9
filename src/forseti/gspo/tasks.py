"""Verifiable toy tasks that a tiny model learns from scratch with GSPO on a CPU (no downloads).

Vocabulary: digits 0–9 are ids 0–9, then ``BOS=10, SEP=11, EOS=12, PAD=13``. A prompt is
``[BOS, digits…, SEP]``; a response is the sampled tokens up to and including EOS (when sampled).

Partial-credit reward (GSPO.md), with ``k = len(target)``, ``n`` = tokens before EOS and
``hits`` = positions ``i < min(n, k)`` where ``response[i] == target[i]``::

    reward = hits/k − 0.5·|n − k|/k − 0.5·[no EOS]

A perfect answer scores 1. For an empty target (``CountTask`` with n = 0) the hit term is 1 for
an empty answer and 0 otherwise, and the length penalty uses k = 1: immediate EOS scores 1,
``7 EOS`` scores −0.5, ``7 7 EOS`` scores −1 — the same scale as a one-token target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..errors import ValidationError

__all__ = [
    "BOS", "SEP", "EOS", "PAD", "VOCAB_SIZE", "Vocab", "VOCAB",
    "RewardFunction", "reward_tensor", "partial_credit", "PartialCreditReward", "ExactMatchReward",
    "WeightedReward", "Task", "TargetTask", "ReverseTask", "CountTask", "get_task",
]  # fmt: skip

BOS, SEP, EOS, PAD = 10, 11, 12, 13
VOCAB_SIZE = 14


class Vocab:
    """Encode/decode for printing: digits as themselves, ``^`` BOS, ``|`` SEP, ``$`` EOS, ``_`` PAD."""

    symbols = "0123456789^|$_"

    def encode(self, text: str) -> list[int]:
        """``"^12|"`` → ``[10, 1, 2, 11]``."""
        bad = sorted(set(text) - set(self.symbols))
        if bad:
            raise ValidationError(f"cannot encode {bad!r}; symbols are {self.symbols!r}")
        return [self.symbols.index(c) for c in text]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """``[10, 1, 2, 11]`` → ``"^12|"`` (unknown ids print as ``?``)."""
        seq = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(self.symbols[i] if 0 <= i < VOCAB_SIZE else "?" for i in seq)


VOCAB = Vocab()


class RewardFunction(Protocol):
    """Scores responses: ``responses[i]`` runs up to and including EOS (if sampled),
    ``prompts[i]`` is the prompt without padding. A plain function of the two works."""

    def __call__(
        self, prompts: list[list[int]], responses: list[list[int]], /
    ) -> list[float] | Tensor: ...


def reward_tensor(values: list[float] | Tensor, n: int) -> Tensor:
    """A reward function's output as a finite float32 tensor of shape (n,)."""
    out = torch.as_tensor(values, dtype=torch.float32).detach().cpu().reshape(-1)  # (n,)
    if out.numel() != n:
        raise ValidationError(f"a reward function returned {out.numel()} rewards for {n} responses")
    if not bool(torch.isfinite(out).all()):
        raise ValidationError("a reward function returned a non-finite reward")
    return out


def _split(response: Sequence[int]) -> tuple[list[int], bool]:
    """The tokens before the first EOS, and whether there was an EOS."""
    body = list(response)
    if EOS in body:
        return body[: body.index(EOS)], True
    return body, False


def partial_credit(target: Sequence[int], response: Sequence[int]) -> float:
    """``hits/k − 0.5·|n − k|/k − 0.5·[no EOS]`` (see the module docstring for k = 0)."""
    body, has_eos = _split(response)
    k, n = len(target), len(body)
    hits = sum(1 for a, b in zip(body, target, strict=False) if a == b)
    hit_term = hits / k if k else float(n == 0)
    return hit_term - 0.5 * abs(n - k) / max(k, 1) - 0.5 * (not has_eos)


class PartialCreditReward:
    """The partial-credit reward against ``target_fn(prompt)``."""

    def __init__(self, target_fn: Callable[[list[int]], list[int]], name: str = "partial") -> None:
        self.target_fn, self.name = target_fn, name

    def __call__(self, prompts: list[list[int]], responses: list[list[int]], /) -> Tensor:
        _check_pairs(prompts, responses)
        scores = [
            partial_credit(self.target_fn(p), r) for p, r in zip(prompts, responses, strict=True)
        ]
        return torch.tensor(scores, dtype=torch.float32)  # (N,)


class ExactMatchReward:
    """1 when the response is exactly the target followed by EOS, else 0 (negative control)."""

    def __init__(self, target_fn: Callable[[list[int]], list[int]], name: str = "exact") -> None:
        self.target_fn, self.name = target_fn, name

    def __call__(self, prompts: list[list[int]], responses: list[list[int]], /) -> Tensor:
        _check_pairs(prompts, responses)
        hits = [
            _split(r) == (self.target_fn(p), True) for p, r in zip(prompts, responses, strict=True)
        ]
        return torch.tensor(hits, dtype=torch.float32)  # (N,)


class WeightedReward:
    """``Σ weight · fn(prompts, responses)``; :meth:`components` reports each term unweighted."""

    def __init__(
        self, terms: Sequence[tuple[RewardFunction, float]], names: Sequence[str] | None = None
    ) -> None:
        if not terms:
            raise ValidationError("WeightedReward needs at least one (function, weight) pair")
        for fn, weight in terms:
            if not callable(fn) or not isinstance(weight, (int, float)):
                raise ValidationError("WeightedReward terms are (callable, number) pairs")
        if names is not None and len(names) != len(terms):
            raise ValidationError(f"{len(names)} names for {len(terms)} reward terms")
        raw = list(names) if names is not None else [_name_of(fn) for fn, _ in terms]
        self.names = [n if raw.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(raw)]
        self.terms = [(fn, float(w)) for fn, w in terms]
        self.name = "weighted"

    def components(self, prompts: list[list[int]], responses: list[list[int]]) -> dict[str, Tensor]:
        """Each term's unweighted rewards, name → (N,) float32 (for metrics)."""
        _check_pairs(prompts, responses)
        return {
            name: reward_tensor(fn(prompts, responses), len(responses))
            for name, (fn, _) in zip(self.names, self.terms, strict=True)
        }

    def total(self, components: dict[str, Tensor]) -> Tensor:
        """Combine precomputed :meth:`components` into the weighted sum (N,)."""
        return torch.stack(
            [components[n] * w for n, (_, w) in zip(self.names, self.terms, strict=True)]
        ).sum(0)

    def __call__(self, prompts: list[list[int]], responses: list[list[int]], /) -> Tensor:
        return self.total(self.components(prompts, responses))


def _name_of(fn: Any) -> str:
    return str(getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def _check_pairs(prompts: list[list[int]], responses: list[list[int]]) -> None:
    if len(prompts) != len(responses):
        raise ValidationError(f"{len(prompts)} prompts but {len(responses)} responses")


def _digits(n: int, width: int, generator: torch.Generator) -> list[list[int]]:
    if n < 0:
        raise ValidationError(f"cannot sample {n} prompts")
    out: list[list[int]] = torch.randint(0, 10, (n, width), generator=generator).tolist()
    return out


@dataclass(kw_only=True, repr=False, eq=False)
class Task:
    """A verifiable task: prompts, the correct answer, and a reward (partial credit by default).

    ``reward_fn`` replaces the default reward (e.g. ``ExactMatchReward(task.target)``).
    ``eos_id`` and ``pad_id`` are the tokenizer's end and padding ids (the toy vocabulary's by
    default; a task for a Hugging Face model sets its tokenizer's).
    """

    name: str
    max_new_tokens: int
    reward_fn: RewardFunction | None = None
    eos_id: int = EOS
    pad_id: int = PAD

    @property
    def reward(self) -> RewardFunction:
        """The task's reward function."""
        return self.reward_fn if self.reward_fn is not None else PartialCreditReward(self.target)

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[list[int]]:
        """``n`` prompts ``[BOS, digits…, SEP]``, deterministic given the generator's state."""
        raise NotImplementedError

    def target(self, prompt: list[int]) -> list[int]:
        """The correct answer's digits (without EOS)."""
        raise NotImplementedError

    def exact(self, prompts: list[list[int]], responses: list[list[int]]) -> Tensor:
        """(N,) bool: the response is exactly the target followed by EOS."""
        return ExactMatchReward(self.target)(prompts, responses) > 0.5

    def _body(self, prompt: list[int]) -> list[int]:
        if len(prompt) < 2 or prompt[0] != BOS or prompt[-1] != SEP:
            raise ValidationError(f"a {self.name} prompt is [BOS, digits…, SEP], got {prompt}")
        return list(prompt[1:-1])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "reward_fn")
        return f"{type(self).__name__}({fields})"


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{name} must be a positive int, got {value!r}")
    return value


class TargetTask(Task):
    """Answer a fixed digit string (default ``4096``) whatever the random prompt digits are."""

    def __init__(
        self, target: str = "4096", *, prompt_len: int = 4, max_new_tokens: int | None = None,
        reward_fn: RewardFunction | None = None,
    ) -> None:  # fmt: skip
        if not isinstance(target, str) or not target.isdigit() or not target.isascii():
            raise ValidationError(f"target must be a non-empty string of digits, got {target!r}")
        self.answer = [int(c) for c in target]
        self.prompt_len = _positive("prompt_len", prompt_len)
        limit = max_new_tokens if max_new_tokens is not None else len(self.answer) + 2
        super().__init__(name="target", max_new_tokens=_positive("max_new_tokens", limit),
                         reward_fn=reward_fn)  # fmt: skip

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[list[int]]:
        return [[BOS, *d, SEP] for d in _digits(n, self.prompt_len, generator)]

    def target(self, prompt: list[int]) -> list[int]:
        self._body(prompt)
        return list(self.answer)


class ReverseTask(Task):
    """Answer the ``k`` prompt digits in reverse order."""

    def __init__(
        self, k: int = 4, *, max_new_tokens: int | None = None,
        reward_fn: RewardFunction | None = None,
    ) -> None:  # fmt: skip
        self.k = _positive("k", k)
        limit = max_new_tokens if max_new_tokens is not None else k + 2
        super().__init__(name="reverse", max_new_tokens=_positive("max_new_tokens", limit),
                         reward_fn=reward_fn)  # fmt: skip

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[list[int]]:
        return [[BOS, *d, SEP] for d in _digits(n, self.k, generator)]

    def target(self, prompt: list[int]) -> list[int]:
        return self._body(prompt)[::-1]


class CountTask(Task):
    """Prompt ``[BOS, n, SEP]`` ⇒ answer ``n`` copies of ``digit`` (7), n uniform in 0..max_n."""

    def __init__(
        self, max_n: int = 9, *, digit: int = 7, max_new_tokens: int | None = None,
        reward_fn: RewardFunction | None = None,
    ) -> None:  # fmt: skip
        if isinstance(max_n, bool) or not isinstance(max_n, int) or not 0 <= max_n <= 9:
            raise ValidationError(
                f"max_n must be an int in [0, 9] (one prompt digit), got {max_n!r}"
            )
        if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 9:
            raise ValidationError(f"digit must be in [0, 9], got {digit!r}")
        limit = max_new_tokens if max_new_tokens is not None else max_n + 2
        if _positive("max_new_tokens", limit) < max_n + 1:
            raise ValidationError(
                f"max_new_tokens={limit} cannot hold {max_n} digits and EOS (needs {max_n + 1})"
            )
        self.max_n, self.digit = max_n, digit
        super().__init__(name="count", max_new_tokens=limit, reward_fn=reward_fn)

    def sample_prompts(self, n: int, generator: torch.Generator) -> list[list[int]]:
        if n < 0:
            raise ValidationError(f"cannot sample {n} prompts")
        counts: list[int] = torch.randint(0, self.max_n + 1, (n,), generator=generator).tolist()
        return [[BOS, c, SEP] for c in counts]

    def target(self, prompt: list[int]) -> list[int]:
        body = self._body(prompt)
        if len(body) != 1 or not 0 <= body[0] <= 9:
            raise ValidationError(f"a count prompt is [BOS, n, SEP], got {prompt}")
        return [self.digit] * body[0]


_TASKS: dict[str, type[Task]] = {"target": TargetTask, "reverse": ReverseTask, "count": CountTask}


_REWARDS: dict[str, type[PartialCreditReward] | type[ExactMatchReward]] = {
    "partial": PartialCreditReward,
    "exact": ExactMatchReward,
}


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name: ``"target"``, ``"reverse"`` or ``"count"``.

    ``reward="partial"`` (the default) or ``reward="exact"`` (0/1, the negative control) picks a
    built-in reward by name, so a run's ``GSPOConfigEntity.task_params`` can name it.
    """
    if name not in _TASKS:
        raise ValidationError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    reward = kwargs.pop("reward", None)
    if reward is not None and reward not in _REWARDS:
        raise ValidationError(f"unknown reward {reward!r}; known: {', '.join(sorted(_REWARDS))}")
    try:
        task = _TASKS[name](**kwargs)
    except TypeError as exc:
        raise ValidationError(f"bad arguments for task {name!r}: {exc}") from None
    if reward is not None:
        task.reward_fn = _REWARDS[reward](task.target)
    return task
