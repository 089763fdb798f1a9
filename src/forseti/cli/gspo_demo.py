"""``forseti demo``: GSPO teaches a tiny transformer to reverse four digits, then the lineage.

What ``make demo`` runs: on the embedded SQLite store (or ``--url``), train ``reverse`` with
:class:`~forseti.gspo.GSPOTrainer` (a progress bar on a terminal), print the learning curve and
a few answers, then the final checkpoint's lineage (model → run → checkpoints) and where its
weights are stored.
"""

from __future__ import annotations

import argparse

import torch

import forseti as fs

from ..gspo import GSPOConfigEntity, GSPOTrainer, generate
from ..gspo.step import pad_prompts
from ..gspo.tasks import EOS, PAD, Vocab
from ..trees import model_lineage
from .output import Printer, blob_root

__all__ = ["run_gspo_demo"]


def run_gspo_demo(args: argparse.Namespace, out: Printer) -> int:
    steps = args.steps
    if steps < 1:
        raise fs.ValidationError("--steps is a positive number of training steps")
    torch.set_num_threads(1)
    with fs.open(args.url) as reg:
        previous = reg.find(fs.gspo.GSPOTrainingRunEntity)
        name = f"reverse-demo-{len(previous) + 1}"
        out.title("Forseti demo: GSPO learns to reverse four digits")
        out.line(
            f"A {steps}-step run '{name}' on {reg.url}: 16 prompts x 8 sampled answers per step, "
            "partial-credit reward, a 2-layer transformer trained from scratch.",
            soft_wrap=True,
        )
        config = GSPOConfigEntity(
            name=f"{name}-config",
            task="reverse",
            seed=args.seed,
            checkpoint_every=max(steps // 4, 1),
        )
        trainer = GSPOTrainer(
            reg, config=config, run_name=name, progress=None if not args.plain else False
        )
        run = trainer.train(steps)

        out.section("Learning curve")
        marks = sorted({1, *range(max(steps // 8, 1), steps + 1, max(steps // 8, 1)), steps})
        out.table(
            ["step", "reward", "exact", "clip frac", "entropy"],
            [
                [
                    str(s),
                    f"{trainer.history[s - 1]['reward_mean']:.3f}",
                    f"{trainer.history[s - 1]['exact']:.2f}",
                    f"{trainer.history[s - 1]['clip_frac']:.3f}",
                    f"{trainer.history[s - 1]['entropy']:.3f}",
                ]
                for s in marks
            ],
        )
        _samples(trainer, out)

        ckpt = trainer.checkpoints[-1]
        out.section("Lineage of the final checkpoint's model")
        out.tree(model_lineage(reg, trainer.model))
        out.section("Where it is stored")
        for label, value in [
            ("store", reg.url),
            ("run", f"{run.name} v{run.version} ({run.status}, step {run.step})"),
            ("final checkpoint", f"step {ckpt.step}: {ckpt.lineage_id}@{ckpt.version}"),
            ("weights", _blob_location(reg, ckpt.weights)),
            ("blobs", blob_root(reg)),
        ]:
            out.line(f"  {label + ':':18s} {value}", soft_wrap=True)
        out.line()
        out.line(
            f"forseti lineage {ckpt.lineage_id} --url {reg.url}   # what the checkpoint came from",
            soft_wrap=True,
        )
        out.line(
            f"forseti export {ckpt.lineage_id} --url {reg.url} --format gguf -o reverse.gguf"
            "   # for llama.cpp (also: onnx, safetensors)",
            soft_wrap=True,
        )
    return 0


def _blob_location(reg: fs.EntityRegistry, blob: fs.BlobRef) -> str:
    try:
        return str(reg.blob_path(blob))
    except (fs.ForsetiError, AttributeError):
        return str(blob)


def _samples(trainer: GSPOTrainer, out: Printer) -> None:
    """Four fresh prompts, one sampled answer each, decoded."""
    vocab = Vocab()
    prompts = trainer.task.sample_prompts(4, torch.Generator().manual_seed(12345))
    ids, mask = pad_prompts(prompts, trainer.state.device)
    with torch.no_grad():
        gen = generate(
            trainer.policy,
            ids,
            mask,
            num_samples=1,
            max_new_tokens=trainer.task.max_new_tokens,
            eos_id=EOS,
            pad_id=PAD,
            generator=torch.Generator().manual_seed(0),
        )
    out.section("Answers of the trained policy")
    rows = []
    for prompt, response, n in zip(
        prompts, gen.response.tolist(), gen.response_mask.sum(dim=1).tolist(), strict=True
    ):
        answer = response[:n]
        right = trainer.task.exact([prompt], [answer]).item()
        rows.append([vocab.decode(prompt), vocab.decode(answer), "yes" if right else "no"])
    out.table(["prompt", "answer", "right"], rows)
