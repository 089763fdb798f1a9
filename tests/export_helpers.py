"""What the export, encryption and CLI-export tests share: a tiny model, its logits, and ways
to damage a stored file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from forseti.gspo import TinyCausalLM, TinyLMConfigEntity

CONFIG = {"vocab_size": 14, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 16, "mlp_ratio": 2}
IDS = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])


def tiny(seed: int = 0, **over: Any) -> TinyCausalLM:
    """A small TinyCausalLM, seeded, in eval mode (``over`` changes its config)."""
    torch.manual_seed(seed)
    return TinyCausalLM(TinyLMConfigEntity(**{**CONFIG, **over})).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    """The model's logits on :data:`IDS`."""
    model.eval()
    with torch.no_grad():
        return model(IDS).logits


def rewrite(path: Path, change: Callable[[bytes], bytes]) -> None:
    """Change a (read-only, 0444) blob file in place."""
    path.chmod(0o644)
    path.write_bytes(change(path.read_bytes()))


def flip(data: bytes, pos: int) -> bytes:
    """``data`` with every bit of byte ``pos`` flipped."""
    out = bytearray(data)
    out[pos] ^= 0xFF
    return bytes(out)
