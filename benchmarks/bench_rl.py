"""forseti.rl: what a Forseti-managed stable-baselines3 run costs, and the zoo presets' curves.

1. **Overhead** (target: <= 3 %). ``fs.rl.train_sb3(reg, algo, env, preset, total_timesteps=N,
   seed=s, checkpoint_every=N // 5)`` on a SQLite store in a temporary directory (the embedded
   default: config, environment spec, policy model and run entities; an ``RLStepMetrics`` event
   per SB3 log dump, persisted; a checkpoint every N // 5 steps (four, and the final one), each
   the policy weights and the whole training state as safetensors blobs, committed with the
   run's next version) against
   plain SB3 with the same settings and seed: ``PPO("MlpPolicy", make_vec_env("CartPole-v1",
   n_envs=8, seed=s), seed=s, device="cpu", **kwargs).learn(N)`` (``SAC`` on ``Pendulum-v1``
   alike), its kwargs the preset's (a ``"lin_<x>"`` schedule as the zoo computes it,
   ``progress_remaining * x``, which is what Forseti passes). Times are CPU seconds (:func:`time.process_time`, every
   thread of the process: the event-log writer's too; :func:`time.thread_time` for the plain
   run's thread), steadier than wall time on a shared machine. Two ways, both reported:

   * **rollout-interleaved** (the row with the target): the plain run's single ``learn(N)`` runs
     in a thread that a handler of the Forseti run's ``RLStepMetrics`` and ``CheckpointCreated``
     events lets catch up to the event's timestep (PPO: every rollout of 256 steps; SAC: every
     4 episodes and every checkpoint), the global random generators swapped at each hand-over
     so each run sees its own. A machine that speeds up or slows down (this shared 2-core VM:
     the same plain PPO run took 7.4 and 11.9 CPU s a minute apart) then affects both alike.
     Forseti's time is ``train_sb3`` and the flush of the event log minus the handlers; the
     plain run's is its constructor and its thread. The row is the run with the median ratio
     (PPO 5 runs, quick 2; SAC 3, quick 1; of two, the lower);
   * **whole runs**, alternated ABBA… (full mode only), the minimum of each side (wall times and
     steps/s in ``extra``).

   PPO CartPole: 20,000 steps (quick: 2,048); SAC Pendulum: 2,000 (quick: 300). Every run must
   be the same computation: the final checkpoint's policy weights (loaded back from the store)
   must equal the plain SB3 model's **bit for bit**, and PPO's final ``ep_rew_mean`` too; the
   benchmark raises when they differ.
2. **Learning curves** (full mode only): the zoo presets from scratch with ``train_sb3`` on a
   memory store, ``ep_rew_mean`` (SB3's mean over the last 100 episodes) collected from the
   ``RLStepMetrics`` events and deterministic evaluations from ``EvaluationCompleted``: PPO
   CartPole-v1, seeds 0–2, the zoo's 100,000 steps (an evaluation of 5 episodes every 10,000);
   SAC Pendulum-v1, seeds 0–1, the zoo's 20,000 steps (logged every episode, 5 evaluation
   episodes every 2,000). Writes ``docs/img/rl_curves.png`` and ``docs/img/rl_curves.csv``; the
   rows give the first logged step at which ``ep_rew_mean`` reached each threshold.

Everything runs with ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import csv
import gc
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, Result

import forseti as fs

try:
    import numpy as np
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
except ImportError as exc:  # stable-baselines3 (the "rl" extra) is optional
    MISSING: str | None = f"needs the rl extra (stable-baselines3, gymnasium): {exc}"
else:
    MISSING = None

GROUP = "rl"
IMG = REPO_ROOT / "docs" / "img"


# -- 1. overhead --------------------------------------------------------------------------------


def _schedule(value: Any) -> Any:
    """A ``"lin_<x>"`` schedule as rl-baselines3-zoo writes it, ``progress_remaining * x``
    (written here independently of Forseti); anything else as it is."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def _plain_model(algo: str, env_id: str, cfg: Any, seed: int) -> BaseAlgorithm:
    """Plain SB3: ``PPO("MlpPolicy", make_vec_env(env_id, n_envs, seed=seed), seed=seed, ...)``."""
    cls = {"PPO": PPO, "SAC": SAC}[algo]
    kwargs = {k: _schedule(v) for k, v in cfg.algorithm_kwargs().items()}
    venv = make_vec_env(env_id, n_envs=cfg.n_envs, seed=seed)
    return cls(cfg.policy, venv, seed=seed, device="cpu", **kwargs)


def _weights(model: BaseAlgorithm) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


def _rng_state() -> tuple[Any, Any, Any]:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_state(state: tuple[Any, Any, Any]) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


class _Lockstep:
    """A plain SB3 model's ``learn(n)`` — one call, untouched — in a thread that runs only while
    the main thread waits in :meth:`advance`, up to its first rollout boundary at or past a
    timestep. The global random generators (Python's, numpy's, torch's) are swapped at each
    hand-over, so the plain run and the Forseti run each see their own, as if each ran alone.
    ``cpu`` is the plain thread's CPU seconds (:func:`time.thread_time`)."""

    def __init__(self, model: BaseAlgorithm, n: int) -> None:
        self.model, self.n = model, n
        self.target = 0
        self.cpu = 0.0
        self.finished = False
        self.error: BaseException | None = None
        self._rng = _rng_state()  # the plain run's generators, as its constructor left them
        self._go, self._paused = threading.Semaphore(0), threading.Semaphore(0)
        self._t0 = 0.0
        self._thread = threading.Thread(target=self._run, name="plain-sb3", daemon=True)
        self._thread.start()

    # the plain thread
    def _run(self) -> None:
        torch.set_num_threads(1)
        lock = self

        class Pause(BaseCallback):
            def _on_rollout_start(self) -> None:
                if self.model.num_timesteps >= lock.target:
                    lock._pause()

            def _on_step(self) -> bool:
                return True

        self._go.acquire()
        self._t0 = time.thread_time()
        try:
            self.model.learn(self.n, callback=Pause())
        except BaseException as exc:  # reported by advance()
            self.error = exc
        self.cpu += time.thread_time() - self._t0
        self.finished = True
        self._paused.release()

    def _pause(self) -> None:
        self.cpu += time.thread_time() - self._t0
        self._paused.release()
        self._go.acquire()
        self._t0 = time.thread_time()

    # the main thread
    def advance(self, target: int) -> None:
        if self.finished:
            return
        self.target = target
        mine = _rng_state()
        _set_rng_state(self._rng)
        self._go.release()
        self._paused.acquire()
        self._rng = _rng_state()
        _set_rng_state(mine)
        if self.error is not None:
            raise RuntimeError(f"the plain SB3 run failed: {self.error!r}") from self.error

    def finish(self) -> None:
        self.advance(2**62)
        self._thread.join()


def _interleaved(
    tmp: Path, index: int, algo: str, env_id: str, cfg: Any, n: int, seed: int
) -> dict[str, Any]:
    """One Forseti run on a fresh SQLite store, with a plain SB3 run of the same settings and
    seed advanced in lockstep: at each ``RLStepMetrics`` (PPO: every rollout) and
    ``CheckpointCreated`` event a handler lets the plain run catch up to the event's timestep, so
    a machine that speeds up or slows down affects both alike. Forseti's CPU seconds are those
    of ``train_sb3`` and the flush of the event log, minus the handlers'; the plain run's are
    its constructor's and its thread's."""
    gc.collect()
    c0 = time.process_time()
    plain_model = _plain_model(algo, env_id, cfg, seed)
    plain_build = time.process_time() - c0
    lock = _Lockstep(plain_model, n)
    handler_s = 0.0

    def catch_up(event: Any) -> None:
        nonlocal handler_s
        t = time.process_time()
        lock.advance(event.timestep)
        handler_s += time.process_time() - t

    reg = fs.open(f"sqlite:///{tmp / f'{algo}-lockstep-{index}.db'}")
    try:
        reg.bus.subscribe(fs.rl.RLStepMetrics, catch_up)
        reg.bus.subscribe(fs.rl.CheckpointCreated, catch_up)
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        run = _train(reg, algo, env_id, cfg, n, seed)
        reg.flush_events()  # the events are in the log, not just buffered
        cpu = time.process_time() - c0 - handler_s
        wall = time.perf_counter() - w0
        lock.finish()
        _check_run(reg, run, algo, n)
        weights = _weights(fs.rl.load_policy(reg, fs.rl.latest_checkpoint(reg, run)))
        same = _same(weights, _weights(plain_model))
        returns = [e["r"] for e in plain_model.ep_info_buffer]
        plain_rew = float(np.mean(returns)) if returns else float("nan")
        rew = float(run.metrics.get("ep_rew_mean", float("nan")))
        return {
            "forseti_cpu": cpu,
            "plain_cpu": plain_build + lock.cpu,
            "forseti_wall_incl_plain": wall,
            "identical": same and (algo != "PPO" or rew == plain_rew or not returns),
            "weights": weights,
            "ep_rew_mean": rew,
            "plain_ep_rew_mean": plain_rew,
            "checkpoints": len(reg.events(topic=fs.rl.CheckpointCreated)),
            "step_events": len(reg.events(topic=fs.rl.RLStepMetrics)),
        }
    finally:
        reg.close()


def _train(reg: fs.EntityRegistry, algo: str, env_id: str, cfg: Any, n: int, seed: int) -> Any:
    """The Forseti side: ``train_sb3`` with a checkpoint every ``n // 5`` steps, no bar."""
    return fs.rl.train_sb3(
        reg,
        algo,
        env_id,
        cfg,
        total_timesteps=n,
        seed=seed,
        checkpoint_every=n // 5,
        progress=False,
    )


def _check_run(reg: fs.EntityRegistry, run: Any, algo: str, n: int) -> None:
    """The run completed, and each of its checkpoints is in the store with its event."""
    if run.status != "completed" or run.step < n:
        raise RuntimeError(f"{algo} run ended {run.status} at step {run.step} of {n}")
    ckpts = fs.rl.run_checkpoints(reg, run)
    if not ckpts or len(reg.events(topic=fs.rl.CheckpointCreated)) != len(ckpts):
        raise RuntimeError(
            f"{len(ckpts)} checkpoints but not as many CheckpointCreated events in the log"
        )


def _plain_run(
    algo: str, env_id: str, cfg: Any, n: int, seed: int
) -> tuple[float, float, dict[str, Any]]:
    """A whole plain SB3 run: CPU and wall seconds, and the final weights."""
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    model = _plain_model(algo, env_id, cfg, seed)
    model.learn(n)
    return time.process_time() - c0, time.perf_counter() - w0, _weights(model)


def _forseti_run(
    tmp: Path, index: int, algo: str, env_id: str, cfg: Any, n: int, seed: int
) -> tuple[float, float, dict[str, Any]]:
    """A whole ``fs.rl.train_sb3`` run on a fresh SQLite store: CPU and wall seconds (the run and
    the flush of the event log), and the final checkpoint's weights (loaded back)."""
    reg = fs.open(f"sqlite:///{tmp / f'{algo}-{index}.db'}")
    try:
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        run = _train(reg, algo, env_id, cfg, n, seed)
        reg.flush_events()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        _check_run(reg, run, algo, n)
        return cpu, wall, _weights(fs.rl.load_policy(reg, fs.rl.latest_checkpoint(reg, run)))
    finally:
        reg.close()


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bench_overhead(
    algo: str, env_id: str, n: int, rounds: int, whole_pairs: int, seed: int = 0
) -> list[Result]:
    cfg = fs.rl.preset(algo, env_id)
    label = f"{algo} {env_id}, {n} steps, SQLite, ckpt every {n // 5}"
    rows: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = 512 if algo == "PPO" else 120  # first calls into torch, SB3, SQLite, safetensors
        _interleaved(Path(tmp), -1, algo, env_id, cfg, warm, seed)
        runs = [_interleaved(Path(tmp), i, algo, env_id, cfg, n, seed) for i in range(rounds)]
        if not all(r["identical"] for r in runs):
            raise RuntimeError(
                f"{algo} {env_id}: Forseti and plain SB3 computed different things: {runs}"
            )
        what = "policy weights" + (" and ep_rew_mean" if algo == "PPO" else "")
        print(f"  {label}: Forseti and plain SB3 (seed {seed}): bit-identical {what}")
        ratios = [r["forseti_cpu"] / r["plain_cpu"] for r in runs]
        mid = runs[ratios.index(statistics.median_low(ratios))]
        f, b = mid["forseti_cpu"], mid["plain_cpu"]
        rows.append(
            Result(
                f"{algo} train, rollout-interleaved, CPU s ({label})",
                f,
                b,
                baseline_name=f"plain SB3 {algo}(...).learn({n}), same kwargs and seed, no "
                "registry; interleaved: advanced to each RLStepMetrics/CheckpointCreated "
                "timestep in a handler (median run); whole runs: min of alternated runs",
                target_ratio=1.03,
                group=GROUP,
                samples=rounds,
                extra={
                    "steps": n,
                    "ratios": ratios,
                    "forseti_cpu_s": [r["forseti_cpu"] for r in runs],
                    "plain_cpu_s": [r["plain_cpu"] for r in runs],
                    "overhead_cpu_s": f - b,
                    "forseti_steps_per_cpu_s": n / f,
                    "plain_steps_per_cpu_s": n / b,
                    "checkpoints": mid["checkpoints"],
                    "step_events": mid["step_events"],
                    "bit_identical": True,
                    "final_ep_rew_mean": mid["ep_rew_mean"],
                },
            )
        )
        if whole_pairs:
            fs_cpu: list[float] = []
            plain_cpu: list[float] = []
            fs_wall: list[float] = []
            plain_wall: list[float] = []
            for i in range(whole_pairs):
                for side in ("plain", "forseti") if i % 2 == 0 else ("forseti", "plain"):
                    if side == "plain":
                        c, w, weights = _plain_run(algo, env_id, cfg, n, seed)
                        plain_cpu.append(c)
                        plain_wall.append(w)
                    else:
                        c, w, weights = _forseti_run(Path(tmp), i, algo, env_id, cfg, n, seed)
                        fs_cpu.append(c)
                        fs_wall.append(w)
                    if not _same(weights, runs[0]["weights"]):
                        raise RuntimeError(f"{algo}: a whole {side} run computed different weights")
            rows.append(
                Result(
                    f"{algo} train, whole runs ABBA, CPU s ({label})",
                    min(fs_cpu),
                    min(plain_cpu),
                    group=GROUP,
                    samples=whole_pairs,
                    extra={
                        "forseti_cpu_s": fs_cpu,
                        "plain_cpu_s": plain_cpu,
                        "forseti_wall_s": fs_wall,
                        "plain_wall_s": plain_wall,
                        "ratio_wall_min": min(fs_wall) / min(plain_wall),
                        "forseti_steps_per_s_wall": n / min(fs_wall),
                        "plain_steps_per_s_wall": n / min(plain_wall),
                    },
                )
            )
    return rows


# -- 2. learning curves -------------------------------------------------------------------------

#: (algorithm, env, seeds, steps, eval_every, log_interval, thresholds of ep_rew_mean)
CURVES: list[tuple[str, str, tuple[int, ...], int, int, int | None, tuple[float, ...]]] = [
    ("PPO", "CartPole-v1", (0, 1, 2), 100_000, 10_000, None, (195.0, 475.0)),
    ("SAC", "Pendulum-v1", (0, 1), 20_000, 2_000, 1, (-400.0, -200.0)),
]


def _curve(
    algo: str, env_id: str, seed: int, steps: int, eval_every: int, log_interval: int | None
) -> dict[str, Any]:
    reg = fs.open("memory://")
    train: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    reg.bus.subscribe(
        fs.rl.RLStepMetrics,
        lambda e: (
            train.append((e.timestep, e.metrics["ep_rew_mean"]))
            if "ep_rew_mean" in e.metrics
            else None
        ),
    )
    reg.bus.subscribe(
        fs.rl.EvaluationCompleted, lambda e: evals.append((e.timestep, e.mean_reward))
    )
    t0 = time.perf_counter()
    run = fs.rl.train_sb3(
        reg, algo, env_id, fs.rl.preset(algo, env_id), total_timesteps=steps, seed=seed,
        eval_every=eval_every, eval_episodes=5, progress=False, log_interval=log_interval,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    reg.close()
    return {"train": train, "eval": evals, "wall_s": wall, "steps": run.step}


def _first(points: list[tuple[int, float]], threshold: float) -> int | None:
    return next((t for t, v in points if v >= threshold), None)


def _plot(curves: dict[tuple[str, str, int], dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = [(a, e, th) for a, e, _, _, _, _, th in CURVES]
    fig, axes = plt.subplots(1, len(envs), figsize=(10, 3.6), dpi=90)
    for ax, (algo, env_id, thresholds) in zip(axes, envs, strict=True):
        for i, ((_, _, seed), data) in enumerate(
            (k, v) for k, v in curves.items() if k[:2] == (algo, env_id)
        ):
            color = f"C{i}"
            ts, vs = zip(*data["train"], strict=True) if data["train"] else ((), ())
            ax.plot(ts, vs, color=color, lw=1.4, label=f"seed {seed}")
            if data["eval"]:
                te, ve = zip(*data["eval"], strict=True)
                ax.plot(te, ve, "o", color=color, ms=3.5, alpha=0.8)
        ax.plot([], [], "o", color="grey", ms=3.5, label="evaluation (5 episodes)")
        for th in thresholds:
            ax.axhline(th, color="grey", ls=":", lw=1)
        ax.set_title(f"{algo} {env_id} (rl-zoo preset)", fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def bench_curves(out_dir: Path = IMG) -> list[Result]:
    curves: dict[tuple[str, str, int], dict[str, Any]] = {}
    rows: list[Result] = []
    for algo, env_id, seeds, steps, eval_every, log_interval, thresholds in CURVES:
        for seed in seeds:
            data = _curve(algo, env_id, seed, steps, eval_every, log_interval)
            curves[(algo, env_id, seed)] = data
            reached = {th: _first(data["train"], th) for th in thresholds}
            reached_eval = {th: _first(data["eval"], th) for th in thresholds}
            final = data["train"][-1][1] if data["train"] else None
            final_eval = data["eval"][-1][1] if data["eval"] else None
            print(
                f"  {algo} {env_id} seed {seed}: {data['steps']} steps in {data['wall_s']:.0f} s, "
                + ", ".join(f"ep_rew_mean >= {th:g} at {t}" for th, t in reached.items())
                + "".join(f", evaluation >= {th:g} at {t}" for th, t in reached_eval.items())
                + f", final ep_rew_mean {final}, final evaluation {final_eval}"
            )
            for th in thresholds:
                rows.append(
                    Result(
                        f"{algo} {env_id} seed {seed}: first step with ep_rew_mean >= {th:g}",
                        None if reached[th] is None else float(reached[th]),
                        unit="steps",
                        group=GROUP,
                        samples=len(data["train"]),
                        extra={
                            "budget": steps,
                            "final_ep_rew_mean": final,
                            "final_eval_mean_reward": final_eval,
                            "first_evaluation_at_or_above": reached_eval[th],
                            "wall_s": data["wall_s"],
                        },
                    )
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "rl_curves.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["algorithm", "env", "seed", "timestep", "series", "value"])
        for (algo, env_id, seed), data in curves.items():
            for series, key in (("ep_rew_mean", "train"), ("eval_mean_reward", "eval")):
                for t, v in data[key]:
                    writer.writerow([algo, env_id, seed, t, series, f"{v:.4f}"])
    try:
        _plot(curves, out_dir / "rl_curves.png")
    except ImportError as exc:  # matplotlib is in the dev extra only
        print(f"  no plot: {exc}")
    return rows


def run(quick: bool) -> list[Result]:
    if MISSING is not None:
        return [Result("rl", skipped=MISSING, group=GROUP)]
    torch.set_num_threads(1)
    out: list[Result] = []
    if quick:
        out += bench_overhead("PPO", "CartPole-v1", n=2_048, rounds=2, whole_pairs=0)
        out += bench_overhead("SAC", "Pendulum-v1", n=300, rounds=1, whole_pairs=0)
    else:
        out += bench_overhead("PPO", "CartPole-v1", n=20_000, rounds=5, whole_pairs=2)
        out += bench_overhead("SAC", "Pendulum-v1", n=2_000, rounds=3, whole_pairs=1)
        out += bench_curves()
    return out
