"""One GSPO step in plain torch: rollout → rewards → advantages → old log-probs → updates.

This is the whole algorithm, readable top to bottom; :class:`~forseti.gspo.GSPOTrainer` adds
the entities, events and checkpoints around it, and the benchmark runs it bare as the baseline.
Metrics stay tensors until the step ends (one host sync per step, none in the inner loop).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..errors import ValidationError
from .entities import GSPOConfigEntity
from .generation import Generation, generate, sequence_logprobs
from .loss import group_advantages, gspo_loss
from .tasks import PAD, Task, reward_tensor

__all__ = ["GSPOState", "Rollout", "pad_prompts", "rollout", "update", "gspo_step"]


@dataclass
class GSPOState:
    """What a step needs: the policy, its optimizer, the task, the settings and the generators.

    The three generators (prompt sampling, response sampling, minibatch shuffling) are the only
    randomness, so the same seed gives the same run, and their states go into checkpoints.
    """

    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    task: Task
    config: GSPOConfigEntity
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    step: int = 0
    #: a frozen copy of the starting policy, for the KL term (only when ``config.beta > 0``)
    reference: torch.nn.Module | None = None

    @classmethod
    def create(
        cls,
        policy: torch.nn.Module,
        task: Task,
        config: GSPOConfigEntity,
        device: torch.device | str | None = None,
    ) -> GSPOState:
        dev = torch.device(device) if device is not None else next(policy.parameters()).device
        optimizer = torch.optim.Adam(
            policy.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        gens = {}
        for offset, name in enumerate(("prompts", "sample", "shuffle")):
            g = torch.Generator(device="cpu" if name == "prompts" else dev)
            g.manual_seed(config.seed * 1000 + offset)
            gens[name] = g
        reference = None
        if config.beta > 0:
            reference = copy.deepcopy(policy).requires_grad_(False)
        return cls(policy, optimizer, task, config, dev, gens, reference=reference)


@dataclass
class Rollout:
    """One rollout: B prompts × G responses, scored, with advantages and old log-probs."""

    gen: Generation
    rewards: torch.Tensor  # (N,) float32
    group_ids: torch.Tensor  # (N,) long: row n belongs to prompt n // G
    advantages: torch.Tensor  # (N,) float32
    old_logp: torch.Tensor  # (N, R) float32, from the policy that sampled
    exact: torch.Tensor  # (N,) bool: the answer is exactly right


def pad_prompts(
    prompts: list[list[int]], device: torch.device, pad_id: int = PAD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(B, P)`` ids and a mask (1 on real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA (log-probs are still computed in fp32); nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rollout(state: GSPOState) -> Rollout:
    """Sample B×G responses, score them, and compute advantages and old log-probs."""
    cfg, dev, policy = state.config, state.device, state.policy
    task = state.task
    prompts = task.sample_prompts(cfg.prompts_per_step, state.generators["prompts"])
    ids, mask = pad_prompts(prompts, dev, task.pad_id)
    with torch.no_grad(), _autocast(dev):
        gen = generate(
            policy,
            ids,
            mask,
            num_samples=cfg.group_size,
            max_new_tokens=cfg.max_new_tokens or state.task.max_new_tokens,
            temperature=cfg.temperature,
            eos_id=task.eos_id,
            pad_id=task.pad_id,
            generator=state.generators["sample"],
        )
    rows = [p for p in prompts for _ in range(cfg.group_size)]
    responses = _responses(gen)
    rewards = reward_tensor(task.reward(rows, responses), len(rows)).to(dev)  # checked
    exact = torch.as_tensor(task.exact(rows, responses), dtype=torch.bool).to(dev)
    group_ids = torch.arange(len(prompts), device=dev).repeat_interleave(cfg.group_size)
    advantages = group_advantages(rewards, group_ids, eps=cfg.adv_eps)
    with torch.no_grad(), _autocast(dev):  # recomputed in fp32 by the path the update uses
        old_logp = sequence_logprobs(
            policy,
            gen.tokens,
            gen.attention_mask,
            gen.prompt_len,
            cfg.temperature,
        )
    return Rollout(gen, rewards, group_ids, advantages, old_logp, exact)


def _responses(gen: Generation) -> list[list[int]]:
    """Each row's response tokens (through EOS), as lists (rewards are plain Python)."""
    lengths = gen.response_mask.sum(dim=1).tolist()
    rows = gen.response.tolist()
    return [row[:n] for row, n in zip(rows, lengths, strict=True)]


def _minibatches(n: int, parts: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen, device=gen.device)
    yield from torch.tensor_split(order, parts)


def update(state: GSPOState, ro: Rollout) -> dict[str, torch.Tensor]:
    """``minibatches`` optimizer steps on the rollout; metrics as 0-dim tensors."""
    cfg, policy, opt = state.config, state.policy, state.optimizer
    gen = ro.gen
    mask = gen.response_mask
    sums: dict[str, torch.Tensor] = {}
    for idx in _minibatches(mask.shape[0], cfg.minibatches, state.generators["shuffle"]):
        with _autocast(state.device):
            logp = sequence_logprobs(
                policy,
                gen.tokens[idx],
                gen.attention_mask[idx],
                gen.prompt_len,
                cfg.temperature,
            )
        ref_logp = None
        if cfg.beta > 0:
            if state.reference is None:
                raise ValidationError("beta > 0 needs a reference policy (GSPOState.reference)")
            with torch.no_grad(), _autocast(state.device):
                ref_logp = sequence_logprobs(
                    state.reference,
                    gen.tokens[idx],
                    gen.attention_mask[idx],
                    gen.prompt_len,
                    cfg.temperature,
                )
        loss, metrics = gspo_loss(
            logp,
            ro.old_logp[idx],
            mask[idx],
            ro.advantages[idx],
            eps_low=cfg.eps_low,
            eps_high=cfg.eps_high,
            level=cfg.level,
            beta=cfg.beta,
            ref_logp=ref_logp,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), float("inf"))
        opt.step()
        with torch.no_grad():
            valid = mask[idx]
            # k3 estimate of KL(old || new) on tokens sampled from old: r = new/old
            log_r = (logp.detach() - ro.old_logp[idx]).masked_fill(~valid, 0.0)
            k3 = (log_r.exp() - 1.0 - log_r).masked_fill(~valid, 0.0).sum() / valid.sum()
        step_metrics = {**_tensors(metrics), "grad_norm": norm.detach(), "policy_kl": k3}
        for key, value in step_metrics.items():
            value = value.float()
            if key in sums and key in _EXTREMES:
                sums[key] = _EXTREMES[key](sums[key], value)
            else:
                sums[key] = sums.get(key, torch.zeros((), device=state.device)) + value
    return {k: v if k in _EXTREMES else v / cfg.minibatches for k, v in sums.items()}


_EXTREMES = {"ratio_min": torch.minimum, "ratio_max": torch.maximum}
"""Metrics that are the extreme over the step's minibatches (the rest are means)."""


def _tensors(metrics: object) -> dict[str, torch.Tensor]:
    """The loss metrics as tensors, whatever container gspo_loss returns them in."""
    raw = metrics if isinstance(metrics, dict) else vars(metrics)
    return {
        k: (v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v)))
        for k, v in raw.items()
    }


def rollout_metrics(ro: Rollout, group_size: int) -> dict[str, torch.Tensor]:
    """Reward, zero-variance groups, lengths and truncation of a rollout, as tensors."""
    gen = ro.gen
    lengths = gen.lengths.float()
    by_group = ro.rewards.view(-1, group_size)
    mask = gen.response_mask
    return {
        # the mean negative log-prob of the sampled tokens under the policy that sampled them:
        # an unbiased estimate of its per-token entropy (no full distribution needed)
        "entropy": (-ro.old_logp).masked_fill(~mask, 0.0).sum() / mask.sum(),
        "reward_mean": ro.rewards.mean(),
        "reward_std": ro.rewards.std(),
        "exact": ro.exact.float().mean(),
        "frac_reward_zero_std": (by_group.std(dim=1) == 0).float().mean(),
        "length_mean": lengths.mean(),
        "length_min": lengths.min(),
        "length_max": lengths.max(),
        "truncated_frac": gen.truncated.float().mean(),
        "tokens": gen.response_mask.sum().float(),
    }


def gspo_step(state: GSPOState) -> dict[str, torch.Tensor]:
    """One full step; returns its metrics as 0-dim tensors (``float(v)`` to read)."""
    ro = rollout(state)
    metrics = rollout_metrics(ro, state.config.group_size)
    metrics.update(update(state, ro))
    state.step += 1
    return metrics
