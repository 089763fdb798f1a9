"""How a ``TinyCausalLM`` is laid out in a llama.cpp GGUF file: names, types, metadata, vocabulary.

The closest llama.cpp architecture is ``gpt2``: learned token and position embeddings, pre-LayerNorm
blocks with biases, a fused ``[q|k|v]`` projection, a GELU MLP and a final LayerNorm. Tensor names
are llama.cpp's (``gguf.TENSOR_NAMES``); GGUF lists dimensions fastest-first, so a torch
``(out, in)`` weight is a GGUF ``{in, out}`` tensor, which is the layout llama.cpp's ``gpt2``
expects (``attn_qkv`` is ``{n_embd, 3·n_embd}``). Two differences from TinyCausalLM, both handled:

* llama.cpp's ``gpt2`` graph has no ``output.bias`` (a file carrying one fails to load). The LM
  head bias ``b`` is *folded* into the final norm's bias: ``β' = β + δ`` with ``W δ = b`` solved
  for the weights as stored (exact whenever ``b`` lies in the span of ``W``'s columns, i.e.
  ``vocab_size ≤ d_model`` with ``W`` of full rank). The original ``β`` and ``b`` are kept as
  ``forseti.original.*`` float arrays, so Forseti's reader restores the checkpoint exactly.
* llama.cpp's ``gpt2`` GELU is the tanh approximation (looked up through an f16 table on CPU);
  TinyCausalLM uses the exact erf GELU. Their logits differ by that approximation only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf.constants import (
    GGML_QUANT_VERSION,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFValueType,
    LlamaFileType,
    TokenType,
)

from ..errors import ValidationError
from ..gspo.model import TinyLMConfigEntity

__all__ = [
    "DIGEST_KEY",
    "GGUF_ARCH",
    "GGUF_DTYPES",
    "KV",
    "GGUFVocab",
    "as_config",
    "header_kvs",
    "tensor_names",
    "tensor_type",
    "toy_vocab",
]

GGUF_ARCH = "gpt2"
GGUF_DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")
DIGEST_KEY = "forseti.sha256"
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which TinyCausalLM uses

KV = tuple[str, GGUFValueType, Any]
"""One metadata entry: key, GGUF value type, value (``(item_type, items)`` for arrays)."""

_FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}
_T = MODEL_TENSOR
_BLOCK = {  # TinyCausalLM block module → llama.cpp tensor
    "ln_1": _T.ATTN_NORM,
    "attn.qkv": _T.ATTN_QKV,
    "attn.proj": _T.ATTN_OUT,
    "ln_2": _T.FFN_NORM,
    "mlp_in": _T.FFN_UP,
    "mlp_out": _T.FFN_DOWN,
}


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer written into the file: one string per token id, and the special ids.

    It is written as a SentencePiece-style (``tokenizer.ggml.model = "llama"``) vocabulary of
    single pieces without a space prefix, so llama.cpp tokenizes a prompt symbol by symbol.
    Special tokens are ``CONTROL`` tokens; the others are ``NORMAL``.
    """

    tokens: tuple[str, ...]
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    sep_id: int | None = None

    def __post_init__(self) -> None:
        if not self.tokens or not all(isinstance(t, str) and t for t in self.tokens):
            raise ValidationError("a GGUF vocabulary needs at least one non-empty token string")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValidationError("GGUF vocabulary tokens must be distinct")
        for name in ("bos_id", "eos_id", "pad_id", "sep_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value < len(self.tokens)):
                raise ValidationError(f"{name}={value!r} is not a token id of this vocabulary")

    @property
    def control_ids(self) -> frozenset[int]:
        """Ids written as CONTROL tokens: BOS, EOS, PAD. SEP stays NORMAL: prompts type it."""
        return frozenset(i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None)


def toy_vocab() -> GGUFVocab:
    """The toy tasks' vocabulary: digits ``0``–``9``, ``^`` BOS, ``|`` SEP, ``$`` EOS, ``_`` PAD."""
    from ..gspo.tasks import BOS, EOS, PAD, SEP, Vocab

    return GGUFVocab(tuple(Vocab.symbols), bos_id=BOS, eos_id=EOS, pad_id=PAD, sep_id=SEP)


def resolve_vocab(vocab: GGUFVocab | Sequence[str] | None, vocab_size: int) -> GGUFVocab:
    """``vocab`` as a :class:`GGUFVocab` of exactly ``vocab_size`` tokens.

    ``None`` means the toy vocabulary when the sizes match, else placeholder tokens ``<|i|>``.
    """
    if vocab is None:
        toy = toy_vocab()
        if len(toy.tokens) == vocab_size:
            return toy
        return GGUFVocab(tuple(f"<|{i}|>" for i in range(vocab_size)))
    if not isinstance(vocab, GGUFVocab):
        if isinstance(vocab, str) or not isinstance(vocab, Sequence):
            raise ValidationError("vocab must be a GGUFVocab or a sequence of token strings")
        vocab = GGUFVocab(tuple(vocab))
    if len(vocab.tokens) != vocab_size:
        raise ValidationError(
            f"the vocabulary has {len(vocab.tokens)} tokens but the model has {vocab_size}"
        )
    return vocab


def as_config(config: TinyLMConfigEntity | Mapping[str, Any] | str) -> TinyLMConfigEntity:
    """A :class:`TinyLMConfigEntity` from itself, its fields, or their JSON."""
    if isinstance(config, TinyLMConfigEntity):
        return config
    try:
        fields = json.loads(config) if isinstance(config, str) else dict(config)
        return TinyLMConfigEntity(**fields)
    except Exception as exc:  # noqa: BLE001 - pydantic, JSON or type errors: a bad config
        raise ValidationError(f"not a TinyCausalLM configuration: {exc}") from None


def config_json(config: TinyLMConfigEntity) -> str:
    """The configuration as ``forseti.config`` JSON (the checkpoint header's convention)."""
    fields = ("name", "vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "mlp_ratio")
    return json.dumps({k: getattr(config, k) for k in fields}, sort_keys=True)


def tensor_names(n_layers: int) -> list[tuple[str, str]]:
    """``(torch name, GGUF name)`` for every tensor written, in file order.

    ``lm_head.bias`` has no GGUF tensor (see the module docstring): it is folded into
    ``output_norm.bias`` and kept as ``forseti.original.output.bias``.
    """
    names = [
        ("tok_emb.weight", TENSOR_NAMES[_T.TOKEN_EMBD] + ".weight"),
        ("pos_emb.weight", TENSOR_NAMES[_T.POS_EMBD] + ".weight"),
    ]
    for i in range(n_layers):
        for module, tensor in _BLOCK.items():
            for kind in ("weight", "bias"):
                gguf_name = TENSOR_NAMES[tensor].format(bid=i) + "." + kind
                names.append((f"blocks.{i}.{module}.{kind}", gguf_name))
    names.append(("ln_f.weight", TENSOR_NAMES[_T.OUTPUT_NORM] + ".weight"))
    names.append(("ln_f.bias", TENSOR_NAMES[_T.OUTPUT_NORM] + ".bias"))
    names.append(("lm_head.weight", TENSOR_NAMES[_T.OUTPUT] + ".weight"))
    return names


def expected_shapes(config: TinyLMConfigEntity) -> dict[str, tuple[int, ...]]:
    """The torch shape of every TinyCausalLM tensor, ``lm_head.bias`` included."""
    C, V, F = config.d_model, config.vocab_size, config.mlp_ratio * config.d_model
    block = {
        "ln_1.weight": (C,),
        "ln_1.bias": (C,),
        "attn.qkv.weight": (3 * C, C),
        "attn.qkv.bias": (3 * C,),
        "attn.proj.weight": (C, C),
        "attn.proj.bias": (C,),
        "ln_2.weight": (C,),
        "ln_2.bias": (C,),
        "mlp_in.weight": (F, C),
        "mlp_in.bias": (F,),
        "mlp_out.weight": (C, F),
        "mlp_out.bias": (C,),
    }
    shapes: dict[str, tuple[int, ...]] = {
        "tok_emb.weight": (V, C),
        "pos_emb.weight": (config.max_seq_len, C),
    }
    for i in range(config.n_layers):
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,), "lm_head.weight": (V, C)})
    shapes["lm_head.bias"] = (V,)
    return shapes


def tensor_type(gguf_name: str, shape: tuple[int, ...], dtype: str) -> GGMLQuantizationType:
    """The GGML type a tensor is written as, following llama.cpp's ``convert_hf_to_gguf.py``.

    1-D tensors (norms, biases) and the position embedding stay F32; other 2-D weights take
    ``dtype``. Q8_0 needs rows that are a multiple of 32 long, else the tensor falls back to F16.
    """
    if dtype not in GGUF_DTYPES:
        raise ValidationError(f"GGUF dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    if len(shape) < 2 or dtype == "f32" or gguf_name.startswith(TENSOR_NAMES[_T.POS_EMBD]):
        return GGMLQuantizationType.F32
    if dtype == "q8_0" and shape[-1] % 32 == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def header_kvs(
    config: TinyLMConfigEntity,
    dtype: str,
    vocab: GGUFVocab,
    forseti: Mapping[str, Any],
) -> list[KV]:
    """Every metadata entry after the self-digest: architecture, tokenizer, Forseti keys.

    ``forseti`` maps Forseti's own keys to a str, int, float, bool or float32 array value.
    """
    S, U32, F32 = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32
    a = GGUF_ARCH
    kvs: list[KV] = [
        ("general.architecture", S, a),
        ("general.name", S, config.name),
        ("general.file_type", U32, int(_FILE_TYPES[dtype])),
        ("general.quantization_version", U32, GGML_QUANT_VERSION),
        (f"{a}.context_length", U32, config.max_seq_len),
        (f"{a}.embedding_length", U32, config.d_model),
        (f"{a}.feed_forward_length", U32, config.mlp_ratio * config.d_model),
        (f"{a}.block_count", U32, config.n_layers),
        (f"{a}.attention.head_count", U32, config.n_heads),
        (f"{a}.attention.layer_norm_epsilon", F32, LAYER_NORM_EPS),
        ("tokenizer.ggml.model", S, "llama"),
        ("tokenizer.ggml.tokens", GGUFValueType.ARRAY, (S, list(vocab.tokens))),
        ("tokenizer.ggml.scores", GGUFValueType.ARRAY, (F32, [0.0] * len(vocab.tokens))),
        (
            "tokenizer.ggml.token_type",
            GGUFValueType.ARRAY,
            (
                GGUFValueType.INT32,
                [
                    int(TokenType.CONTROL if i in vocab.control_ids else TokenType.NORMAL)
                    for i in range(len(vocab.tokens))
                ],
            ),
        ),
        ("tokenizer.ggml.add_space_prefix", GGUFValueType.BOOL, False),
        ("tokenizer.ggml.add_bos_token", GGUFValueType.BOOL, vocab.bos_id is not None),
        ("tokenizer.ggml.add_eos_token", GGUFValueType.BOOL, False),
    ]
    specials = (
        ("bos", vocab.bos_id),
        ("eos", vocab.eos_id),
        ("padding", vocab.pad_id),
        ("seperator", vocab.sep_id),  # sic: llama.cpp's spelling
    )
    for key, value in specials:
        if value is not None:
            kvs.append((f"tokenizer.ggml.{key}_token_id", U32, value))
    for key, value in forseti.items():
        kvs.append((key, *_typed(key, value)))
    return kvs


def _typed(key: str, value: Any) -> tuple[GGUFValueType, Any]:
    if isinstance(value, bool):
        return GGUFValueType.BOOL, value
    if isinstance(value, int):
        return GGUFValueType.INT64, value
    if isinstance(value, float):
        return GGUFValueType.FLOAT64, value
    if isinstance(value, str):
        return GGUFValueType.STRING, value
    if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 1:
        return GGUFValueType.ARRAY, (GGUFValueType.FLOAT32, value)
    raise ValidationError(
        f"metadata {key!r}: a GGUF value is str, int, float or bool, not {value!r}"
    )
