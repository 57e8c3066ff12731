"""The whole loop on real parts: local Ray, embedded redis-server, the real sandbox, DeepSpeed on CPU."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.metrics import REQUIRED_STEP_METRICS
from orchestrator.redis_server import EmbeddedRedis, connect
from actors.stream import TrajectoryStream
from tests.ray_head import start_ray_head

REPO = Path(__file__).resolve().parents[2]
DIFFURL = [sys.executable, "-m", "orchestrator.cli"]
SMALL = ["run.steps=3", "rollout.num_workers=1", "rollout.group_size=2", "rollout.prompts_per_step=2",
         "rollout.max_new_tokens=16", "rollout.steps=8", "learner.micro_batch_size=2", "metrics.progress_bar=false",
         "model.tiny.vocab_size=512", "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64",
         "model.tiny.num_hidden_layers=1"]


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def _stream_state(run_dir: Path) -> tuple[list[str], int]:
    """Restart the run's redis-server from its append-only file; return (all stream ids, pending count)."""
    server = EmbeddedRedis(run_dir / "redis")
    server.start()
    try:
        client = connect(server.url)
        key = f"diffurl:{run_dir.name}:traj"
        ids = [eid.decode() for eid, _ in client.xrange(key)]
        pending = client.xpending(key, "learner")["pending"]
        return ids, pending
    finally:
        server.stop()


def _check_run(run_dir: Path, steps: int, groups_per_step: int) -> None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for row in rows:
        missing = [m for m in REQUIRED_STEP_METRICS if m not in row]
        assert not missing, f"step {row['step']} lacks {missing}"
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{steps:06d}"
    trained = [json.loads(line) for line in (run_dir / "trained_groups.jsonl").read_text().splitlines()]
    entry_ids = [g["entry_id"] for step in trained for g in step["groups"]]
    assert len(entry_ids) == steps * groups_per_step
    assert len(set(entry_ids)) == len(entry_ids), "a group was trained on twice"
    stream_ids, pending = _stream_state(run_dir)
    assert sorted(entry_ids) == sorted(stream_ids), "every published group is consumed exactly once"
    assert pending == 0, "every consumed group is acknowledged"


@pytest.mark.integration
def test_async_run_with_the_reference_decoder_and_broadcast_sync_completes_and_bounds_staleness(tmp_path):
    """Async with weights.sync=broadcast: rollout workers busy with a group join the gloo broadcast after it."""
    cmd = DIFFURL + ["train", "configs/demo.yaml", *SMALL, f"run.root_dir={tmp_path}", "run.name=it-async",
                     "run.mode=async", "run.eta=1", "rollout.num_workers=2", "rollout.num_cpus=0.5",
                     "ray.num_cpus=3", "rollout.decoder=reference",  # the demo preset's default is fast
                     "weights.sync=broadcast", "weights.bucket_mb=0.05"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # the rollout workers' pool copy holds no actor handles: Ray's ERROR line about restartable actors with
    # constructor arguments in the object store (ray#53727) is gone, its cause with it
    assert "constructor arguments in the object store" not in proc.stdout + proc.stderr
    run_dir = _run_dir(tmp_path)
    _check_run(run_dir, steps=3, groups_per_step=2)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["staleness_max"] <= 1 for r in rows), [r["staleness_max"] for r in rows]


BROKEN = {"task_id": "broken/0", "question": "Write a Python function `add(a, b)` that returns a + b.",
          "entry_point": "add", "tests": ["assert add(1, 2) == 3"], "reference": "def add(a, b):\n    return a - b\n"}


@pytest.mark.integration
def test_fast_decoder_run_batches_a_workers_groups_and_logs_forwards(tmp_path):
    """One rollout worker, two groups per step: each call decodes both groups (4 rows) with the fast decoder.
    The data holds one problem whose reference fails its own test: reported when the run starts, recorded,
    counted in every step's metrics and never trained on."""
    data = tmp_path / "data.jsonl"
    data.write_text((REPO / "configs/data/toy_train.jsonl").read_text() + json.dumps(BROKEN) + "\n"
                    + '{"task_id": "no-question"}\nnot json\n')  # two rows no format can read: skipped
    runs = tmp_path / "runs"
    cmd = DIFFURL + ["train", "configs/demo.yaml", *SMALL, f"run.root_dir={runs}", "run.name=it-fast",
                     f"data.train={data}", "rollout.decoder=fast", "rollout.cache=prefix", "rollout.block_length=8",
                     "rollout.threshold=0.9", "rollout.num_cpus=0.5", "learner.num_cpus=0.5"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert ("training problems: 41 of 41 checked against their reference solutions, 1 unjudgeable, left out: "
            "broken/0 (the reference solution fails test 1 ('assert add(1, 2) == 3'): AssertionError)") in proc.stdout
    run_dir = _run_dir(runs)
    skipped = ["line 42: missing field 'question'", "line 43: not valid JSON (Expecting value)"]
    assert json.loads((run_dir / "run.json").read_text())["skipped_rows"] == skipped
    said = f"skipped 2 bad rows of {data} (all in {run_dir / 'run.json'}): {'; '.join(skipped)}"
    assert proc.stdout.index(said) < proc.stdout.index("done: step"), "reported when the run starts"
    _check_run(run_dir, steps=3, groups_per_step=2)
    assert list(json.loads((run_dir / "unjudgeable.json").read_text())) == ["broken/0"]
    trained = [json.loads(line) for line in (run_dir / "trained_groups.jsonl").read_text().splitlines()]
    assert not any(g["prompt_id"].startswith("broken/") for step in trained for g in step["groups"])
    server = EmbeddedRedis(run_dir / "redis")
    server.start()
    try:
        trajectories = [t for _, t in TrajectoryStream(connect(server.url), run_dir.name).entries()]
    finally:
        server.stop()
    assert len(trajectories) == 6
    for t in trajectories:
        assert t.decode.decoder == "fast" and t.decode.batch_rows == 4
        assert 1 <= t.decode.forwards <= 16 and t.decode.tokens_per_forward >= 1.0
        assert all(min(row) >= 0 for row in t.decode.order), "every position was revealed"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(1 <= r["decode_forwards"] <= 16 and r["tokens_per_forward"] >= 1.0 for r in rows)
    assert [r["unjudgeable_problems"] for r in rows] == [1.0] * 3


@pytest.mark.parametrize("override, message", [
    ("learner.bogus=1", r"learner\.bogus=1: unknown key"),
    ("rollout.group_size=many", r"rollout\.group_size=many: expected an integer"),
    ("learner.micro_batch_size=3", r"learner\.micro_batch_size=3: must divide"),
])
def test_bad_config_exits_2_with_one_line_and_starts_nothing(tmp_path, override, message):
    cmd = DIFFURL + ["train", "configs/demo.yaml", override, f"run.root_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffurl: error: "), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not any(tmp_path.iterdir()), "a run directory was created for a bad config"


@pytest.mark.integration
@pytest.mark.parametrize("override, key", [("learner.gpus_per_rank=1", "learner.gpus_per_rank=1"),
                                           ("rollout.gpus_per_worker=0.5", "rollout.gpus_per_worker=0.5")])
def test_asking_for_gpus_on_a_cluster_without_gpus_exits_2_naming_the_key_and_the_cluster(tmp_path, override, key):
    cmd = DIFFURL + ["train", "configs/demo.yaml", *SMALL, override, f"run.root_dir={tmp_path}", "ray.num_cpus=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("diffurl: error: ")]
    assert errors == [f"diffurl: error: {key}: the Ray cluster has no GPUs (1 node, 2 CPUs, 0 GPUs); set it to 0, "
                      "or run.device=cpu to run this config on CPU"], proc.stderr[-3000:]
    # found once Ray is up, after the run directory was made: the refused start takes its directory with it
    assert not any(tmp_path.iterdir()), "the refused run's directory is left behind"


def test_dry_run_prints_the_actor_plan_and_starts_nothing(tmp_path):
    cmd = DIFFURL + ["train", "configs/demo.yaml", "--dry-run", "rollout.num_workers=3", "learner.num_ranks=2",
                     "learner.micro_batch_size=2", f"run.root_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rollout  x3" in proc.stdout and "learner  x2" in proc.stdout and "sandbox  x1" in proc.stdout
    assert not any(tmp_path.iterdir())


def test_dry_run_of_the_paper_recipe_plans_with_missing_paths_as_warnings_and_a_run_refuses_them(tmp_path):
    """configs/diffucoder_7b.yaml names a model and a dataset that are not on this machine."""
    args = ["train", "configs/diffucoder_7b.yaml", f"run.root_dir={tmp_path}", "data.train=/nonexistent/train.jsonl"]
    plan = subprocess.run(DIFFURL + [*args, "--dry-run"], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "learner  x4" in plan.stdout and "rollout  x4" in plan.stdout
    assert "needs: 8 CPUs, 8 GPUs in total" in plan.stdout
    assert "memory estimate from " + str(REPO / "configs" / "shapes" / "diffucoder_7b.json") in plan.stdout
    assert re.search(r"per learner rank \(GPU memory, bfloat16, ZeRO-2 over 4 ranks.*\n\s+params [\d.]+ GiB .*"
                     r"optimizer [\d.]+ GiB .*reference [\d.]+ GiB = [\d.]+ GiB", plan.stdout), plan.stdout
    warnings = plan.stderr.strip().splitlines()
    assert [w.split(":")[:2] for w in warnings] == [["diffurl", " warning"]] * 2, plan.stderr
    assert "data.train=/nonexistent/train.jsonl: not found" in warnings[0] and "model.path=" in warnings[1]
    run = subprocess.run(DIFFURL + args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["diffurl: error: data.train=/nonexistent/train.jsonl: not found; "
                                               "expected a JSONL or Parquet file"]
    assert not any(tmp_path.iterdir())


def test_dry_run_of_the_two_node_paper_recipe_plans_16_gpus(tmp_path):
    args = ["train", "configs/diffucoder_7b_2nodes.yaml", "--dry-run", f"run.root_dir={tmp_path}"]
    plan = subprocess.run(DIFFURL + args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "learner  x8" in plan.stdout and "rollout  x8" in plan.stdout
    assert "a placement group of 8 bundles {CPU: 1, GPU: 1}, strategy PACK" in plan.stdout
    assert "needs: 16 CPUs, 16 GPUs in total" in plan.stdout and "ZeRO-2 over 8 ranks" in plan.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
def test_dry_run_with_a_ray_address_plans_against_the_clusters_totals(tmp_path):
    head = start_ray_head(num_cpus=3)
    try:
        env = {**_env(), "RAY_ADDRESS": head.address}
        base = DIFFURL + ["train", "configs/demo.yaml", "--dry-run", f"run.root_dir={tmp_path}"]
        fits = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        short = subprocess.run(base + ["rollout.num_workers=8"], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=120)
        paper = subprocess.run(DIFFURL + ["train", "configs/diffucoder_7b.yaml", "--dry-run"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
    finally:
        head.stop()
    assert fits.returncode == 0, fits.stderr
    assert "  cluster: 1 node, 3 CPUs, 0 GPUs" in fits.stdout and "  fits: 0 of 0 GPUs, 1.5 of 3 CPUs" in fits.stdout
    assert short.returncode == 0, short.stderr
    assert "  SHORT: 4.5 CPUs needed, the cluster has 3" in short.stdout
    assert paper.returncode == 2
    assert paper.stderr.strip().splitlines()[-1] == (
        "diffurl: error: learner.gpus_per_rank=1: the Ray cluster has no GPUs (1 node, 3 CPUs, 0 GPUs); "
        "set it to 0, or run.device=cpu to run this config on CPU")
    assert not any(tmp_path.iterdir())

