"""The fast decoder (DECODING.md): threshold / factor rules, blocks, the KV cache, rows leaving the batch."""

import pytest
import torch

from actors.dllm import generate_fast
from actors.dllm.model import completion_logits
from actors.dllm.decoding import ALGORITHMS, alg_confidence
from actors.dllm.fast_decoding import CACHES, _accept, _forward, _LayerKV
from actors.dllm.padding import attention_inputs, left_pad
from actors.dllm.tokenizer import IM_END
from tests.dllm.fakes import Recorder

CONFIDENCE_ALGS = [alg for alg in ALGORITHMS if alg != "origin"]
BLOCKS = [None, 4]


def chat(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


def prompts(tokenizer):
    return [chat(tokenizer, "write a function that prints the sum of a list"), chat(tokenizer, "add")]


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("cache", CACHES)
def test_every_position_is_revealed_once_and_never_remasked(peaked_tiny, alg, cache):
    model, tokenizer = peaked_tiny
    recorder = Recorder(model)
    result = generate_fast(recorder, tokenizer, prompts(tokenizer), max_new_tokens=12, temperature=1.0, alg=alg,
                           threshold=0.3, block_length=4, cache=cache, seed=3)
    assert (result.completion_ids != tokenizer.mask_token_id).all()
    assert (result.order >= 0).all() and (result.order < result.forwards).all()
    if cache == "none":  # every forward sees the whole canvas: a revealed token stays what it was
        canvases = [c[:, -12:] for c in recorder.inputs]
        for before, after in zip(canvases, canvases[1:]):
            if before.shape == after.shape:
                revealed = before != tokenizer.mask_token_id
                assert torch.equal(after[revealed], before[revealed])
        assert len(recorder.inputs) == result.forwards


@pytest.mark.parametrize("cache", CACHES)
def test_temperature_zero_is_deterministic_whatever_the_seed(peaked_tiny, cache):
    model, tokenizer = peaked_tiny
    options = dict(max_new_tokens=12, threshold=0.5, block_length=4, cache=cache)
    first = generate_fast(model, tokenizer, prompts(tokenizer), seed=1, **options)
    second = generate_fast(model, tokenizer, prompts(tokenizer), seed=2, **options)
    assert torch.equal(first.sequences, second.sequences) and torch.equal(first.order, second.order)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("block_length", BLOCKS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_each_row_of_a_mixed_length_batch_gets_what_it_gets_alone(peaked_tiny, cache, block_length, temperature):
    model, tokenizer = peaked_tiny
    long, short = prompts(tokenizer)
    options = dict(max_new_tokens=12, threshold=0.4, block_length=block_length, cache=cache,
                   temperature=temperature, top_p=0.95 if temperature else None)
    batched = generate_fast(model, tokenizer, [long, short], seed=[11, 22], **options)
    alone = generate_fast(model, tokenizer, [short], seed=[22], **options)
    assert batched.attention_mask[1].sum() < batched.attention_mask[0].sum()  # the short row is padded
    assert torch.equal(batched.completion_ids[1], alone.completion_ids[0])
    assert batched.row_forwards[1] == alone.row_forwards[0] and batched.row_tokens[1] == alone.row_tokens[0]


def _one_per_forward(model, tokenizer, prompt_list, length, alg):
    """The naive decoder the fast one must reduce to: every forward over the whole canvas reveals the one
    masked position ranked first by `alg`, at temperature 0."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompt_list]
    prompt, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
    canvas = torch.cat([prompt, torch.full((len(ids), length), tokenizer.mask_token_id)], dim=1)
    mask = torch.cat([prompt_mask, torch.ones(len(ids), length, dtype=torch.long)], dim=1)
    order = torch.full((len(ids), length), -1)
    for forward in range(length):
        logits = completion_logits(model, canvas, mask, length).float()
        logits[..., tokenizer.mask_token_id] = torch.finfo(logits.dtype).min
        probs = torch.softmax(logits, -1)
        p, x0 = probs.max(-1)
        rank = alg_confidence(probs.flatten(0, 1), p.flatten(), alg).view(p.shape)
        rank = rank.masked_fill(canvas[:, -length:] != tokenizer.mask_token_id, -torch.inf)
        best = rank.argmax(-1)
        rows = torch.arange(len(ids))
        canvas[rows, prompt.shape[1] + best] = x0[rows, best]
        order[rows, best] = forward
    return canvas[:, -length:], order


@pytest.mark.parametrize("alg", CONFIDENCE_ALGS)
def test_threshold_above_one_with_one_block_is_one_token_per_forward_in_confidence_order(peaked_tiny, alg):
    model, tokenizer = peaked_tiny
    result = generate_fast(model, tokenizer, prompts(tokenizer), max_new_tokens=10, alg=alg, threshold=1.5,
                           block_length=10, stop_at_end=False)
    expected_tokens, expected_order = _one_per_forward(model, tokenizer, prompts(tokenizer), 10, alg)
    assert result.forwards == 10 and result.row_forwards == [10, 10] and result.tokens_per_forward == 1.0
    assert torch.equal(result.completion_ids, expected_tokens)
    assert torch.equal(result.order, expected_order)


def test_block_start_forward_with_a_cache_is_exactly_the_uncached_forward(peaked_tiny):
    """The recording forward (each block's first) returns the uncached logits bit for bit; a window forward
    on the keys/values it recorded, with nothing changed since, agrees with it (the cache itself is exact)."""
    model, tokenizer = peaked_tiny
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts(tokenizer)]
    prompt, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
    length, width = 12, prompt.shape[1]
    generator = torch.Generator().manual_seed(0)
    completion = torch.randint(10, len(tokenizer), (2, length), generator=generator)
    completion[:, 6:] = tokenizer.mask_token_id
    canvas = torch.cat([prompt, completion], dim=1)
    mask = torch.cat([prompt_mask, torch.ones(2, length, dtype=torch.long)], dim=1)
    positions, mask4d = attention_inputs(mask)
    with torch.no_grad():
        uncached = completion_logits(model, canvas, mask, length)  # [2, K, V]
        kv = _LayerKV()
        recorded = _forward(model, canvas, mask4d, positions, torch.arange(width - 1, width + length - 1), kv)
        assert torch.equal(recorded, uncached)
        for w0, w1 in ((width + 3, width + length), (width + 3, width + 8)):  # prefix, dual windows
            stored = ([torch.cat([k[:, :, :w0], k[:, :, w1:]], 2) for k in kv.keys],
                      [torch.cat([v[:, :, :w0], v[:, :, w1:]], 2) for v in kv.values])
            keys = torch.cat([mask[:, :w0], mask[:, w1:], mask[:, w0:w1]], dim=1).bool()
            window_mask = keys[:, None, None, :].expand(-1, 1, w1 - w0, -1)
            out = _forward(model, canvas[:, w0:w1], window_mask, positions[:, w0:w1],
                           torch.arange(0, w1 - w0 - 1), _LayerKV(stored))
            torch.testing.assert_close(out, uncached[:, w0 - width + 1:w1 - width], rtol=1e-5, atol=1e-5)


class EndForRowsWith(torch.nn.Module):
    """The model, except that rows whose canvas holds `marker` are sure the completion starts with <|im_end|>
    (cache none: every forward returns the logits of the whole completion, the first predicting position 0)."""

    def __init__(self, model, marker: int, end_id: int):
        super().__init__()
        self.inner, self.config, self.marker, self.end_id, self.batch_sizes = model, model.config, marker, end_id, []

    def forward(self, input_ids, **kwargs):
        self.batch_sizes.append(input_ids.shape[0])
        out = self.inner(input_ids=input_ids, **kwargs)
        rows = (input_ids == self.marker).any(dim=1)
        out.logits[rows, 0, self.end_id] += 100.0
        return out


def test_finished_rows_leave_the_batch_and_are_filled_after_their_end_token(peaked_tiny):
    model, tokenizer = peaked_tiny
    batch = [chat(tokenizer, "add two numbers"), chat(tokenizer, "print"), chat(tokenizer, "add")]
    ids = [set(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in batch]
    (marker, *_) = ids[1] - ids[0] - ids[2]  # a token only the middle prompt holds
    end_id = tokenizer.convert_tokens_to_ids(IM_END)
    wrapped = EndForRowsWith(model, marker, end_id)
    result = generate_fast(wrapped, tokenizer, batch, max_new_tokens=12, threshold=1.5)  # one token per forward
    assert result.row_forwards[1] == 1 and result.texts[1] == ""
    assert result.completion_ids[1, 0] == end_id
    assert (result.completion_ids[1, 1:] == tokenizer.eos_token_id).all() and result.row_tokens[1] == 1
    # each forward feeds exactly the rows still decoding
    assert wrapped.batch_sizes == [sum(f > k for f in result.row_forwards) for k in range(result.forwards)]
    assert wrapped.batch_sizes[0] == 3 and wrapped.batch_sizes[-1] < 3


def test_threshold_and_factor_rules_on_given_confidences():
    p = torch.tensor([[0.99, 0.9, 0.7, 0.2], [0.3, 0.2, 0.1, -torch.inf]])
    candidates = p > -torch.inf
    rank = torch.tensor([[0.0, 0.0, 0.0, 5.0], [0.0, 1.0, 0.0, -torch.inf]])  # alg ranking, not p
    threshold = _accept(p, rank, candidates, threshold=0.9, factor=None)
    assert threshold.tolist() == [[True, True, False, True], [False, True, False, False]]
    # factor 1: the n-th must reach 1 - 1/(n+1): 0.5, 0.667, 0.75 -> 0.99 and 0.9 pass, 0.7 stops the prefix
    factor = _accept(p, rank, candidates, threshold=0.9, factor=1.0)
    assert factor.tolist() == [[True, True, False, False], [True, False, False, False]]


def test_min_tokens_reveals_the_top_ranked_k_whatever_the_threshold():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.05], [0.5, -torch.inf, -torch.inf, -torch.inf]])
    candidates = p > -torch.inf
    rank = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, -torch.inf, -torch.inf, -torch.inf]])
    two = _accept(p, rank, candidates, threshold=1.5, factor=None, min_tokens=2)
    assert two.tolist() == [[True, False, False, True], [True, False, False, False]]  # row 1 has one candidate
    # the threshold still reveals beyond the k: 0.3 >= 0.25
    assert _accept(p, rank, candidates, threshold=0.25, factor=None, min_tokens=2)[0].tolist() == [True, False,
                                                                                                  True, True]


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("cache", CACHES)
def test_min_tokens_takes_k_tokens_per_forward_on_an_unconfident_model(peaked_tiny, k, cache):
    """What the GPU check forces on a random model: blocks of 8, k per forward -> ceil(8 / k) forwards a block."""
    model, tokenizer = peaked_tiny
    result = generate_fast(model, tokenizer, prompts(tokenizer), max_new_tokens=16, threshold=1.5, block_length=8,
                           cache=cache, min_tokens=k, stop_at_end=False)
    assert result.forwards == 2 * -(-8 // k) and result.row_tokens == [16, 16]
    assert all(sorted(row.tolist()).count(f) == k for row in result.order for f in range(result.forwards))


def test_parallel_decoding_takes_fewer_forwards_on_a_confident_model(peaked_tiny):
    model, tokenizer = peaked_tiny
    slow = generate_fast(model, tokenizer, prompts(tokenizer), max_new_tokens=16, threshold=1.5, stop_at_end=False)
    fast = generate_fast(model, tokenizer, prompts(tokenizer), max_new_tokens=16, threshold=0.05, stop_at_end=False)
    assert slow.forwards == 16 and fast.forwards < 16 and fast.tokens_per_forward > 1


def test_bad_options_fail_with_a_clear_message(peaked_tiny):
    model, tokenizer = peaked_tiny
    for options, text in ((dict(threshold=0), "threshold"), (dict(factor=-1.0), "factor"),
                          (dict(block_length=0), "block_length"), (dict(cache="full"), "cache"), (dict(min_tokens=0), "min_tokens"),
                          (dict(seed=[1, 2, 3]), "seeds"), (dict(alg="nope"), "alg")):
        with pytest.raises(ValueError, match=text):
            generate_fast(model, tokenizer, prompts(tokenizer), max_new_tokens=4, **options)
