"""Warm start: SFT examples in the exact answer format, training that lowers the loss, and the cache."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from orchestrator.errors import UserError
from orchestrator.demo.tasks import answer_text, buggy_reference, is_buggy_demo, write_splits
import torch

from actors.dllm import build_tokenizer, save_model, train_tokenizer
from orchestrator.config import TinyModelConfig
from orchestrator.demo.warmstart import (DONE_FILE, WarmStartSettings, cache_dir_for, encode_examples, sft_texts,
                                         train_warm_start, warm_start)
from sandbox_workers import format_score

TINY = WarmStartSettings(model=TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=1,
                                              max_position_embeddings=256, vocab_size=512),
                         steps=6, batch_size=8, warmup_steps=1)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    """The first 64 training problems of the task family."""
    out = tmp_path_factory.mktemp("tasks")
    path = write_splits(out, seed=0)["train"]
    small = out / "train_small.jsonl"
    small.write_text("".join(path.read_text().splitlines(keepends=True)[:64]))
    return small


def _problems(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_completion_is_one_python_block_then_im_end_then_padding(train_file):
    problems = _problems(train_file)[:8]
    tokenizer = train_tokenizer([t for p in problems for t in (p["question"], sft_texts(p)[1])], vocab_size=512)
    prompts, completions = encode_examples(tokenizer, problems, max_prompt_tokens=128, completion_tokens=48)
    im_end, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id
    for p, ids in zip(problems, completions.tolist()):
        end = ids.index(im_end)
        assert format_score(tokenizer.decode(ids[:end])) == 1.0
        assert tokenizer.decode(ids[:end]) == f"```python\n{p['reference']}```\n"
        assert ids[end + 1:] == [eos] * (48 - end - 1)
    assert all(tokenizer.decode(ids).endswith("<|im_start|>assistant\n") for ids in prompts)


def test_buggy_fraction_picks_which_demonstrations_carry_the_swapped_operator(train_file):
    problems = _problems(train_file)[:40]
    assert [sft_texts(p, 0.0)[1] for p in problems] == [answer_text(p["reference"]) + "<|im_end|>" for p in problems]
    assert [sft_texts(p, 1.0)[1] for p in problems] == [
        answer_text(buggy_reference(p["reference"]) or p["reference"]) + "<|im_end|>" for p in problems]
    half = [sft_texts(p, 0.5)[1] != sft_texts(p, 0.0)[1] for p in problems]
    assert half == [is_buggy_demo(p["task_id"], 0.5) and buggy_reference(p["reference"]) is not None for p in problems]
    assert 0 < sum(half) < len(problems)


def test_sft_trains_on_the_token_ids_that_a_reload_of_the_model_dir_produces(train_file, tmp_path):
    """Rollout workers and `diffurl eval` load the saved dir; SFT must have seen their tokenization (numbers too)."""
    problems = _problems(train_file)[:16]
    model, tokenizer, _ = train_warm_start(replace(TINY, steps=1), problems, log=lambda _: None)
    save_model(model, tokenizer, tmp_path / "model")
    reloaded = build_tokenizer(tmp_path / "model")
    assert encode_examples(tokenizer, problems, 128, 48)[0] == encode_examples(reloaded, problems, 128, 48)[0]
    assert torch.equal(encode_examples(tokenizer, problems, 128, 48)[1], encode_examples(reloaded, problems, 128, 48)[1])


def test_answer_longer_than_the_canvas_is_a_user_error(train_file):
    problems = _problems(train_file)[:2]
    tokenizer = train_tokenizer([sft_texts(p)[1] for p in problems], vocab_size=300)
    with pytest.raises(UserError, match="completion_tokens=4"):
        encode_examples(tokenizer, problems, max_prompt_tokens=128, completion_tokens=4)


def test_warm_start_trains_once_then_the_second_call_is_a_cache_hit(train_file, tmp_path):
    logs: list[str] = []
    first = warm_start(TINY, tmp_path, train_file, log=logs.append)
    assert (first / "config.json").is_file() and (first / DONE_FILE).is_file()
    assert any("SFT steps" in line for line in logs)
    weights = next(first.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns

    logs.clear()
    second = warm_start(TINY, tmp_path, train_file, log=logs.append)
    assert second == first and logs == [f"warm start: cached in {first}"]
    assert weights.stat().st_mtime_ns == stamp


def test_cache_key_changes_with_the_settings_and_the_training_file(train_file, tmp_path):
    base = cache_dir_for(TINY, tmp_path, train_file)
    assert cache_dir_for(replace(TINY, steps=7), tmp_path, train_file) != base
    other = tmp_path / "other.jsonl"
    other.write_text("".join(train_file.read_text().splitlines(keepends=True)[:10]))
    assert cache_dir_for(TINY, tmp_path, other) != base


def test_a_warm_start_trained_with_other_cpu_kernels_is_not_reused(train_file, tmp_path, monkeypatch):
    """Unpinned kernels give other weights (the test below): a warm start trained by a process that did not pin
    them (a library caller) has another cache key than one trained under diffurl's pin, so neither is reused for
    the other; the pin's own values make one key whichever process computes it."""
    from orchestrator.placement import CPU_KERNELS

    for name, value in CPU_KERNELS.items():
        monkeypatch.setenv(name, value)
    pinned = cache_dir_for(TINY, tmp_path, train_file)
    assert cache_dir_for(TINY, tmp_path, train_file) == pinned
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert cache_dir_for(TINY, tmp_path, train_file) != pinned
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert cache_dir_for(TINY, tmp_path, train_file) != pinned


def test_sft_lowers_the_loss(train_file, tmp_path):
    settings = replace(TINY, steps=60, lr=1e-2)
    report = json.loads((warm_start(settings, tmp_path, train_file, log=lambda _: None) / DONE_FILE).read_text())
    assert report["final_loss"] < 0.6 * report["first_loss"]


WARM_IN_A_FRESH_PROCESS = """
import hashlib, json, sys
from dataclasses import replace
from orchestrator.placement import apply_actor_env
apply_actor_env()  # as `diffurl demo` does before torch is imported
import torch
from tests.demo.test_warmstart import TINY, _problems
from orchestrator.demo.warmstart import train_warm_start
model, _, _ = train_warm_start(replace(TINY, steps=30), _problems(__import__("pathlib").Path(sys.argv[1])),
                               log=lambda _: None)
digest = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for _, v in sorted(model.state_dict().items())))
print(json.dumps([torch.backends.cpu.get_cpu_capability(), digest.hexdigest()]))
"""


def test_the_warm_start_is_the_same_bits_whatever_vector_unit_the_cpu_has(train_file):
    """torch picks its CPU kernels by the best vector unit it finds (AVX-512 here, AVX2 on many machines), and
    they round differently: the demo's warm start came out different from machine to machine (issue 24, item 9).
    diffurl pins them (orchestrator.placement.CPU_KERNELS); a machine whose best is AVX2 is played by a process
    told so before torch loads. On a machine without AVX-512 both runs are that machine and agree trivially."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from orchestrator.placement import CPU_KERNELS

    repo = Path(__file__).resolve().parents[2]

    def run(**env):
        base = {k: v for k, v in os.environ.items() if k not in CPU_KERNELS}
        proc = subprocess.run([sys.executable, "-c", WARM_IN_A_FRESH_PROCESS, str(train_file)], cwd=repo,
                              env={**base, **env}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    here, avx2_machine = run(), run(ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert here[0] == avx2_machine[0] == "AVX2"
    assert here[1] == avx2_machine[1]
