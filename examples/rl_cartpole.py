"""PPO balances a pole: a stable-baselines3 run as entities and events, on one CPU core in ~20 s.

Trains PPO on ``CartPole-v1`` with rl-baselines3-zoo's tuned settings (``fs.rl.preset``) on a
SQLite store in a temporary directory, with a checkpoint every 2,048 steps (the policy's weights
and the whole training state as safetensors blobs). A handler prints what SB3 logs, and
``fs.rl.stop_when`` ends the run once the mean episode return reaches the threshold. Then it
evaluates the final checkpoint, exports the policy to ONNX (checked in onnxruntime), and resumes
the run from its last periodic checkpoint: the resumed run stops again at the same step, with the
same return and bit-identical weights.

    python examples/rl_cartpole.py                   # stop at ep_rew_mean >= 120
    python examples/rl_cartpole.py --threshold 475   # CartPole-v1 "solved" (about 60k steps)

Everything it writes lives in the temporary directory and is gone when it exits.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import forseti as fs
from forseti.export import load_onnx

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threshold", type=float, default=120.0, help="stop at this ep_rew_mean")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.set_num_threads(1)  # SB3's small MLPs are fastest on one thread

with tempfile.TemporaryDirectory() as tmp, fs.open(f"sqlite:///{Path(tmp) / 'rl.db'}") as reg:
    config = fs.rl.preset("PPO", "CartPole-v1")  # 8 envs x 32 steps, 20 epochs, lin_1e-3 ...
    budget = fs.rl.preset_timesteps("PPO", "CartPole-v1")  # the zoo's 100,000 steps

    def show(event: fs.rl.RLStepMetrics) -> None:
        if event.timestep % 4096 == 0:  # SB3 logs every rollout (256 steps); print a few
            m = event.metrics
            print(
                f"  step {event.timestep:6d}  ep_rew_mean {m['ep_rew_mean']:6.1f}  "
                f"entropy {m['entropy']:.3f}  approx_kl {m['approx_kl']:.4f}"
            )

    reg.bus.subscribe(fs.rl.RLStepMetrics, show)
    reg.bus.subscribe(
        fs.rl.CheckpointCreated, lambda e: print(f"  checkpoint at step {e.timestep}")
    )
    stopper = fs.rl.stop_when(reg, "ep_rew_mean", args.threshold)

    print(f"PPO on CartPole-v1 (zoo preset, budget {budget} steps, stop at {args.threshold:g}):")
    run = fs.rl.train_sb3(
        reg, "PPO", "CartPole-v1", config, total_timesteps=budget, seed=args.seed,
        checkpoint_every=2048, run_name="cartpole", progress=False,
    )  # fmt: skip
    print(f"{run.name} v{run.version}: {run.status} at step {run.step} ({run.stop_reason})")

    # The final checkpoint, played deterministically on fresh episodes.
    final = fs.rl.latest_checkpoint(reg, run)
    evaluation = fs.rl.evaluate(reg, final, episodes=5)
    print(
        f"evaluation of step {final.step}: mean return {evaluation.mean_reward:.1f} "
        f"over {evaluation.episodes} episodes {evaluation.returns}"
    )

    # ONNX: observation -> action, checked against SB3's predict in onnxruntime before it is stored.
    exported = fs.rl.export_policy(reg, final)
    session = load_onnx(reg, exported)  # hash verified before onnxruntime sees the file
    obs = np.array([[0.0, 0.1, 0.05, -0.2], [0.0, -0.1, -0.05, 0.2]], dtype=np.float32)
    (actions,) = session.run(["action"], {"observation": obs})
    print(
        f"ONNX export {exported.artifact.sha256[:12]}: actions {actions.tolist()} "
        f"(max |onnx - torch| {exported.checks['onnx_max_abs_diff']:.1g})"
    )

    # Resume from the last periodic checkpoint: weights, Adam moments, counters, environments and
    # random generators come back, so the run retraces its steps exactly and stops at the same one.
    ours = [
        c for c in reg.find(fs.CheckpointEntity) if c.run and c.run.lineage_id == run.lineage_id
    ]
    periodic = max((c for c in ours if c.step < run.step), key=lambda c: c.step)
    resumed = fs.rl.resume_sb3(reg, periodic, budget)
    again = fs.rl.latest_checkpoint(reg, resumed)
    same = all(
        torch.equal(a, b)
        for a, b in zip(
            fs.rl.load_policy(reg, final).policy.state_dict().values(),
            fs.rl.load_policy(reg, again).policy.state_dict().values(),
            strict=True,
        )
    )
    print(
        f"resumed from step {periodic.step}: stopped at step {resumed.step} "
        f"({resumed.stop_reason}); weights identical to the first run's: {same}"
    )
    assert same and resumed.step == run.step
    reg.bus.unsubscribe(stopper)

    print()
    parent = reg.get(exported.derived_from[0])  # provenance: export <- checkpoint <- run, config
    print(
        f"run {run.name}: {len(reg.history(run.lineage_id))} versions, "
        f"{len(reg.events(topic=fs.rl.RLStepMetrics))} RLStepMetrics events in the log"
    )
    print(
        f"the ONNX export derives from the checkpoint at step {parent.step} of run "
        f"{reg.get(parent.run).name}, trained with config {reg.get(run.config).name!r}"
    )
