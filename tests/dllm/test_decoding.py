"""The reference masked-diffusion decoder (ALGORITHM.md section 2)."""

from types import SimpleNamespace

import pytest
import torch

from actors.dllm import build_model, generate, token_scores
from actors.dllm.decoding import ALGORITHMS, _top_k_filter, _top_p_filter, decode_completions

TEXTS = ["def add(a, b):\n    return a + b\n", "Write a function that adds two numbers.", "print(sum([1, 2, 3]))"] * 10
CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=128, initializer_range=0.3,  # peaked logits: no near-ties for float noise to flip
)
SPEC = {"config": CONFIG, "tokenizer": {"train_texts": TEXTS, "vocab_size": 320}, "seed": 0}
CONFIDENCE_ALGS = [alg for alg in ALGORITHMS if alg != "origin"]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_model(SPEC)
    return model.eval(), tokenizer


def chat(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


class Recorder(torch.nn.Module):
    """Wraps a model and keeps every canvas it is asked to denoise."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.canvases = model, model.config, []

    def forward(self, input_ids, **kwargs):
        self.canvases.append(input_ids.clone())
        return self.inner(input_ids=input_ids, **kwargs)


class Oracle(torch.nn.Module):
    """Logits built to predict target[:, j + shift] at position j: shift=1 is the shifted head, 0 is off by one."""

    def __init__(self, target, vocab, mask_id, shift):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(mask_token_id=mask_id)
        self.target, self.vocab, self.shift = target, vocab, shift

    def forward(self, input_ids, logits_to_keep=0, **_):
        predicted = torch.roll(self.target, -self.shift, dims=1)  # [B, L]
        logits = torch.nn.functional.one_hot(predicted, self.vocab).float() * 20  # [B, L, V]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_temperature_zero_is_deterministic_whatever_the_seed(tiny):
    model, tokenizer = tiny
    prompts = [chat(tokenizer, "add two numbers"), chat(tokenizer, "print")]
    for alg in CONFIDENCE_ALGS:
        first = generate(model, tokenizer, prompts, max_new_tokens=10, steps=10, alg=alg, seed=1)
        second = generate(model, tokenizer, prompts, max_new_tokens=10, steps=10, alg=alg, seed=2)
        assert torch.equal(first.sequences, second.sequences) and torch.equal(first.order, second.order)


def test_sampling_follows_the_seed_and_never_touches_global_rng(tiny):
    model, tokenizer = tiny
    prompts = [chat(tokenizer, "add two numbers")] * 3
    options = dict(max_new_tokens=12, steps=12, temperature=1.0, top_p=0.95, alg="entropy")
    state = torch.random.get_rng_state()
    first = generate(model, tokenizer, prompts, seed=5, **options)
    again = generate(model, tokenizer, prompts, seed=5, **options)
    other = generate(model, tokenizer, prompts, seed=6, **options)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(first.sequences, again.sequences) and torch.equal(first.order, again.order)
    assert not torch.equal(first.sequences, other.sequences)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_revealed_tokens_are_never_remasked(tiny, alg):
    model, tokenizer = tiny
    recorder = Recorder(model)
    prompts = [chat(tokenizer, "add"), chat(tokenizer, "print the sum of a list")]
    result = generate(recorder, tokenizer, prompts, max_new_tokens=12, steps=6, alg=alg, temperature=1.0, seed=3)
    completions = [canvas[:, -12:] for canvas in recorder.canvases] + [result.completion_ids]
    for before, after in zip(completions, completions[1:]):
        revealed = before != tokenizer.mask_token_id
        assert torch.equal(after[revealed], before[revealed])
    assert (result.completion_ids != tokenizer.mask_token_id).all()
    assert len(recorder.canvases) == 6 and result.steps == 6


def test_steps_equal_to_length_reveal_about_one_token_per_step(tiny):
    model, tokenizer = tiny
    length = 16
    result = generate(model, tokenizer, [chat(tokenizer, "add"), chat(tokenizer, "x")], max_new_tokens=length,
                      steps=length, alg="entropy", temperature=1.0, seed=0)
    for row in result.order:
        per_step = torch.bincount(row, minlength=length).tolist()
        # the reference schedule: floor(masked * (1 - s/t)) reveals 0 at step 0, 1 per step, 2 at the last step
        assert per_step == [0] + [1] * (length - 2) + [2]
        reveal_sequence = sorted(range(length), key=lambda position: (row[position].item(), position))
        assert sorted(reveal_sequence) == list(range(length))


def test_fewer_steps_reveal_several_tokens_per_step(tiny):
    model, tokenizer = tiny
    result = generate(model, tokenizer, [chat(tokenizer, "add")], max_new_tokens=16, steps=4, alg="maskgit_plus")
    per_step = torch.bincount(result.order[0], minlength=4)
    assert per_step.sum() == 16 and (per_step <= 8).all() and result.order.max() == 3 and result.order.min() >= 0


@pytest.mark.parametrize("alg", CONFIDENCE_ALGS)
def test_padding_of_other_rows_does_not_change_a_row_at_temperature_zero(tiny, alg):
    model, tokenizer = tiny
    short, long = chat(tokenizer, "add"), chat(tokenizer, "write a function that prints the sum of a list")
    alone = generate(model, tokenizer, [short], max_new_tokens=10, steps=10, alg=alg)
    batched = generate(model, tokenizer, [long, short], max_new_tokens=10, steps=10, alg=alg)
    assert batched.attention_mask[1].sum() < batched.attention_mask[0].sum()  # the short row really is padded
    assert torch.equal(batched.completion_ids[1], alone.completion_ids[0])
    assert torch.equal(batched.order[1], alone.order[0])
    assert batched.prompt_ids[1] == alone.prompt_ids[0]


def test_shifted_head_oracle_is_decoded_exactly_and_an_off_by_one_is_not(tiny):
    _, tokenizer = tiny
    prompt = [7, 8, 9, 10]
    completion = [21, 22, 23, 24, 25, 26]
    target = torch.tensor([prompt + completion])
    for shift, should_match in ((1, True), (0, False)):
        oracle = Oracle(target, len(tokenizer), tokenizer.mask_token_id, shift)
        result = generate(oracle, tokenizer, [prompt], max_new_tokens=6, steps=6, alg="maskgit_plus")
        assert (result.completion_ids[0].tolist() == completion) is should_match


def test_top_p_keeps_the_smallest_prefix_reaching_p_and_top_k_keeps_k():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = _top_p_filter(logits, 0.7) > torch.finfo(logits.dtype).min
    assert kept.tolist() == [[True, True, False, False]]
    assert (_top_p_filter(logits, 0.1) > torch.finfo(logits.dtype).min).tolist() == [[True, False, False, False]]
    assert (_top_k_filter(logits, 3) > torch.finfo(logits.dtype).min).tolist() == [[True, True, True, False]]


def test_texts_stop_at_the_first_end_token_and_drop_special_tokens(tiny):
    _, tokenizer = tiny
    body = tokenizer("print(1)", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    dlm_pad = tokenizer.convert_tokens_to_ids("<|dlm_pad|>")
    rows = torch.tensor([body + [dlm_pad, im_end] + body, body + [tokenizer.eos_token_id] + body + [im_end]])
    assert decode_completions(tokenizer, rows) == ["print(1)", "print(1)"]


def test_bad_options_fail_with_a_clear_message(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="alg 'greedy' is not one of"):
        generate(model, tokenizer, ["x"], max_new_tokens=4, steps=4, alg="greedy")
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tokenizer, ["x"], max_new_tokens=4, steps=4, top_p=1.5)


def test_bf16_model_generates_and_scores_with_gradients():
    model, tokenizer = build_model(SPEC, dtype=torch.bfloat16)
    result = generate(model.eval(), tokenizer, [chat(tokenizer, "add"), chat(tokenizer, "print it")],
                      max_new_tokens=8, steps=8, temperature=1.0, top_k=20, alg="topk_margin", seed=0)
    assert (result.completion_ids != tokenizer.mask_token_id).all()
    model.train()
    model.gradient_checkpointing_enable()
    scores = token_scores(model, result.sequences, result.attention_mask, torch.ones(2, 8, dtype=torch.bool), seed=0)
    scores.scores.sum().backward()
    assert scores.scores.dtype == torch.float32 and torch.isfinite(scores.scores).all()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()
