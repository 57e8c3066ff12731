"""The reference masked-diffusion decoder (ALGORITHM.md section 2)."""

import pytest
import torch

from actors.dllm import generate, token_scores
from actors.dllm.decoding import ALGORITHMS, _top_k_filter, _top_p_filter, decode_completions
from actors.dllm.tokenizer import DLM_PAD, IM_END
from tests.dllm.fakes import Oracle, Recorder
from tests.tiny_model import PEAKED, build_tiny

CONFIDENCE_ALGS = [alg for alg in ALGORITHMS if alg != "origin"]


def chat(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


def test_temperature_zero_is_deterministic_whatever_the_seed(peaked_tiny):
    model, tokenizer = peaked_tiny
    prompts = [chat(tokenizer, "add two numbers"), chat(tokenizer, "print")]
    for alg in CONFIDENCE_ALGS:
        first = generate(model, tokenizer, prompts, max_new_tokens=10, steps=10, alg=alg, seed=1)
        second = generate(model, tokenizer, prompts, max_new_tokens=10, steps=10, alg=alg, seed=2)
        assert torch.equal(first.sequences, second.sequences) and torch.equal(first.order, second.order)


def test_sampling_follows_the_seed_and_never_touches_global_rng(peaked_tiny):
    model, tokenizer = peaked_tiny
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
def test_revealed_tokens_are_never_remasked(peaked_tiny, alg):
    model, tokenizer = peaked_tiny
    recorder = Recorder(model)
    prompts = [chat(tokenizer, "add"), chat(tokenizer, "print the sum of a list")]
    result = generate(recorder, tokenizer, prompts, max_new_tokens=12, steps=6, alg=alg, temperature=1.0, seed=3)
    completions = [canvas[:, -12:] for canvas in recorder.inputs] + [result.completion_ids]
    for before, after in zip(completions, completions[1:]):
        revealed = before != tokenizer.mask_token_id
        assert torch.equal(after[revealed], before[revealed])
    assert (result.completion_ids != tokenizer.mask_token_id).all()
    assert len(recorder.inputs) == 6 and result.steps == 6


def test_steps_equal_to_length_reveal_about_one_token_per_step(peaked_tiny):
    model, tokenizer = peaked_tiny
    length = 16
    result = generate(model, tokenizer, [chat(tokenizer, "add"), chat(tokenizer, "x")], max_new_tokens=length,
                      steps=length, alg="entropy", temperature=1.0, seed=0)
    for row in result.order:
        per_step = torch.bincount(row, minlength=length).tolist()
        # the reference schedule: floor(masked * (1 - s/t)) reveals 0 at step 0, 1 per step, 2 at the last step
        assert per_step == [0] + [1] * (length - 2) + [2]
        reveal_sequence = sorted(range(length), key=lambda position: (row[position].item(), position))
        assert sorted(reveal_sequence) == list(range(length))


def test_fewer_steps_reveal_several_tokens_per_step(peaked_tiny):
    model, tokenizer = peaked_tiny
    result = generate(model, tokenizer, [chat(tokenizer, "add")], max_new_tokens=16, steps=4, alg="maskgit_plus")
    per_step = torch.bincount(result.order[0], minlength=4)
    assert per_step.sum() == 16 and (per_step <= 8).all() and result.order.max() == 3 and result.order.min() >= 0


@pytest.mark.parametrize("alg", CONFIDENCE_ALGS)
def test_padding_of_other_rows_does_not_change_a_row_at_temperature_zero(peaked_tiny, alg):
    model, tokenizer = peaked_tiny
    short, long = chat(tokenizer, "add"), chat(tokenizer, "write a function that prints the sum of a list")
    alone = generate(model, tokenizer, [short], max_new_tokens=10, steps=10, alg=alg)
    batched = generate(model, tokenizer, [long, short], max_new_tokens=10, steps=10, alg=alg)
    assert batched.attention_mask[1].sum() < batched.attention_mask[0].sum()  # the short row really is padded
    assert torch.equal(batched.completion_ids[1], alone.completion_ids[0])
    assert torch.equal(batched.order[1], alone.order[0])
    assert batched.prompt_ids[1] == alone.prompt_ids[0]


def test_shifted_head_oracle_is_decoded_exactly_and_an_off_by_one_is_not(peaked_tiny):
    _, tokenizer = peaked_tiny
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


def test_texts_stop_at_the_first_end_token_and_drop_special_tokens(peaked_tiny):
    _, tokenizer = peaked_tiny
    body = tokenizer("print(1)", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    dlm_pad = tokenizer.convert_tokens_to_ids(DLM_PAD)
    rows = torch.tensor([body + [dlm_pad, im_end] + body, body + [tokenizer.eos_token_id] + body + [im_end]])
    assert decode_completions(tokenizer, rows) == ["print(1)", "print(1)"]


def test_bad_options_fail_with_a_clear_message(peaked_tiny):
    model, tokenizer = peaked_tiny
    with pytest.raises(ValueError, match="alg 'greedy' is not one of"):
        generate(model, tokenizer, ["x"], max_new_tokens=4, steps=4, alg="greedy")
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tokenizer, ["x"], max_new_tokens=4, steps=4, top_p=1.5)


def test_bf16_model_generates_and_scores_with_gradients():
    model, tokenizer = build_tiny(dtype=torch.bfloat16, **PEAKED)
    result = generate(model.eval(), tokenizer, [chat(tokenizer, "add"), chat(tokenizer, "print it")],
                      max_new_tokens=8, steps=8, temperature=1.0, top_k=20, alg="topk_margin", seed=0)
    assert (result.completion_ids != tokenizer.mask_token_id).all()
    model.train()
    model.gradient_checkpointing_enable()
    scores = token_scores(model, result.sequences, result.attention_mask, torch.ones(2, 8, dtype=torch.bool), seed=0)
    scores.scores.sum().backward()
    assert scores.scores.dtype == torch.float32 and torch.isfinite(scores.scores).all()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()
