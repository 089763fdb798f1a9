"""TinyCausalLM, the KV cache, batched generation and the one log-prob code path (GSPO.md traps 6, 9)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import forseti as fs
from forseti.errors import ValidationError
from forseti.gspo.generation import (
    Generation,
    generate,
    left_pad,
    sequence_logprobs,
    token_logprobs,
)
from forseti.gspo.model import (
    CausalLM,
    HFCausalLM,
    LMOutput,
    TinyCausalLM,
    TinyLMConfigEntity,
    default_position_ids,
)
from forseti.gspo.tasks import BOS, EOS, PAD, SEP

torch.set_num_threads(1)

ATOL = 1e-5


def make_model(seed: int = 0, **config: Any) -> TinyCausalLM:
    torch.manual_seed(seed)
    return TinyCausalLM(TinyLMConfigEntity(**config)).eval()


@pytest.fixture(scope="module")
def model() -> TinyCausalLM:
    return make_model(0)


def ragged_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of lengths 6, 3 and 4."""
    return left_pad([[BOS, 1, 2, 3, 4, SEP], [BOS, 7, SEP], [BOS, 0, 9, SEP]], PAD)


def sample(
    model: CausalLM, seed: int = 0, *, G: int = 4, R: int = 6, **kw: Any
) -> tuple[Generation, torch.Tensor, torch.Tensor]:
    ids, mask = ragged_prompts()
    gen = generate(
        model,
        ids,
        mask,
        num_samples=G,
        max_new_tokens=R,
        eos_id=EOS,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )
    return gen, ids, mask


# -- config entity and model -------------------------------------------------------------------


def test_config_entity_defaults_validation_and_registry_roundtrip() -> None:
    cfg = TinyLMConfigEntity()
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.max_seq_len) == (
        14,
        64,
        2,
        4,
        32,
    )
    bads: list[dict[str, Any]] = [
        {"d_model": 30},
        {"vocab_size": 0},
        {"n_layers": -1},
        {"mlp_ratio": 0},
    ]
    for bad in bads:
        with pytest.raises(ValidationError):
            TinyLMConfigEntity(**bad)
    with pytest.raises(ValidationError, match="divisible"):
        TinyLMConfigEntity(d_model=30, n_heads=4)
    reg = fs.open("memory://")
    try:
        stored = reg.add(cfg)
        v2 = reg.commit(stored.evolve(d_model=32))
        v1 = reg.get(cfg.lineage_id, version=1)
        assert isinstance(v1, TinyLMConfigEntity) and v1.d_model == 64
        assert isinstance(v2, TinyLMConfigEntity) and v2.version == 2 and v2.d_model == 32
    finally:
        reg.close()


def test_shapes_size_and_deterministic_init(model: TinyCausalLM) -> None:
    ids = torch.randint(0, 14, (3, 7), generator=torch.Generator().manual_seed(1))
    out = model(ids)
    assert isinstance(out, LMOutput) and out.logits.shape == (3, 7, 14)
    assert out.past_key_values is None
    assert 90_000 < model.num_parameters() < 120_000  # "~0.1M parameters" (GSPO.md)
    same, other = make_model(0).state_dict(), make_model(1).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, other[k]) for k, v in model.state_dict().items())
    assert isinstance(model, CausalLM)


def test_state_dict_roundtrip(model: TinyCausalLM) -> None:
    clone = make_model(seed=5)
    ids = torch.randint(0, 14, (2, 9), generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(clone(ids).logits, model(ids).logits)
    clone.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert torch.equal(clone(ids).logits, model(ids).logits)


def test_bad_inputs_raise_validation_errors(model: TinyCausalLM) -> None:
    ok = torch.zeros(2, 4, dtype=torch.long)
    cases: list[dict[str, Any]] = [
        {"input_ids": torch.zeros(1, 33, dtype=torch.long)},  # longer than max_seq_len
        {"input_ids": ok.float()},
        {"input_ids": torch.zeros(4, dtype=torch.long)},
        {"input_ids": torch.full((2, 4), 14)},  # out of the vocabulary
        {"input_ids": ok, "attention_mask": torch.ones(2, 5)},
        {"input_ids": ok, "position_ids": torch.full((2, 4), 32)},
        {"input_ids": ok, "position_ids": torch.zeros(2, 3, dtype=torch.long)},
        {"input_ids": ok, "past_key_values": ((torch.zeros(1), torch.zeros(1)),)},
        {"input_ids": ok, "past_key_values": ((torch.zeros(1), torch.zeros(1)),) * 2},
        {"input_ids": ok, "past_key_values": ((torch.zeros(2, 4, 3, 16),) * 2,) * 3},
    ]
    for kwargs in cases:
        with pytest.raises(ValidationError):
            model(**kwargs)
    cache = model(torch.zeros(1, 30, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(ValidationError, match="max_seq_len=32"):
        model(torch.zeros(1, 3, dtype=torch.long), past_key_values=cache)
    with pytest.raises(ValidationError):
        TinyCausalLM(TinyLMConfigEntity().to_state())  # type: ignore[arg-type]


def test_left_padding_changes_neither_logits_nor_positions(model: TinyCausalLM) -> None:
    ids, mask = ragged_prompts()
    assert default_position_ids(mask, 6)[1].tolist() == [0, 0, 0, 0, 1, 2]
    batch = model(ids, attention_mask=mask).logits  # (3, 6, V)
    for row, n in ((0, 6), (1, 3), (2, 4)):
        alone = model(ids[row : row + 1, -n:]).logits  # (1, n, V), no padding at all
        torch.testing.assert_close(batch[row, -n:], alone[0], atol=ATOL, rtol=0)
    assert torch.isfinite(batch).all()  # pad queries attend to themselves: no NaN rows


def test_kv_cache_matches_full_forward(model: TinyCausalLM) -> None:
    ids, mask = ragged_prompts()
    cont = torch.tensor([[3, 4, EOS, PAD], [5, 6, 7, 8], [EOS, PAD, PAD, PAD]])
    cont_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    full_ids, full_mask = torch.cat([ids, cont], 1), torch.cat([mask, cont_mask], 1)
    full = model(full_ids, attention_mask=full_mask).logits  # (3, 10, V)
    out = model(ids, attention_mask=mask, use_cache=True)
    pieces, cache = [out.logits], out.past_key_values
    for t in range(cont.shape[1]):
        step = model(
            cont[:, t : t + 1],
            attention_mask=full_mask[:, : ids.shape[1] + t + 1],
            past_key_values=cache,
            use_cache=True,
        )
        pieces.append(step.logits)
        cache = step.past_key_values
    assert cache[0][0].shape == (3, 4, 10, 16)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL, rtol=0)


# -- log-probs: one code path, aligned -----------------------------------------------------------


def test_token_logprobs_fp32_and_temperature() -> None:
    logits = torch.randn(2, 3, 14, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([[0, 5, 13], [12, 1, 1]])
    got = token_logprobs(logits.bfloat16(), targets, temperature=0.5)
    assert got.dtype == torch.float32 and got.shape == (2, 3)
    ref = torch.log_softmax(logits.bfloat16().float() / 0.5, -1)
    assert torch.equal(got, ref.gather(-1, targets[..., None])[..., 0])
    with pytest.raises(ValidationError):
        token_logprobs(logits, targets[:, :2])
    with pytest.raises(ValidationError):
        token_logprobs(logits, targets, temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logprobs_alignment_against_prefix_loop(
    model: TinyCausalLM, temperature: float
) -> None:
    ids, mask = ragged_prompts()
    P = ids.shape[1]
    response = torch.tensor([[3, 1, EOS], [4, 4, 4], [EOS, PAD, PAD]])
    tokens = torch.cat([ids, response], 1)  # (3, P + 3)
    attn = torch.cat([mask, torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0]])], 1)
    got = sequence_logprobs(model, tokens, attn, P, temperature)  # (3, 3)
    assert got.shape == (3, 3) and got.dtype == torch.float32
    loop = torch.zeros(3, 3)
    for j in range(3):  # run the model on the prefix, score the next token
        logits = model(tokens[:, : P + j], attention_mask=attn[:, : P + j]).logits[:, -1]
        loop[:, j] = torch.log_softmax(logits / temperature, -1)[torch.arange(3), tokens[:, P + j]]
    torch.testing.assert_close(got, loop, atol=ATOL, rtol=0)
    # the first response token is scored by the logits at the last prompt position
    last_prompt = model(ids, attention_mask=mask).logits[:, -1] / temperature
    first = torch.log_softmax(last_prompt, -1)[torch.arange(3), response[:, 0]]
    torch.testing.assert_close(got[:, 0], first, atol=ATOL, rtol=0)
    # an off-by-one (logits at the token's own position) gives different numbers
    own = model(tokens, attention_mask=attn).logits[:, P:] / temperature
    shifted = torch.log_softmax(own, -1).gather(-1, response[..., None])[..., 0]
    assert (shifted - got).abs().max() > 1e-2


# -- generation -----------------------------------------------------------------------------------


def test_generation_layout_and_mask_covers_exactly_the_sampled_response() -> None:
    m = make_model(0)
    with torch.no_grad():
        m.lm_head.bias[EOS] = 1.0  # some rows stop early, others run to max_new_tokens
    gen, ids, mask = sample(m, G=8, R=6)
    N, P, R = 24, ids.shape[1], gen.response.shape[1]
    assert gen.tokens.shape == (N, P + R) and gen.prompt_len == P and R <= 6
    assert torch.equal(gen.tokens[:, :P], ids.repeat_interleave(8, 0))  # rows b*G.. are prompt b
    assert torch.equal(gen.attention_mask[:, :P], mask.repeat_interleave(8, 0))
    assert torch.equal(gen.response, gen.tokens[:, P:])
    assert torch.equal(gen.attention_mask[:, P:].bool(), gen.response_mask)
    steps = torch.arange(R)[None]
    assert torch.equal(gen.response_mask, steps < gen.lengths[:, None])  # a prefix, first included
    assert gen.lengths.min() >= 1 and gen.truncated.any() and (~gen.truncated).any()
    for row in range(N):
        n, resp = int(gen.lengths[row]), gen.response[row].tolist()
        assert EOS not in resp[: n - 1]  # nothing sampled after an EOS
        assert all(t == PAD for t in resp[n:])  # PAD after the end, masked
        assert (resp[n - 1] == EOS) != bool(gen.truncated[row])  # EOS included when sampled
        assert not gen.truncated[row] or n == 6
    assert (gen.logprobs[~gen.response_mask] == 0).all()
    assert (gen.logprobs[gen.response_mask] < 0).all()
    assert gen.response_lists()[0] == gen.response[0, : int(gen.lengths[0])].tolist()
    assert gen.prompt_lists()[8] == [BOS, 7, SEP]


def test_forced_eos_gives_length_one_and_stops_early() -> None:
    m = make_model(0)
    with torch.no_grad():
        m.lm_head.bias[EOS] = 100.0
    gen, _, _ = sample(m, G=2, R=8)
    assert gen.lengths.tolist() == [1] * 6
    assert gen.response.shape == (6, 1) and (gen.response[:, 0] == EOS).all()
    assert gen.response_mask.all() and not gen.truncated.any()
    assert gen.response_lists() == [[EOS]] * 6
    torch.testing.assert_close(gen.logprobs, torch.zeros(6, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_sampled_logprobs_equal_full_forward_recompute(
    model: TinyCausalLM, temperature: float
) -> None:
    gen, _, _ = sample(model, seed=3, G=8, R=8, temperature=temperature)
    recomputed = sequence_logprobs(
        model, gen.tokens, gen.attention_mask, gen.prompt_len, temperature
    )
    m = gen.response_mask
    assert m.sum() > 48  # plenty of positions compared
    torch.testing.assert_close(gen.logprobs[m], recomputed[m], atol=ATOL, rtol=0)


def test_cache_and_no_cache_sample_identical_tokens(model: TinyCausalLM) -> None:
    cached, _, _ = sample(model, seed=11, G=8, R=8, use_cache=True)
    full, _, _ = sample(model, seed=11, G=8, R=8, use_cache=False)
    assert torch.equal(cached.tokens, full.tokens)
    assert torch.equal(cached.response_mask, full.response_mask)
    torch.testing.assert_close(cached.logprobs, full.logprobs, atol=ATOL, rtol=0)


def test_seed_determinism(model: TinyCausalLM) -> None:
    a, _, _ = sample(model, seed=7, G=8)
    b, _, _ = sample(model, seed=7, G=8)
    c, _, _ = sample(model, seed=8, G=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)


def test_sampled_tokens_are_differentiable_inputs(model: TinyCausalLM) -> None:
    gen, _, _ = sample(model, seed=1)  # no_grad, not inference_mode: usable by the trainer
    train = make_model(0).train()
    logp = sequence_logprobs(train, gen.tokens, gen.attention_mask, gen.prompt_len)
    (logp * gen.response_mask).sum().backward()  # type: ignore[no-untyped-call]
    assert train.tok_emb.weight.grad is not None and train.tok_emb.weight.grad.abs().sum() > 0


class _HFStyle(torch.nn.Module):
    """A keyword-only HF-like module that records the positions it was given."""

    def __init__(self, inner: TinyCausalLM) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, *, input_ids: Any, attention_mask: Any, position_ids: Any,
                past_key_values: Any, use_cache: Any) -> Any:  # fmt: skip
        self.seen.append(position_ids)
        return self.inner(input_ids, attention_mask, position_ids, past_key_values, use_cache)


def test_hf_adapter_generates_identically(model: TinyCausalLM) -> None:
    hf = _HFStyle(model)
    adapter = HFCausalLM(hf)
    assert isinstance(adapter, CausalLM)
    direct, _, _ = sample(model, seed=5, G=4)
    wrapped, _, _ = sample(adapter, seed=5, G=4)
    assert torch.equal(direct.tokens, wrapped.tokens)
    torch.testing.assert_close(direct.logprobs, wrapped.logprobs, atol=0, rtol=0)
    assert hf.seen[0][4].tolist() == [0, 0, 0, 0, 1, 2]  # positions from the mask, not the column
    assert list(adapter.parameters())  # the wrapped weights are visible to an optimizer

    class NoLogits(torch.nn.Module):
        def forward(self, **kw: Any) -> tuple[torch.Tensor]:
            return (kw["input_ids"].float(),)

    with pytest.raises(ValidationError, match="logits"):
        HFCausalLM(NoLogits())(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValidationError, match="torch module"):
        HFCausalLM(lambda **kw: None)  # type: ignore[arg-type]


def test_generate_rejects_bad_input(model: TinyCausalLM) -> None:
    ids, mask = ragged_prompts()
    good: dict[str, Any] = {"num_samples": 2, "max_new_tokens": 4, "eos_id": EOS, "pad_id": PAD}
    bad_calls: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = [
        (ids, mask.flip(1), good),  # right padding
        (ids, torch.zeros_like(mask), good),  # no real token
        (ids.float(), mask, good),
        (ids, mask[:, 1:], good),
        (ids, mask, {**good, "num_samples": 0}),
        (ids, mask, {**good, "max_new_tokens": 0}),
        (ids, mask, {**good, "temperature": 0.0}),
    ]
    for prompts, pmask, kw in bad_calls:
        with pytest.raises(ValidationError):
            generate(model, prompts, pmask, **kw)
    long_prompt = torch.zeros(1, 30, dtype=torch.long)
    with pytest.raises(ValidationError, match="max_seq_len"):
        generate(model, long_prompt, torch.ones_like(long_prompt), **{**good, "max_new_tokens": 8})
    with pytest.raises(ValidationError):
        left_pad([[1], []], PAD)
    with pytest.raises(ValidationError):
        sequence_logprobs(model, ids, mask, prompt_len=ids.shape[1])
