"""A shrunk `diffurl demo` end to end: warm start, eval, coupled-GRPO through the whole system, eval, report."""
from __future__ import annotations

import json
import os

from orchestrator.demo.flow import DemoSettings, run_demo
from orchestrator.config import TinyModelConfig
from orchestrator.demo.warmstart import WarmStartSettings

TINY_WARM = WarmStartSettings(model=TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, num_key_value_heads=1,
                                                   max_position_embeddings=256, vocab_size=512),
                              completion_tokens=48, steps=4, batch_size=8, warmup_steps=1)
SHRUNK_RL = ["run.steps=2", "rollout.steps=12", "rollout.prompts_per_step=2", "rollout.group_size=4",
             "rollout.num_workers=1", "learner.micro_batch_size=4", "metrics.progress_bar=false",
             "metrics.tensorboard=false", "rollout.num_cpus=0.5", "learner.num_cpus=0.5"]


def test_shrunk_demo_runs_end_to_end_and_writes_its_before_after_table(tmp_path):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    lines: list[str] = []
    settings = DemoSettings(overrides=[*SHRUNK_RL, f"run.root_dir={tmp_path / 'runs'}"],
                            cache_root=str(tmp_path / "cache"), warm=TINY_WARM, eval_samples=2, heldout_limit=6)
    result = run_demo(settings, out=lambda line="": lines.append(str(line)))

    run_dir = result.run_dir
    table = (run_dir / "demo_table.md").read_text()
    assert "before (warm start)" in table and "after (2 RL steps)" in table
    for row in ("pass@1 (T=0, n=1)", "pass@1 (T=1, n=2)", "pass@2 (T=1, n=2)", "format rate (T=0)",
                "local AR-ness (T=1)", "global AR-ness (T=0)"):
        assert row in table
    saved = json.loads((run_dir / "demo_results.json").read_text())
    assert [r["temperature"] for r in saved["before"]] == [0.0, 1.0]
    assert all(r["problems"] == 6 for r in saved["before"] + saved["after"])
    assert (run_dir / "reward_curve.png").stat().st_size > 1000
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert lines[-1] == result.final_line and lines[-1].startswith("held-out pass@1 (T=0): ")
    assert any(line.startswith("total wall time: ") for line in lines)


def test_shrunk_ar_demo_warm_starts_a_causal_qwen2_and_runs_ar_grpo_with_vllm_rollouts(tmp_path):
    from dataclasses import replace

    from actors.causal import model_kind
    from orchestrator.config import REPO_ROOT

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    lines: list[str] = []
    warm = replace(TINY_WARM, model=replace(TINY_WARM.model, hidden_size=64))  # head size 32 for vLLM's CPU kernels
    settings = DemoSettings(config=str(REPO_ROOT / "configs" / "ar_grpo.yaml"),
                            overrides=[*SHRUNK_RL, f"run.root_dir={tmp_path / 'runs'}", "rollout.vllm_kv_cache_mb=32"],
                            cache_root=str(tmp_path / "cache"), warm=warm, eval_samples=1, heldout_limit=4)
    result = run_demo(settings, out=lambda line="": lines.append(str(line)))

    (warm_dir,) = (tmp_path / "cache").glob("warmstart-*")
    assert model_kind(warm_dir) == "causal"
    assert json.loads((warm_dir / "warmstart.json").read_text())["settings"]["model"]["family"] == "causal"
    saved = json.loads((result.run_dir / "demo_results.json").read_text())
    assert saved["objective"] == "ar_grpo" and saved["engine"] == "vllm"
    assert all(r["local_arness"] == 1.0 for r in saved["before"] + saved["after"])
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["rollout_logprob_gap"] < 1e-4 for r in rows)
    assert "AR-GRPO" in (result.run_dir / "demo_table.md").read_text()
    assert any("vllm" in line for line in lines if line.startswith("eval: "))


def test_shrunk_llada_demo_warm_starts_a_tiny_llada_and_runs_coupled_grpo_with_its_decoder(tmp_path):
    from actors.dllm.llada import is_llada_dir
    from orchestrator.config import REPO_ROOT

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    lines: list[str] = []
    settings = DemoSettings(config=str(REPO_ROOT / "configs" / "demo_llada.yaml"),
                            overrides=[*SHRUNK_RL, f"run.root_dir={tmp_path / 'runs'}",
                                       f"demo.warm_start_steps={TINY_WARM.steps}"],
                            cache_root=str(tmp_path / "cache"), warm=TINY_WARM, eval_samples=1, heldout_limit=4)
    result = run_demo(settings, out=lambda line="": lines.append(str(line)))

    (warm_dir,) = (tmp_path / "cache").glob("warmstart-*")
    assert is_llada_dir(warm_dir) and json.loads((warm_dir / "warmstart.json").read_text())["settings"]["model"][
        "family"] == "llada"
    assert is_llada_dir(result.run_dir / "checkpoints" / "step000002" / "policy")
    assert "coupled-GRPO (LLaDA, " in (result.run_dir / "demo_table.md").read_text()
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["decode_forwards"] == 12 for r in rows)  # generate.py: rollout.steps forwards
    assert any("llada reference decoder" in line for line in lines if line.startswith("eval: "))
