"""LLaDA's reference decoder (actors/dllm/llada_decoding.py) against the rules of the released generate.py."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from actors.dllm.llada_decoding import add_gumbel_noise, generate_llada, num_transfer_tokens

VOCAB, MASK = 50, 49
PROMPT = torch.tensor([[3, 14, 15, 9, 26], [5, 35, 8, 9, 7], [27, 1, 8, 28, 18]])


class TinyBidirectional(torch.nn.Module):
    """Embedding + position, one bidirectional mixing layer (masked mean over the sequence), a linear head."""

    def __init__(self, seed=0, dim=16, max_length=64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)  # parameters from their own generator: the global RNG is untouched
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, dim, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(max_length, dim, generator=g))
        self.mix = torch.nn.Parameter(torch.randn(dim, dim, generator=g) / dim ** 0.5)
        self.head = torch.nn.Parameter(torch.randn(dim, VOCAB, generator=g) * 2)
        self.bias = torch.nn.Parameter(torch.zeros(VOCAB).index_fill(0, torch.tensor([MASK]), -1e4))  # never MASK
        self.calls = []  # (input_ids, attention_mask, logits) of every call

    def forward(self, input_ids, attention_mask=None):
        h = self.embed[input_ids] + self.pos[: input_ids.shape[1]]
        weight = torch.ones_like(input_ids, dtype=h.dtype) if attention_mask is None else attention_mask.to(h.dtype)
        mean = (h * weight[..., None]).sum(1) / weight.sum(1, keepdim=True)
        logits = torch.tanh(h + (mean @ self.mix)[:, None, :]) @ self.head + self.bias
        self.calls.append((input_ids.clone(), attention_mask, logits.clone()))
        return SimpleNamespace(logits=logits)


@pytest.fixture()
def model():
    return TinyBidirectional()


def released_generate(model, prompt, attention_mask, steps, gen_length, block_length, temperature, cfg_scale,
                      remasking, mask_id):
    """Straight-line transcription of the released loop (global RNG, rand_like, per-row topk)."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones((prompt.shape[0], gen_length),
                                                               dtype=attention_mask.dtype)], dim=-1)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        block_mask_index = x[:, prompt.shape[1] + num_block * block_length:
                             prompt.shape[1] + (num_block + 1) * block_length] == mask_id
        mask_num = block_mask_index.sum(dim=1, keepdim=True)
        ntt = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + mask_num // steps
        for r in range(mask_num.size(0)):
            ntt[r, :(mask_num % steps)[r]] += 1
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                am = None if attention_mask is None else torch.cat([attention_mask, attention_mask], dim=0)
                out = model(input_ids=torch.cat([x, un_x], dim=0), attention_mask=am).logits
                logits, un_logits = torch.chunk(out, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(input_ids=x, attention_mask=attention_mask).logits
            if temperature == 0:
                logits_with_noise = logits
            else:
                noise = torch.rand_like(logits.to(torch.float64), dtype=torch.float64)
                logits_with_noise = logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            else:
                x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=ntt[j, i])
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


def run(model, prompt=PROMPT, **overrides):
    options = dict(mask_id=MASK, steps=8, gen_length=12, block_length=6)
    options.update(overrides)
    return generate_llada(model, prompt, **options)


def test_num_transfer_tokens_splits_evenly_with_the_remainder_first():
    ten = torch.ones(1, 10, dtype=torch.bool)
    assert num_transfer_tokens(ten, 4).tolist() == [[3, 3, 2, 2]]
    rows = torch.zeros(4, 10, dtype=torch.bool)
    rows[0, :] = True
    rows[1, [1, 4, 7]] = True
    rows[3, :8] = True
    counts = num_transfer_tokens(rows, 4)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0], [2, 2, 2, 2]]
    assert num_transfer_tokens(rows[:2], 1).tolist() == [[10], [3]]


def test_gumbel_noise_is_float64_from_the_generator_and_a_no_op_at_temperature_zero():
    logits = torch.randn(2, 3, 7)
    state = torch.get_rng_state()
    assert add_gumbel_noise(logits, 0.0) is logits
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn at T = 0
    noisy = add_gumbel_noise(logits, 0.7, torch.Generator().manual_seed(5))
    u = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert noisy.dtype == torch.float64
    assert torch.equal(noisy, logits.double().exp() / (-torch.log(u)) ** 0.7)


@pytest.mark.parametrize("remasking,temperature", [("low_confidence", 0.0), ("low_confidence", 1.0), ("random", 0.0)])
def test_reveal_schedule_blocks_and_prompt(model, remasking, temperature):
    result = run(model, remasking=remasking, temperature=temperature, generator=torch.Generator().manual_seed(1))
    assert result.forwards == result.steps == 8 and len(model.calls) == 8
    assert torch.equal(result.sequences[:, :5], PROMPT)
    assert torch.equal(result.completion_ids, result.sequences[:, 5:])
    assert (result.completion_ids != MASK).all()
    assert ((result.order >= 0) & (result.order < 8)).all()  # each position revealed exactly once
    expected = num_transfer_tokens(torch.ones(3, 6, dtype=torch.bool), 4)  # [2, 2, 1, 1] per row
    for block in range(2):
        orders = result.order[:, 6 * block: 6 * (block + 1)]
        assert ((orders >= 4 * block) & (orders < 4 * (block + 1))).all()  # block b done before block b+1
        for i in range(4):
            assert torch.equal((orders == 4 * block + i).sum(1), expected[:, i])
    # revealed tokens are never remasked or changed: each canvas the model saw agrees with the final one
    for ids, _, _ in model.calls:
        shown = ids != MASK
        assert torch.equal(ids[shown], result.sequences[shown])


def test_greedy_is_deterministic_ignores_the_generator_and_draws_nothing(model):
    state = torch.get_rng_state()
    first = run(model)
    assert torch.equal(torch.get_rng_state(), state)
    for seed in (0, 7):
        again = run(model, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(again.sequences, first.sequences) and torch.equal(again.order, first.order)


def test_greedy_reveals_the_argmax_of_the_most_confident_positions(model):
    result = run(model, gen_length=8, block_length=4, steps=4)  # 2 blocks of 2 steps, 2 tokens per step
    ids, _, logits = model.calls[0]
    probs = F.softmax(logits, dim=-1)
    best, token = probs.max(-1)  # [B, L]
    first_block = best[:, 5:9]
    chosen = torch.topk(first_block, k=2, dim=-1).indices
    for row in range(3):
        assert set(torch.nonzero(result.order[row] == 0).flatten().tolist()) == set(chosen[row].tolist())
    for step, (ids, _, logits) in enumerate(model.calls):
        revealed = result.order == step
        assert torch.equal(result.completion_ids[revealed], logits.argmax(-1)[:, 5:][revealed])


def test_batch_invariance_at_temperature_zero(model):
    batch = run(model)
    for row in range(3):
        alone = run(model, prompt=PROMPT[row: row + 1])
        assert torch.equal(alone.sequences[0], batch.sequences[row])
        assert torch.equal(alone.order[0], batch.order[row])


@pytest.mark.parametrize("remasking,temperature", [("low_confidence", 1.0), ("random", 0.0), ("random", 0.8)])
def test_seeded_generator_reproduces_and_another_seed_differs(model, remasking, temperature):
    def seeded(seed):
        return run(model, remasking=remasking, temperature=temperature, generator=torch.Generator().manual_seed(seed),
                   gen_length=24, block_length=8, steps=12)
    state = torch.get_rng_state()
    first, again, other = seeded(3), seeded(3), seeded(4)
    assert torch.equal(torch.get_rng_state(), state)  # a generator given: the global RNG is left alone
    assert torch.equal(first.sequences, again.sequences) and torch.equal(first.order, again.order)
    assert not (torch.equal(first.sequences, other.sequences) and torch.equal(first.order, other.order))


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_a_transcription_of_the_released_loop(model, cfg_scale, temperature, remasking, padded):
    attention_mask = None
    prompt = PROMPT
    if padded:  # left padding with pad id 0, as the release's main() does
        prompt = PROMPT.clone()
        prompt[0, :2] = 0
        attention_mask = torch.ones_like(prompt)
        attention_mask[0, :2] = 0
    options = dict(steps=12, gen_length=12, block_length=4, temperature=temperature, cfg_scale=cfg_scale,
                   remasking=remasking, mask_id=MASK)
    torch.manual_seed(11)
    ours = generate_llada(model, prompt, attention_mask=attention_mask, **options)
    torch.manual_seed(11)
    released = released_generate(model, prompt, attention_mask, **options)
    assert torch.equal(ours.sequences, released)
    assert ours.forwards == 12


class Guided(torch.nn.Module):
    """Logits cond [L, V] when the prompt is visible, uncond [L, V] when it is masked, whatever else is shown."""

    def __init__(self, cond, uncond):
        super().__init__()
        self.cond, self.uncond, self.calls = cond, uncond, []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append((input_ids.clone(), attention_mask))
        unconditional = (input_ids[:, 0] == MASK)[:, None, None]
        return SimpleNamespace(logits=torch.where(unconditional, self.uncond, self.cond))


def test_cfg_guided_logits_and_one_batched_call():
    g = torch.Generator().manual_seed(2)
    length = PROMPT.shape[1] + 6
    cond, uncond = torch.randn(length, VOCAB, generator=g) * 3, torch.randn(length, VOCAB, generator=g) * 3
    scale = 2.0
    guided = uncond + (scale + 1) * (cond - uncond)
    assert not torch.equal(guided.argmax(-1)[5:], cond.argmax(-1)[5:])
    model = Guided(cond, uncond)
    attention_mask = torch.ones_like(PROMPT)
    result = generate_llada(model, PROMPT, mask_id=MASK, attention_mask=attention_mask, steps=6, gen_length=6,
                            block_length=6, cfg_scale=scale)
    assert result.forwards == len(model.calls) == 6
    for ids, mask in model.calls:  # cond rows then uncond rows (prompt masked) in one call, the mask doubled
        assert ids.shape == (6, length) and mask.shape == (6, length) and (mask == 1).all()
        assert torch.equal(ids[:3, :5], PROMPT) and (ids[3:, :5] == MASK).all()
        assert torch.equal(ids[3:, 5:], ids[:3, 5:])
    assert (result.completion_ids == guided.argmax(-1)[5:]).all()
    # one token per step, most confident (by the guided softmax) first
    by_confidence = torch.argsort(F.softmax(guided, -1).max(-1).values[5:], descending=True)
    assert (result.order[:, by_confidence] == torch.arange(6)).all()
    plain = generate_llada(Guided(cond, uncond), PROMPT, mask_id=MASK, steps=6, gen_length=6, block_length=6)
    assert (plain.completion_ids == cond.argmax(-1)[5:]).all()


def test_a_predicted_mask_id_leaves_the_position_masked_as_in_the_release():
    length = PROMPT.shape[1] + 4
    cond = torch.zeros(length, VOCAB)
    cond[:, 7] = 1.0
    cond[6, MASK] = 5.0  # completion position 1 always predicts the mask token, most confidently
    result = generate_llada(Guided(cond, cond), PROMPT, mask_id=MASK, steps=4, gen_length=4, block_length=4)
    # every step spends its one reveal on that position again, so the completion ends fully masked
    assert (result.completion_ids == MASK).all() and (result.order == -1).all()
    torch.manual_seed(0)
    assert torch.equal(result.sequences, released_generate(Guided(cond, cond), PROMPT, None, 4, 4, 4, 0.0, 0.0,
                                                           "low_confidence", MASK))


@pytest.mark.parametrize("overrides,name", [
    (dict(gen_length=12, block_length=5), "block_length"),
    (dict(steps=7, gen_length=12, block_length=6), "steps"),
    (dict(steps=0), "steps"),
    (dict(remasking="margin"), "remasking"),
    (dict(temperature=-0.1), "temperature"),
    (dict(cfg_scale=-1.0), "cfg_scale"),
    (dict(attention_mask=torch.ones(3, 4, dtype=torch.long)), "attention_mask"),
    (dict(prompt=torch.tensor([[1, MASK, 2]])), "mask_id"),
])
def test_bad_arguments_name_the_argument(model, overrides, name):
    with pytest.raises(ValueError, match=name):
        run(model, **overrides)
    assert model.calls == []
