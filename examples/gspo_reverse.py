"""GSPO from scratch: a 0.1M-parameter transformer learns to reverse four digits, on a CPU.

Trains the ``reverse`` task (prompt ``^1234|``, answer ``4321$``) with ``GSPOTrainer`` on a SQLite
store in a temporary directory, with a checkpoint every 50 steps (weights and training state as
safetensors blobs). Then prints the learning curve, the exact-match rate on fresh prompts, a few
answers decoded with ``tasks.VOCAB``, and the lineage of the final checkpoint's model.

    python examples/gspo_reverse.py              # 200 steps (about 20 s on one CPU core)
    python examples/gspo_reverse.py --steps 60   # shorter (the policy is still learning)

Everything it writes lives in the temporary directory and is gone when it exits.
"""

import argparse
import tempfile
from pathlib import Path

import torch

import forseti as fs
from forseti.gspo import GSPOConfigEntity, GSPOTrainer, generate
from forseti.gspo.step import pad_prompts
from forseti.gspo.tasks import EOS, PAD, VOCAB

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
parser.add_argument("--seed", type=int, default=0, help="seed of the model and the sampling")
args = parser.parse_args()

torch.set_num_threads(1)  # the tiny model is fastest on one thread

with tempfile.TemporaryDirectory() as tmp, fs.open(f"sqlite:///{Path(tmp) / 'gspo.db'}") as reg:
    # Every setting is an entity stored with the run; the defaults are the paper's
    # (eps_low=3e-4, eps_high=4e-4, 4 minibatches per rollout, no KL) and 16 prompts x 8 answers.
    config = GSPOConfigEntity(task="reverse", seed=args.seed, checkpoint_every=50)
    trainer = GSPOTrainer(reg, config=config, run_name="reverse-4", progress=False)
    run = trainer.train(args.steps)

    print(f"{run.name}: {run.status} at step {run.step}, {len(trainer.checkpoints)} checkpoints")
    print()
    print(" step  reward  exact  clip frac  |log s|   entropy")
    marks = sorted({s for s in (1, 10, 25, 50, 100, 150, 200) if s <= args.steps} | {args.steps})
    for s in marks:
        m = trainer.history[s - 1]
        print(
            f"{s:5d}  {m['reward_mean']:6.3f}  {m['exact']:5.2f}  {m['clip_frac']:9.3f}  "
            f"{m['log_ratio_abs_mean']:7.4f}  {m['entropy']:7.3f}"
        )

    # The trained policy on 256 prompts it has not seen, one sampled answer each.
    task = trainer.task
    prompts = task.sample_prompts(256, torch.Generator().manual_seed(12345))
    ids, mask = pad_prompts(prompts, trainer.state.device)
    gen = generate(
        trainer.policy, ids, mask, num_samples=1, max_new_tokens=task.max_new_tokens,
        eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    answers = gen.response_lists()
    exact = task.exact(prompts, answers)
    print()
    print(f"exact match on 256 fresh prompts: {exact.float().mean().item():.3f}")
    for prompt, answer, ok in list(zip(prompts, answers, exact.tolist(), strict=True))[:5]:
        print(f"  {VOCAB.decode(prompt)} -> {VOCAB.decode(answer):6s} {'right' if ok else 'wrong'}")

    # Which model, run and checkpoints: the final checkpoint's lineage.
    final = trainer.checkpoints[-1]
    print()
    print(f"final checkpoint: step {final.step}, weights {final.weights.size} bytes of safetensors")
    print(fs.trees.model_lineage(reg, final.model).to_text())
