"""`diffurl eval`: the pass@k estimator, checkpoint resolution, prompts, and a HumanEval run of a random model."""
from __future__ import annotations

import json
import os
from math import comb

import pytest

from actors.dllm import build_model, save_model
from actors.prompts import HUMANEVAL_INSTRUCTION, eval_messages
from orchestrator.errors import UserError
from orchestrator.cli import main
from actors.decoder_settings import DecoderSettings
from orchestrator.evaluate import (EvalOptions, EvalResult, _decode_all, format_table, load_eval_problems,
                                   parse_temperatures, pass_at_k, resolve_checkpoint)


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory):
    """A random tiny dLLM whose BPE was trained on a few HumanEval prompts."""
    texts = [p["prompt"] for p in load_eval_problems("humaneval", limit=40)]
    model, tokenizer = build_model({"config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "num_key_value_heads": 1,
                                               "max_position_embeddings": 256},
                                    "tokenizer": {"train_texts": texts, "vocab_size": 512}, "seed": 0})
    out = tmp_path_factory.mktemp("random_model")
    save_model(model, tokenizer, out)
    return out


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (4, 1, 1), (4, 1, 2), (4, 3, 2), (10, 2, 8), (5, 0, 5)])
def test_pass_at_k_is_one_minus_the_chance_that_k_draws_all_fail(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_checkpoint_argument_resolves_a_model_dir_a_run_dir_and_a_checkpoint_dir(random_model_dir, tmp_path):
    assert resolve_checkpoint(random_model_dir) == random_model_dir
    policy = tmp_path / "run" / "checkpoints" / "step000002" / "policy"
    policy.mkdir(parents=True)
    (policy / "config.json").write_text("{}")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step000002\n")
    assert resolve_checkpoint(tmp_path / "run") == policy
    assert resolve_checkpoint(tmp_path / "run" / "checkpoints") == policy
    assert resolve_checkpoint(policy.parent) == policy


@pytest.mark.parametrize("name", ["missing", "empty"])
def test_a_path_without_a_model_is_a_one_line_user_error(tmp_path, name):
    if name == "empty":
        (tmp_path / name).mkdir()
    with pytest.raises(UserError) as info:
        resolve_checkpoint(tmp_path / name)
    assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)


def test_humaneval_problems_get_the_evalplus_instruct_template_and_task_problems_the_training_prompt():
    humaneval = load_eval_problems("humaneval", limit=2)
    assert len(humaneval) == 2 and humaneval[0]["task_id"] == "HumanEval/0"
    user = eval_messages(humaneval[0])[-1]["content"]
    assert user.startswith(HUMANEVAL_INSTRUCTION + "\n```\n") and humaneval[0]["prompt"].strip() in user
    task = {"task_id": "t", "question": "Write a Python function `f(x: int) -> int` that returns x plus 1.",
            "entry_point": "f", "tests": ["assert f(1) == 2"]}
    assert task["question"] in eval_messages(task)[-1]["content"]


def test_bad_temperatures_are_a_user_error():
    assert parse_temperatures("0, 0.4") == [0.0, 0.4]
    for text in ("", "hot", "-1"):
        with pytest.raises(UserError, match="--temperatures"):
            parse_temperatures(text)


def test_table_has_a_row_per_metric_and_a_column_per_label():
    res = EvalResult(temperature=0.4, samples=2, problems=3, pass_at={1: 0.5, 2: 0.75}, format_rate=1.0)
    lines = format_table({"before": [res], "after": [res]}).splitlines()
    assert lines[0] == "| metric | before | after |"
    assert "| pass@2 (T=0.4, n=2) | 75.0% | 75.0% |" in lines


def test_eval_of_a_random_tiny_model_on_humaneval_runs_and_reports_near_zero(random_model_dir, tmp_path, capsys):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "results.json"
    rc = main(["eval", str(random_model_dir), "--problems", "humaneval", "--limit", "4", "--samples", "2",
               "--temperatures", "0,0.4", "--max-new-tokens", "16", "--sandbox-workers", "1", "--out", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert [r["temperature"] for r in results] == [0.0, 0.4]
    assert [r["samples"] for r in results] == [1, 2] and all(r["problems"] == 4 for r in results)
    assert set(results[1]["pass_at"]) == {"1", "2"}
    for r in results:
        assert r["pass_at"]["1"] <= 0.25 and r["format_rate"] <= 0.25 and r["sandbox_errors"] == 0
        assert 0.0 <= r["local_arness"] <= 1.0 and 0.0 <= r["global_arness"] <= 1.0
    assert "| pass@1 (T=0, n=1) |" in capsys.readouterr().out


def test_eval_of_a_missing_problems_file_exits_2(random_model_dir, tmp_path, capsys):
    rc = main(["eval", str(random_model_dir), "--problems", str(tmp_path / "nope.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffurl: error: --problems")


# ----------------------------------------------------------------------------------------- decoders

def _eval_prompts(model_dir, count: int, settings):
    from actors.policy import policy_for
    from actors.prompts import encode_prompt

    engine = policy_for(model_dir).engine(model_dir, settings)
    problems = load_eval_problems("humaneval", limit=count)
    return engine, [encode_prompt(engine.tokenizer, eval_messages(p), 64) for p in problems]


def test_reference_eval_decodes_exactly_as_one_generate_call_per_batch_seeded_from_its_rows(random_model_dir):
    from actors.dllm import derived_seed, generate
    from actors.dllm.seeding import batch_seed

    engine, prompt_ids = _eval_prompts(random_model_dir, 2, DecoderSettings(max_new_tokens=8, steps=8))
    decoded = _decode_all(engine, prompt_ids, 2, 0.7, EvalOptions(batch_size=3, seed=5))
    jobs = [ids for ids in prompt_ids for _ in range(2)]
    expected = []
    for start in (0, 3):
        rows = range(start, min(start + 3, len(jobs)))
        expected += generate(engine.model, engine.tokenizer, jobs[start:start + 3], max_new_tokens=8, steps=8,
                             temperature=0.7, top_p=0.95, alg="entropy",
                             seed=batch_seed([derived_seed(5, "eval", j) for j in rows])).texts
    assert decoded.texts == expected
    assert decoded.forwards == 16 and decoded.decode_s > 0 and decoded.row_tokens == decoded.row_forwards == 32


def test_fast_eval_completions_do_not_depend_on_the_batch_size(random_model_dir):
    settings = DecoderSettings(max_new_tokens=8, decoder="fast", threshold=0.5, block_length=4, cache="prefix")
    engine, prompt_ids = _eval_prompts(random_model_dir, 2, settings)
    texts = []
    for batch_size in (1, 4):
        decoded = _decode_all(engine, prompt_ids, 2, 1.0, EvalOptions(batch_size=batch_size))
        assert decoded.forwards >= 2 and decoded.row_tokens >= 1
        texts.append(decoded.texts)
    assert texts[0] == texts[1] and len(texts[0]) == 4


def test_eval_with_the_fast_decoder_on_humaneval_reports_decode_time_and_forwards(random_model_dir, tmp_path, capsys):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "results.json"
    rc = main(["eval", str(random_model_dir), "--problems", "humaneval", "--limit", "2", "--samples", "2",
               "--temperatures", "0,0.4", "--max-new-tokens", "16", "--sandbox-workers", "1", "--decoder", "fast",
               "--threshold", "0.9", "--block-length", "8", "--cache", "prefix", "--out", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert [r["temperature"] for r in results] == [0.0, 0.4] and [r["samples"] for r in results] == [1, 2]
    for r in results:
        assert r["decode_s"] > 0 and r["forwards"] >= 1 and r["tokens_per_s"] > 0
        assert 0 < r["tokens_per_forward"] and r["sandbox_errors"] == 0
    printed = capsys.readouterr().out
    assert "fast decoder" in printed and "forwards" in printed and "| decode tokens/s (T=0) |" in printed


@pytest.mark.parametrize("flags, named", [
    (["--threshold", "0.5"], "--threshold"),
    (["--cache", "prefix"], "--cache"),
    (["--block-length", "8"], "--block-length"),
    (["--factor", "1.0"], "--factor"),
    (["--decoder", "fast", "--threshold", "0"], "--threshold"),
    (["--decoder", "fast", "--block-length", "0"], "--block-length"),
    (["--decoder", "fast", "--cache", "full"], "--cache"),
    (["--decoder", "fast", "--steps", "8"], "--steps"),
    (["--decoder", "slow"], "--decoder"),
])
def test_bad_or_misplaced_decoder_flags_exit_2_with_one_line(random_model_dir, capsys, flags, named):
    rc = main(["eval", str(random_model_dir), "--problems", "humaneval", "--limit", "1", *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffurl: error: ") and named in err[0]


# ----------------------------------------------------------------------------------------- families, devices

@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    from actors.dllm.llada import save_llada
    from tests.tiny_model import build_tiny, tiny_llada

    _, tokenizer = build_tiny()
    out = tmp_path_factory.mktemp("llada") / "tiny-llada"
    save_llada(tiny_llada(tokenizer), tokenizer, out)
    return out


def test_eval_of_a_llada_checkpoint_decodes_with_its_own_decoder_on_the_cpu(llada_dir, tmp_path, capsys):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "results.json"
    rc = main(["eval", str(llada_dir), "--problems", "humaneval", "--limit", "2", "--samples", "2",
               "--temperatures", "0,1", "--max-new-tokens", "8", "--steps", "8", "--alg", "maskgit_plus",
               "--top-p", "1", "--device", "cpu", "--sandbox-workers", "1", "--out", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert [r["samples"] for r in results] == [1, 2] and all(r["problems"] == 2 for r in results)
    assert all(r["forwards"] == 8 for r in results)  # each temperature is one batch: 8 steps of generate.py
    assert "llada reference decoder on cpu" in capsys.readouterr().out


@pytest.mark.parametrize("flags, named", [
    (["--alg", "entropy", "--top-p", "1"], "--alg 'entropy': LLaDA's decoder remasks by low confidence"),
    (["--alg", "maskgit_plus"], "--top_p / top_k: LLaDA's decoder samples the full distribution"),
    (["--device", "cuda"], "--device cuda: torch"),
    (["--device", "tpu"], "--device tpu: expected auto, cpu or cuda"),
    (["--top-p", "0"], "--top-p 0: must be in (0, 1]"),
])
def test_what_a_llada_eval_cannot_do_exits_2_with_one_line(llada_dir, capsys, monkeypatch, flags, named):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device cuda: as on a machine without a GPU
    rc = main(["eval", str(llada_dir), "--problems", "humaneval", "--limit", "1", "--max-new-tokens", "8", *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
