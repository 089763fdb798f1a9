"""Train a tiny model with GSPO, then export its checkpoint three ways and load each back verified.

1. ``GSPOTrainer`` trains a ``TinyCausalLM`` to reverse digits for a few steps on SQLite; its
   final checkpoint is a safetensors blob in the store.
2. ``export(...)`` writes it as safetensors (bf16), ONNX (checked by onnxruntime against torch)
   and GGUF (q8_0, read back tensor by tensor); each export is an entity derived from the
   checkpoint, and each file is also copied out to a folder.
3. Each file is loaded back: the safetensors file on its own (self-digest), the ONNX model in
   onnxruntime, the GGUF tensors with the ``gguf`` reader. A tampered copy is refused.
4. The same checkpoint saved into a registry with AES-GCM encrypted blobs: a wrong key is refused.

Run: ``python examples/export_model.py`` (about 10 seconds on a CPU).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import forseti as fs
from forseti.export import (
    export,
    load_checkpoint,
    load_gguf,
    load_onnx,
    load_safetensors_file,
    save_checkpoint,
)
from forseti.gspo import GSPOConfigEntity, GSPOTrainer


def main(folder: Path) -> None:
    torch.manual_seed(0)
    with fs.open(f"sqlite:///{folder}/runs.db") as reg:
        # 1. a short GSPO run; its final checkpoint is stored as a verified safetensors blob
        trainer = GSPOTrainer(reg, config=GSPOConfigEntity(task="reverse", seed=0), progress=False)
        trainer.train(5)
        ckpt = trainer.checkpoints[-1]
        print(f"checkpoint at step {ckpt.step}: {ckpt.weights}")

        # 2. three exports, each an entity derived from the checkpoint, each copied out
        out = folder / "exports"
        out.mkdir()
        st = export(reg, ckpt, "safetensors", dtype="bf16", out=out / "policy.safetensors")
        onnx = export(reg, ckpt, "onnx", out=out / "policy.onnx")
        gguf = export(reg, ckpt, "gguf", dtype="q8_0", out=out / "policy.gguf")
        for e in (st, onnx, gguf):
            assert e.derived_from == (ckpt.ref,)
            print(f"{e.format:12} {e.dtype:5} {e.artifact.size:>8,} B  checks={dict(e.checks)}")

        # 3. load each back, verified
        policy = load_checkpoint(reg, ckpt).module  # rebuilt TinyCausalLM, weights loaded
        assert policy is not None
        ids = torch.tensor([[10, 1, 2, 3, 11]])
        with torch.no_grad():
            expected = policy(ids).logits.numpy()
        session = load_onnx(reg, onnx)
        (logits,) = session.run(["logits"], {"input_ids": ids.numpy()})
        print(f"onnxruntime vs torch: max |diff| = {np.abs(logits - expected).max():.2e}")
        assert np.abs(logits - expected).max() <= 1e-5

        standalone = load_safetensors_file(out / "policy.safetensors")  # by its self-digest
        assert standalone.state_dict["tok_emb.weight"].dtype == torch.bfloat16
        contents = load_gguf(reg, gguf)
        arch = contents.metadata["general.architecture"]
        print(f"gguf: {len(contents.tensors)} tensors, llama.cpp architecture {arch!r}")

        tampered = bytearray((out / "policy.safetensors").read_bytes())
        tampered[-1] ^= 0x01  # one bit of one weight
        (out / "tampered.safetensors").write_bytes(bytes(tampered))
        try:
            load_safetensors_file(out / "tampered.safetensors")
        except fs.IntegrityError as exc:
            print(f"tampered copy refused: {exc}")
        else:
            raise AssertionError("a tampered file was accepted")

        print("lineage of the GGUF export:", [str(r) for r in reg.ancestors(gguf)][:3], "...")

    # 4. encryption at rest: blobs are AES-GCM encrypted under a key the caller keeps
    key = fs.generate_blob_key()
    with fs.open(f"sqlite:///{folder}/secret.db", blob_key=key) as secret:
        sealed = save_checkpoint(secret, policy, step=ckpt.step)
        print(f"encrypted checkpoint: {sealed.weights}")
    with fs.open(f"sqlite:///{folder}/secret.db", blob_key=fs.generate_blob_key()) as wrong:
        try:
            load_checkpoint(wrong, sealed.ref)
        except fs.DecryptionError as exc:
            print(f"wrong key refused: {exc}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
