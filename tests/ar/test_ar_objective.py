"""AR-GRPO's math on the causal model: exact token log-probs and the shared clipped loss, against hand
computation; which model a directory holds; the engine / objective / model pairing of a config."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actors.causal import causal_sft_loss, causal_token_logprobs, model_kind
from actors.dllm import build_model, grpo_loss, left_pad, save_model
from orchestrator.config import check_paths, load_config
from orchestrator.errors import UserError
from tests.ar.conftest import tiny_causal

REPO = Path(__file__).resolve().parents[2]


@torch.no_grad()
def _hand_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    """One forward per completion token over the unpadded prefix: log softmax of the last position's logits."""
    out = []
    for k, token in enumerate(completion):
        ids = torch.tensor([prompt + completion[:k]])
        logits = model(input_ids=ids).logits[0, -1].double()
        out.append(float(torch.log_softmax(logits, -1)[token]))
    return out


def _batch(tokenizer, rows):
    prompt_ids, prompt_mask = left_pad([p for p, _ in rows], tokenizer.pad_token_id)
    completion = torch.tensor([c for _, c in rows])
    return torch.cat([prompt_ids, completion], 1), torch.cat([prompt_mask, torch.ones_like(completion)], 1)


ROWS = [([5, 9, 11, 30], [40, 41, 42, 3, 0]), ([7, 8], [50, 60, 3, 0, 0]), ([12, 13, 14, 15, 16, 17], [70, 3, 0, 0, 0])]


@torch.no_grad()
def test_token_logprobs_of_left_padded_rows_equal_a_forward_per_token_on_the_unpadded_prefix():
    model, tokenizer = tiny_causal()
    model.eval()
    input_ids, attention_mask = _batch(tokenizer, ROWS)
    got = causal_token_logprobs(model, input_ids, attention_mask, 5)
    assert got.shape == (3, 5)
    for row, (prompt, completion) in enumerate(ROWS):
        expected = torch.tensor(_hand_logprobs(model, prompt, completion), dtype=torch.float32)
        torch.testing.assert_close(got[row], expected, atol=2e-5, rtol=0)


def test_ar_grpo_loss_equals_the_hand_computed_clipped_objective_with_k3_kl():
    model, tokenizer = tiny_causal()
    ref, _ = tiny_causal(seed=1)
    input_ids, attention_mask = _batch(tokenizer, ROWS)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.5, -0.5, -1.0])
    with torch.no_grad():  # "old" policy: the current one shifted, so that ratios and clipping are exercised
        old = causal_token_logprobs(model, input_ids, attention_mask, 5) + torch.tensor([0.7, -0.7, 0.1, 0.0, 0.3])
        ref_scores = causal_token_logprobs(ref, input_ids, attention_mask, 5)
    scores = causal_token_logprobs(model, input_ids, attention_mask, 5)
    eps, beta = 0.2, 0.05
    loss, stats = grpo_loss(scores, old, ref_scores, adv, mask, eps=eps, beta=beta, tokens=10)

    total, clipped = 0.0, 0
    for b, (prompt, completion) in enumerate(ROWS):
        hand = _hand_logprobs(model, prompt, completion)
        for k in range(5):
            if not mask[b, k]:
                continue
            ratio = math.exp(hand[k] - float(old[b, k]))
            a = float(adv[b])
            surrogate = min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
            delta = float(ref_scores[b, k]) - hand[k]
            total += -surrogate + beta * (math.exp(delta) - delta - 1)
            clipped += (ratio < 1 - eps and a < 0) or (ratio > 1 + eps and a > 0)
    assert float(loss) == pytest.approx(total / 10, abs=1e-5)
    assert stats["clip_fraction"] == pytest.approx(clipped / 10)
    assert 0 < clipped < 9, "the case exercises both clipped and unclipped tokens"
    loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_causal_sft_loss_is_the_token_mean_cross_entropy_over_trained_tokens():
    model, tokenizer = tiny_causal()
    input_ids, attention_mask = _batch(tokenizer, ROWS)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        hand = [-lp for (p, c), m in zip(ROWS, mask) for lp, keep in zip(_hand_logprobs(model, p, c), m) if keep]
        loss = causal_sft_loss(model, input_ids, attention_mask, mask)
    assert float(loss) == pytest.approx(sum(hand) / len(hand), abs=1e-5)


def test_model_kind_tells_causal_from_diffusion_directories(tmp_path, causal_dir):
    assert model_kind(causal_dir) == "causal"
    dllm, tokenizer = build_model({"config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "num_key_value_heads": 1},
                                   "tokenizer": {"train_texts": ["a b c"] * 10, "vocab_size": 300}})
    save_model(dllm, tokenizer, tmp_path / "dllm")
    assert model_kind(tmp_path / "dllm") == "diffusion"
    (tmp_path / "dream").mkdir()
    (tmp_path / "dream" / "config.json").write_text('{"model_type": "Dream", "architectures": ["DreamModel"]}')
    assert model_kind(tmp_path / "dream") == "diffusion"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_kind(tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=vllm"], "rollout.engine=vllm: vllm needs learner.objective=ar_grpo"),
    (["learner.objective=ar_grpo"], "rollout.engine=torch: torch needs learner.objective=coupled_grpo"),
    (["rollout.engine=vllm", "learner.objective=ar_grpo", "model.tiny.num_attention_heads=4"],
     "model.tiny.hidden_size=64: / model.tiny.num_attention_heads must be a head size vLLM's CPU attention"),
])
def test_engine_and_objective_must_pair(overrides, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        load_config(REPO / "configs" / "demo.yaml", overrides)


def test_a_model_the_engine_does_not_serve_is_refused_naming_both(tmp_path, causal_dir):
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"model.path={causal_dir}"])
    with pytest.raises(UserError, match="holds a causal model, but rollout.engine=torch serves diffusion ones; "
                                        "use rollout.engine=vllm learner.objective=ar_grpo"):
        check_paths(cfg)
    check_paths(load_config(REPO / "configs" / "ar_grpo.yaml", [f"model.path={causal_dir}"]))


@pytest.mark.parametrize("preset, kind", [("ar_grpo.yaml", "diffusion"), ("demo.yaml", "causal")])
def test_a_mismatched_engine_and_model_exits_2_with_one_line(tmp_path, causal_dir, preset, kind):
    if kind == "diffusion":
        dllm, tokenizer = build_model({"config": {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2, "num_key_value_heads": 1},
                                       "tokenizer": {"train_texts": ["a b c"] * 10, "vocab_size": 300}})
        model_dir = tmp_path / "dllm"
        save_model(dllm, tokenizer, model_dir)
    else:
        model_dir = causal_dir
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", f"configs/{preset}",
                           f"model.path={model_dir}", f"run.root_dir={tmp_path / 'runs'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"holds a {kind} model" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing started"
