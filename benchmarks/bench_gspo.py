"""GSPO: what the framework costs around a training step, the KV cache, and the vectorised loss.

1. **Framework overhead.** ``GSPOTrainer`` on a SQLite store in a temporary directory (config,
   model and run entities; a ``GSPOStepCompleted`` event per step published on the bus and
   persisted; a checkpoint every 10 steps, weights and training state as safetensors blobs)
   against the *same* loop bare: ``GSPOState.create(policy, task, config)`` and ``gspo_step``
   N times, with the same seed and settings and no registry. Two ways, both reported:

   * **step-interleaved** (the row with the target, <= 3 %): a handler of ``GSPOStepCompleted``
     runs one step of the bare loop, so the two alternate step by step and a machine that
     speeds up or slows down (on this shared VM, ±8 % between runs a few seconds apart) affects
     both alike. The trainer's time is ``train()`` (the run's commits, the step events, the
     checkpoints, the final one included) and the flush of the event log, minus the bare steps;
     setup is timed apart on both sides (``extra``: building the trainer, its entities and
     policy, against building the bare state);
   * **whole runs**, alternated ABAB…, the minimum seconds per step of each side (setup
     included on both sides; steadier only on a quiet machine).

   Every run must produce the identical reward history (same seed ⇒ same numbers): that proves
   both sides did the same work.
2. **Rollout with and without the KV cache.** ``generate`` on a ``TinyCausalLM``, 16 prompts × 8
   samples, with ``use_cache=True`` against ``use_cache=False`` (every step recomputes the full
   forward). The EOS logit is pushed down (``lm_head.bias[EOS] = -30``) so every row samples
   exactly ``max_new_tokens`` tokens and both sides generate the same number of tokens. The rows
   report seconds per 1k generated tokens (tokens/s in ``extra``). Two shapes: the ``reverse``
   task's own (6 new tokens after a 6-token prompt, the default model) and a longer one (a model
   with ``max_seq_len=128``, 64 new tokens), where the cache matters more.
3. **Loss.** ``gspo_loss`` forward + backward on (B=128, T=32) float32 inputs against a Python
   loop over sequences computing the same per-sequence loss (masked mean log-ratio, ``exp``,
   clip, ``min``), summed, then backward. The two losses (1e-5) and gradients must agree first.

Everything runs with ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path

from common import Result, paused_gc

import forseti as fs

try:
    import torch

    from forseti.gspo import (
        GSPOConfigEntity,
        GSPOStepCompleted,
        GSPOTrainer,
        TinyCausalLM,
        TinyLMConfigEntity,
        generate,
        get_task,
        gspo_loss,
    )
    from forseti.gspo.step import GSPOState, gspo_step, pad_prompts
    from forseti.gspo.tasks import EOS, PAD, VOCAB_SIZE
except ImportError as exc:  # torch (the "train" extra) is optional
    MISSING: str | None = f"needs the train extra (torch, safetensors): {exc}"
else:
    MISSING = None

GROUP = "gspo"


# -- 1. framework overhead ------------------------------------------------------------------------


def _config(seed: int) -> GSPOConfigEntity:
    return GSPOConfigEntity(task="reverse", seed=seed, checkpoint_every=10)


def _check_run(reg: fs.EntityRegistry, trainer: GSPOTrainer, steps: int) -> None:
    """Every step event is in the log and every checkpoint was committed."""
    logged = reg.events(topic=GSPOStepCompleted)
    if [getattr(s.event, "step", None) for s in logged] != list(range(1, steps + 1)):
        raise RuntimeError(f"expected {steps} logged step events, found {len(logged)}")
    expected = steps // 10 + (steps % 10 != 0)  # every 10 steps, and the final one
    if len(trainer.checkpoints) != expected:
        raise RuntimeError(f"expected {expected} checkpoints, got {len(trainer.checkpoints)}")


def _bare_state(seed: int) -> GSPOState:
    torch.manual_seed(seed)  # what GSPOTrainer does before it builds the policy
    policy = TinyCausalLM(TinyLMConfigEntity(vocab_size=VOCAB_SIZE))
    return GSPOState.create(policy, get_task("reverse"), _config(seed))


def _interleaved_run(
    tmp: Path, index: int, steps: int, seed: int
) -> tuple[float, float, list[float], list[float], tuple[float, float]]:
    """A ``GSPOTrainer`` run on a fresh SQLite store whose step handler runs one step of the bare
    loop: the two alternate step by step, so drift on a shared machine hits both alike.

    Returns the trainer's seconds per step (``train()`` and the flush of the event log, minus
    the bare steps), the bare loop's seconds per step, both reward histories, and the seconds
    each side took to set up (building the trainer: its entities and policy; the bare state).
    """
    t0 = time.perf_counter()
    bare = _bare_state(seed)
    bare_setup = time.perf_counter() - t0
    bare_seconds: list[float] = []
    bare_rewards: list[float] = []

    def bare_step(event: GSPOStepCompleted) -> None:
        t = time.perf_counter()
        metrics = gspo_step(bare)
        bare_rewards.append(float(metrics["reward_mean"]))  # a loop reads at least its reward
        bare_seconds.append(time.perf_counter() - t)

    reg = fs.open(f"sqlite:///{tmp / f'interleaved{index}.db'}")
    try:
        reg.bus.subscribe(GSPOStepCompleted, bare_step)
        gc.collect()
        t0 = time.perf_counter()
        trainer = GSPOTrainer(reg, config=_config(seed), progress=False)
        t1 = time.perf_counter()
        trainer.train(steps)
        reg.flush_events()  # the step events are in the log, not just buffered
        elapsed = time.perf_counter() - t1
        _check_run(reg, trainer, steps)
        framework = (elapsed - sum(bare_seconds)) / steps
        rewards = [m["reward_mean"] for m in trainer.history]
        setup = (t1 - t0, bare_setup)
        return framework, sum(bare_seconds) / steps, rewards, bare_rewards, setup
    finally:
        reg.close()


def _trainer_run(tmp: Path, index: int, steps: int, seed: int) -> tuple[float, list[float]]:
    """Wall seconds of a whole ``GSPOTrainer`` run on a fresh SQLite store, and its rewards."""
    reg = fs.open(f"sqlite:///{tmp / f'run{index}.db'}")
    try:
        gc.collect()
        t0 = time.perf_counter()
        trainer = GSPOTrainer(reg, config=_config(seed), progress=False)
        trainer.train(steps)
        reg.flush_events()
        elapsed = time.perf_counter() - t0
        _check_run(reg, trainer, steps)
        return elapsed, [m["reward_mean"] for m in trainer.history]
    finally:
        reg.close()


def _bare_run(steps: int, seed: int) -> tuple[float, list[float]]:
    """Wall seconds of the same loop with no registry (build the policy and the state, step N
    times), and the rewards."""
    gc.collect()
    t0 = time.perf_counter()
    state = _bare_state(seed)
    rewards = []
    for _ in range(steps):
        metrics = gspo_step(state)
        rewards.append(float(metrics["reward_mean"]))
    return time.perf_counter() - t0, rewards


def bench_overhead(steps: int, rounds: int, abab_rounds: int, seed: int = 0) -> list[Result]:
    interleaved: list[tuple[float, float]] = []
    setups: list[tuple[float, float]] = []
    framework: list[float] = []
    bare: list[float] = []
    histories: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        _trainer_run(Path(tmp), -1, 3, seed)  # warm-up: first calls into torch, SQLite, safetensors
        _bare_run(3, seed)
        for r in range(rounds):
            f, b, h_trainer, h_bare, setup = _interleaved_run(Path(tmp), r, steps, seed)
            interleaved.append((f, b))
            setups.append(setup)
            histories += [h_trainer, h_bare]
        for r in range(abab_rounds):  # whole runs, ABAB…
            s, h = _trainer_run(Path(tmp), r, steps, seed)
            framework.append(s / steps)
            histories.append(h)
            s, h = _bare_run(steps, seed)
            bare.append(s / steps)
            histories.append(h)
    if any(h != histories[0] for h in histories[1:]):
        raise RuntimeError("GSPOTrainer and the bare loop produced different reward histories")
    ratios = [f / b for f, b in interleaved]
    f, b = interleaved[ratios.index(statistics.median_low(ratios))]
    label = f"reverse, SQLite, ckpt/10, {steps} steps"
    return [
        Result(
            f"GSPOTrainer s/step, step-interleaved ({label})",
            f,
            b,
            baseline_name="GSPOState.create + gspo_step, same seed, no registry; interleaved: "
            "one bare step in each GSPOStepCompleted handler (median run); whole runs: min of "
            "alternated runs",
            target_ratio=1.03,
            group=GROUP,
            samples=rounds * steps,
            extra={
                "runs_s_per_step": interleaved,
                "ratios": ratios,
                "overhead_s_per_step": f - b,
                "setup_s_trainer_vs_bare": setups,
                "final_reward": histories[0][-1],
            },
        ),
        Result(
            f"GSPOTrainer s/step, whole runs ABAB ({label})",
            min(framework),
            min(bare),
            group=GROUP,
            samples=abab_rounds * steps,
            extra={
                "framework_s_per_step": framework,
                "bare_s_per_step": bare,
                "framework_median_s": statistics.median(framework),
                "bare_median_s": statistics.median(bare),
            },
        ),
    ]


# -- 2. rollout with and without the KV cache ------------------------------------------------------


def _rollout_case(
    max_seq_len: int, prompt_len: int, new_tokens: int, calls: int, label: str
) -> Result:
    torch.manual_seed(0)
    model = TinyCausalLM(TinyLMConfigEntity(vocab_size=VOCAB_SIZE, max_seq_len=max_seq_len))
    model.eval()
    with torch.no_grad():
        model.lm_head.bias[EOS] = -30.0  # never stop early: both sides sample R tokens per row
    task = get_task("reverse", k=prompt_len - 2)
    prompts = task.sample_prompts(16, torch.Generator().manual_seed(0))
    ids, mask = pad_prompts(prompts, torch.device("cpu"))

    def sample(use_cache: bool) -> tuple[float, torch.Tensor, int]:
        gen = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        out = generate(
            model, ids, mask, num_samples=8, max_new_tokens=new_tokens,
            eos_id=EOS, pad_id=PAD, generator=gen, use_cache=use_cache,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
        return elapsed, out.response, int(out.response_mask.sum())

    sample(True)  # warm-up
    cached: list[float] = []
    full: list[float] = []
    same = 0.0
    with paused_gc():
        for i in range(calls):  # alternate
            t_cached, cached_tokens, n_tokens = sample(True)
            t_full, full_tokens, n_full = sample(False)
            cached.append(t_cached)
            full.append(t_full)
            if i == 0:  # both generate the same tokens (same generator seed)
                same = (cached_tokens == full_tokens).float().mean().item()
    if n_tokens != n_full or n_tokens != 16 * 8 * new_tokens:
        raise RuntimeError(f"expected {16 * 8 * new_tokens} tokens, got {n_tokens} and {n_full}")
    if same < 0.99:  # the same samples up to a rare float-rounding flip of a draw
        raise RuntimeError(f"cached and uncached sampling agree on only {same:.1%} of tokens")
    c, f = statistics.median(cached), statistics.median(full)
    per_k = 1000 / n_tokens
    return Result(
        f"rollout per 1k tokens, KV cache, {label}",
        c * per_k,
        f * per_k,
        baseline_name="generate(use_cache=False): a full forward per new token",
        group=GROUP,
        samples=calls,
        extra={
            "tokens_per_call": n_tokens,
            "tokens_per_s_cache": n_tokens / c,
            "tokens_per_s_no_cache": n_tokens / f,
            "speedup": f / c,
            "same_tokens_frac": same,
        },
    )


# -- 3. the loss -----------------------------------------------------------------------------------


def _loop_loss(
    logp: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
    eps_low: float, eps_high: float,
) -> torch.Tensor:  # fmt: skip
    """GSPO's loss one sequence at a time, written as the paper states it."""
    total = logp.new_zeros(())
    for i in range(logp.shape[0]):
        m = mask[i]
        s = (logp[i][m] - old[i][m]).mean().exp()  # geometric mean of the token ratios
        a = adv[i]
        total = total - torch.minimum(s * a, s.clamp(1 - eps_low, 1 + eps_high) * a)
    return total / logp.shape[0]


def bench_loss(n: int) -> list[Result]:
    B, T, G = 128, 32, 8
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T) right padding
    old = -3 * torch.rand(B, T, generator=g)
    base = old + 0.05 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    adv = adv - adv.view(-1, G).mean(1).repeat_interleave(G)  # group-centred like real advantages
    eps_low, eps_high = 3e-4, 4e-4

    def vectorised() -> tuple[torch.Tensor, torch.Tensor]:
        logp = base.clone().requires_grad_(True)
        loss, _ = gspo_loss(logp, old, mask, adv, eps_low=eps_low, eps_high=eps_high)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach(), logp.grad  # type: ignore[return-value]

    def loop() -> tuple[torch.Tensor, torch.Tensor]:
        logp = base.clone().requires_grad_(True)
        loss = _loop_loss(logp, old, mask, adv, eps_low, eps_high)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach(), logp.grad  # type: ignore[return-value]

    (lv, gv), (ll, gl) = vectorised(), loop()
    if abs(float(lv) - float(ll)) > 1e-5 or not torch.allclose(gv, gl, rtol=1e-4, atol=1e-7):
        raise RuntimeError(f"gspo_loss {float(lv)} != the per-sequence loop {float(ll)}")
    for _ in range(3):
        vectorised(), loop()
    vec: list[float] = []
    ref: list[float] = []
    with paused_gc():
        for _ in range(n):  # alternate
            t0 = time.perf_counter()
            vectorised()
            vec.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loop()
            ref.append(time.perf_counter() - t0)
    v, r = statistics.median(vec), statistics.median(ref)
    return [
        Result(
            f"gspo_loss forward+backward, B={B} T={T} fp32",
            v,
            r,
            baseline_name="a Python loop over sequences (same loss, summed, then backward)",
            group=GROUP,
            samples=n,
            extra={"loss": float(lv), "speedup": r / v},
        )
    ]


def run(quick: bool) -> list[Result]:
    if MISSING is not None:
        return [Result("gspo", skipped=MISSING, group=GROUP)]
    torch.set_num_threads(1)
    out: list[Result] = []
    out += bench_overhead(steps=20 if quick else 60, rounds=2 if quick else 3,
                          abab_rounds=1 if quick else 3)  # fmt: skip
    out.append(_rollout_case(32, 6, 6, 10 if quick else 40, "reverse (P=6, R=6)"))
    out.append(_rollout_case(128, 6, 64, 1 if quick else 5, "long (P=6, R=64, max_seq_len=128)"))
    out += bench_loss(20 if quick else 100)
    return out
