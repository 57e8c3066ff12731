"""The fast decoder for LLaDA (fast_decoding.generate_fast with llada_decoding.LLADA, Fast-dLLM's llada/generate.py):
LladaModel's KV cache, one token per forward against generate.py's decoder, rows alone vs batched, the threshold
and factor rules, blocks, and decode_llada's dispatch. The model is the tiny peaked LLaDA of tests/tiny_model.py."""

import pytest
import torch

from actors.dllm.decoders import DecoderSettings
from actors.dllm.decoding import ALGORITHMS
from actors.dllm.fast_decoding import CACHES, _BlockCache, _LayerKV, generate_fast
from actors.dllm.llada import forward_from_mask
from actors.dllm.llada_decoding import LLADA, check_llada_settings, decode_llada
from actors.dllm.padding import left_pad, position_ids_from_mask
from tests.tiny_model import build_tiny, random_rows, tiny_llada

LENGTH = 12


@pytest.fixture(scope="module")
def llada():
    tokenizer = build_tiny()[1]
    return tiny_llada(tokenizer), tokenizer


def prompts(tokenizer):
    return random_rows(tokenizer, [9, 4, 6], seed=1)  # three lengths: rows 1 and 2 are left-padded in a batch


def fast(model, tokenizer, prompt_list, **options):
    return generate_fast(model, tokenizer, prompt_list, max_new_tokens=LENGTH, family=LLADA, **options)


class Calls(torch.nn.Module):
    """Wraps a LladaModel: keeps the keyword arguments and the logits of every call; `drop_mask` sets the mask
    token's logit to the minimum, so that generate.py's decoder (which keeps it) sees what the fast one does."""

    def __init__(self, model, drop_mask=False):
        super().__init__()
        self.inner, self.config, self.drop_mask, self.calls = model, model.config, drop_mask, []

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        if self.drop_mask:
            out.logits[..., self.config.mask_token_id] = torch.finfo(out.logits.dtype).min
        self.calls.append((kwargs, out.logits.clone()))  # the decoder edits the logits it gets in place
        return out


def test_a_recording_cache_leaves_the_forward_bit_identical_and_replays_what_it_recorded(llada):
    model, tokenizer = llada
    ids, prompt_mask = left_pad(random_rows(tokenizer, [20, 13], seed=3), tokenizer.pad_token_id)
    mask = torch.cat([prompt_mask, torch.ones(2, 8, dtype=torch.long)], dim=1)
    ids = torch.cat([ids, torch.randint(5, len(tokenizer), (2, 8), generator=torch.Generator().manual_seed(0))], 1)
    positions, cfg = position_ids_from_mask(mask), model.config
    with torch.no_grad():
        plain = forward_from_mask(model, ids, mask).logits
        kv = _LayerKV()
        assert torch.equal(model(ids, mask, positions, past_key_values=kv).logits, plain)
        assert len(kv.keys) == cfg.n_layers and kv.keys[0].shape == (2, cfg.n_kv_heads, 28, cfg.head_dim)
        keep = torch.arange(22, 26)
        assert torch.equal(model(ids, mask, positions, logits_to_keep=keep).logits, plain[:, keep])
        rows = torch.arange(2)
        for w0, w1 in ((22, 28), (22, 26), (18, 24)):  # prefix, dual, a window with cached keys on both sides
            cached, key_mask = _BlockCache(kv, rows, mask, w0, w1).select(rows)
            keys = torch.cat([key_mask, mask[:, w0:w1].bool()], dim=1)
            out = model(ids[:, w0:w1], keys, positions[:, w0:w1], past_key_values=cached).logits
            torch.testing.assert_close(out, plain[:, w0:w1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_each_block_starts_with_exactly_the_uncached_forward_then_feeds_the_window(llada, cache):
    model, tokenizer = llada
    calls = Calls(model)
    result = fast(calls, tokenizer, prompts(tokenizer), threshold=0.1, block_length=4, cache=cache, temperature=1.0,
                  seed=[1, 2, 3], stop_at_end=False)
    width = result.sequences.shape[1] - LENGTH
    starts, block = 0, 0
    for kwargs, logits in calls.calls:
        ids = kwargs["input_ids"]
        if ids.shape[1] == width + LENGTH:  # a block start: the whole canvas, its logits the uncached ones
            with torch.no_grad():
                uncached = forward_from_mask(model, ids, kwargs["attention_mask"]).logits
            assert torch.equal(logits, uncached[:, width + 4 * starts:width + 4 * starts + 4])
            block, starts = starts, starts + 1
        else:  # LLaDA has no shift: the window is the block (dual) or the block and what follows (prefix)
            assert ids.shape[1] == (4 if cache == "dual" else LENGTH - 4 * block) and logits.shape[1] == 4
    assert starts == 3 and len(calls.calls) == result.forwards


@pytest.mark.parametrize("block_length", [None, 4])
def test_threshold_above_one_reveals_one_token_per_forward_as_generate_py_does_at_t0(llada, block_length):
    """Where the math coincides (T=0, low-confidence remasking, one token per step, the mask logit removed from
    both), the fast decoder without cache is generate.py's decoder: the same tokens in the same order."""
    model, tokenizer = llada
    wrapped = Calls(model, drop_mask=True)
    settings = DecoderSettings(decoder="reference", max_new_tokens=LENGTH, steps=LENGTH, alg="maskgit_plus",
                               top_p=None, block_length=block_length)
    reference = decode_llada(wrapped, tokenizer, prompts(tokenizer), settings, temperature=0.0, seeds=[1, 2, 3])
    result = fast(wrapped, tokenizer, prompts(tokenizer), alg="maskgit_plus", threshold=1.5,
                  block_length=block_length, cache="none", stop_at_end=False)
    assert result.forwards == reference.forwards == LENGTH and result.row_tokens == [LENGTH] * 3
    assert torch.equal(result.completion_ids, reference.completion_ids)
    assert torch.equal(result.order, reference.order)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("block_length", [None, 4])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_each_row_of_a_left_padded_batch_gets_what_it_gets_alone(llada, cache, block_length, temperature):
    model, tokenizer = llada
    options = dict(threshold=0.1, block_length=block_length, cache=cache, temperature=temperature,
                   top_p=0.95 if temperature else None)
    batched = fast(model, tokenizer, prompts(tokenizer), seed=[11, 22, 33], **options)
    assert (batched.attention_mask[1:, 0] == 0).all()  # rows 1 and 2 are padded
    for row, (prompt, seed) in enumerate(zip(prompts(tokenizer), [11, 22, 33])):
        alone = fast(model, tokenizer, [prompt], seed=[seed], **options)
        assert torch.equal(batched.completion_ids[row], alone.completion_ids[0])
        assert batched.row_forwards[row] == alone.row_forwards[0] and batched.row_tokens[row] == alone.row_tokens[0]


@pytest.mark.parametrize("cache", CACHES)
def test_temperature_zero_is_deterministic_whatever_the_seed(llada, cache):
    model, tokenizer = llada
    runs = [fast(model, tokenizer, prompts(tokenizer), threshold=0.1, block_length=4, cache=cache, seed=seed)
            for seed in (1, 2)]
    assert torch.equal(runs[0].sequences, runs[1].sequences) and torch.equal(runs[0].order, runs[1].order)


@pytest.mark.parametrize("cache", CACHES)
def test_every_forward_reveals_at_least_one_token_of_each_row_in_it_and_blocks_go_in_order(llada, cache):
    model, tokenizer = llada
    result = fast(model, tokenizer, prompts(tokenizer), threshold=0.1, block_length=4, cache=cache, temperature=1.0,
                  seed=5, stop_at_end=False)
    assert (result.completion_ids != tokenizer.mask_token_id).all() and result.row_tokens == [LENGTH] * 3
    assert result.tokens_per_forward >= 1
    for row, forwards in zip(result.order.tolist(), result.row_forwards):
        assert min(row) >= 0 and len(set(row)) == forwards  # each forward the row took part in revealed >= 1
        blocks = [row[b:b + 4] for b in range(0, LENGTH, 4)]
        assert all(max(before) < min(after) for before, after in zip(blocks, blocks[1:]))


@pytest.mark.parametrize("rule", [dict(threshold=0.1), dict(factor=3.0)])
def test_each_forward_reveals_what_the_threshold_or_factor_rule_accepts(llada, rule):
    """Recomputed from each forward's own logits (cache none, T=0, alg maskgit_plus: the top-ranked is the most
    probable): threshold reveals every masked position with p >= threshold (and the best); factor the longest
    prefix of the p-sorted positions whose n-th is >= 1 - factor / (n + 1)."""
    model, tokenizer = llada
    calls = Calls(model)
    result = fast(calls, tokenizer, prompts(tokenizer), alg="maskgit_plus", cache="none", stop_at_end=False, **rule)
    assert result.forwards < LENGTH  # the rule took several tokens at some forward
    for f, (kwargs, logits) in enumerate(calls.calls):
        rows = [r for r in range(3) if result.order[r].max() >= f]  # one block: rows leave when done
        masked = kwargs["input_ids"][:, -LENGTH:] == tokenizer.mask_token_id
        logits = logits.float()
        logits[..., tokenizer.mask_token_id] = torch.finfo(logits.dtype).min
        p = torch.softmax(logits, dim=-1).max(dim=-1).values.masked_fill(~masked, -1.0)
        revealed = result.order[rows] == f
        if "threshold" in rule:
            expected = (p >= rule["threshold"]) | torch.nn.functional.one_hot(p.argmax(1), LENGTH).bool()
        else:
            sorted_p, by_p = p.sort(dim=1, descending=True)
            n = torch.arange(1, LENGTH + 1)
            prefix = (sorted_p >= 1 - rule["factor"] / (n + 1)).long().cumprod(1).bool()
            prefix[:, 0] = True
            expected = torch.zeros_like(prefix).scatter_(1, by_p, prefix)
        assert torch.equal(revealed, expected & masked), f"forward {f}"


def test_a_confident_threshold_takes_fewer_forwards(llada):
    model, tokenizer = llada
    one = fast(model, tokenizer, prompts(tokenizer), threshold=1.5, stop_at_end=False)
    parallel = fast(model, tokenizer, prompts(tokenizer), threshold=0.05, stop_at_end=False)
    assert one.forwards == LENGTH and one.tokens_per_forward == 1.0
    assert parallel.forwards < LENGTH and parallel.tokens_per_forward > 1


def test_decode_llada_runs_the_fast_decoder_with_one_generator_per_row(llada):
    model, tokenizer = llada
    settings = DecoderSettings(decoder="fast", max_new_tokens=LENGTH, alg="maskgit_plus", top_p=0.95, threshold=0.1,
                               block_length=5, cache="dual")  # 5 does not divide 12: fine for the fast decoder
    assert check_llada_settings(settings) is None
    out = decode_llada(model, tokenizer, prompts(tokenizer), settings, temperature=1.0, seeds=[7, 8, 9])
    direct = fast(model, tokenizer, prompts(tokenizer), alg="maskgit_plus", top_p=0.95, threshold=0.1, block_length=5,
                  cache="dual", temperature=1.0, seed=[7, 8, 9])
    assert torch.equal(out.sequences, direct.sequences) and out.row_forwards == direct.row_forwards
    alone = decode_llada(model, tokenizer, prompts(tokenizer)[1:2], settings, temperature=1.0, seeds=[8])
    assert torch.equal(alone.completion_ids[0], out.completion_ids[1])
    other = decode_llada(model, tokenizer, prompts(tokenizer), settings, temperature=1.0, seeds=[7, 18, 9])
    assert torch.equal(other.completion_ids[0], out.completion_ids[0])  # row 0's seed and output unchanged


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_the_fast_decoder_takes_every_alg_and_cache_for_llada(alg):
    for cache in CACHES:
        settings = DecoderSettings(decoder="fast", max_new_tokens=8, alg=alg, block_length=3, cache=cache)
        assert check_llada_settings(settings) is None
    with pytest.raises(ValueError, match="alg 'entropy'"):  # generate.py's decoder still has no entropy rule
        check_llada_settings(DecoderSettings(decoder="reference", max_new_tokens=8, alg="entropy", top_p=None))


def test_a_config_mask_id_other_than_the_tokenizer_s_is_refused(llada):
    model, tokenizer = llada
    wrapped = Calls(model)
    wrapped.config = type(model.config)(**{**model.config.__dict__, "mask_token_id": tokenizer.eos_token_id})
    with pytest.raises(ValueError, match="mask_token_id"):
        fast(wrapped, tokenizer, prompts(tokenizer))
