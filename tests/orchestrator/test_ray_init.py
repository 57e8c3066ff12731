"""How a run starts and stops Ray and its Redis: a local start that times out is retried once, then a one-line
error; the embedded Redis listens beyond loopback only on a cluster; a local run's last step reaches Prometheus."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from orchestrator import run as run_module
from orchestrator.config import load_config
from orchestrator.errors import UserError
from orchestrator.redis_server import EVERY_INTERFACE, LOOPBACK, free_port
from orchestrator.rundir import RunDir
from tests.orchestrator.test_metrics import sample
from tests.system.test_train_integration import SMALL, _check_run

REPO = Path(__file__).resolve().parents[2]
NODE_TIMEOUT = ("The current node timed out during startup. This could happen because some of the raylet failed "
                "to startup or the GCS has become overloaded.")  # Ray 2.60 raises it as a bare Exception


@pytest.fixture
def local_cfg(monkeypatch):
    """The demo config for a local cluster (no RAY_ADDRESS), and a Ray that is not running in this process."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(run_module.ray, "is_initialized", lambda: False)
    return load_config(str(REPO / "configs" / "demo.yaml"), ["ray.num_cpus=2"])


def fake_ray(monkeypatch, *outcomes):
    """ray.init raising or returning `outcomes` in turn; returns the log of ray.init/ray.shutdown calls."""
    calls, pending = [], list(outcomes)

    def init(**kwargs):
        calls.append(("init", kwargs["_metrics_export_port"]))
        outcome = pending.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome

    monkeypatch.setattr(run_module.ray, "init", init)
    monkeypatch.setattr(run_module.ray, "shutdown", lambda: calls.append(("shutdown", None)))
    return calls


def test_a_local_start_that_times_out_is_cleaned_up_and_tried_once_more(local_cfg, monkeypatch):
    calls, said = fake_ray(monkeypatch, Exception(NODE_TIMEOUT), None), []
    started, port = run_module.init_ray(local_cfg, "r1", out=said.append)
    assert started and [c[0] for c in calls] == ["init", "shutdown", "init"]
    assert port == calls[2][1], "the port returned is the one the successful start used"
    assert len(said) == 1 and "timed out during startup" in said[0] and "trying once more" in said[0]


def test_a_second_timeout_is_one_line_saying_what_to_try(local_cfg, monkeypatch):
    calls = fake_ray(monkeypatch, Exception(NODE_TIMEOUT), TimeoutError("Timed out after 60 seconds"))
    with pytest.raises(UserError) as error:
        run_module.init_ray(local_cfg, "r1", out=lambda line: None)
    message = str(error.value)
    assert "\n" not in message and message.startswith("ray.init: the local Ray node timed out during startup twice")
    assert "ray.num_cpus=2" in message and "ray start --head" in message and "ray.address=" in message
    assert [c[0] for c in calls] == ["init", "shutdown", "init", "shutdown"]


def test_a_start_failing_for_another_reason_is_not_retried(local_cfg, monkeypatch):
    calls = fake_ray(monkeypatch, ValueError("bad resources"))
    with pytest.raises(ValueError, match="bad resources"):
        run_module.init_ray(local_cfg, "r1")
    assert calls == [("init", calls[0][1])]


def test_the_embedded_redis_listens_on_every_interface_only_for_a_cluster_and_resume_keeps_port_and_password(
        tmp_path):
    run = RunDir.create(tmp_path, "bind")
    assert run_module._embedded_redis(run, None, cluster=False).bind == LOOPBACK
    cluster = run_module._embedded_redis(run, None, cluster=True)
    assert cluster.bind == EVERY_INTERFACE and cluster.password  # never without a password
    port = free_port()
    again = run_module._embedded_redis(run, f"redis://:pw1@192.0.2.9:{port}/0", cluster=True)
    assert (again.bind, again.port, again.password) == (EVERY_INTERFACE, port, "pw1")


@pytest.mark.integration
@pytest.mark.slow
def test_a_local_runs_last_step_reaches_prometheus_before_ray_stops(tmp_path):
    """The endpoint dies with the run's Ray, so a scraper reads it while the run goes on, every 0.1 s, and
    keeps the latest answer: the last answer before Ray stopped must count every step and carry the last
    step's gauges. The run itself: the resolved config in the run directory (not on the terminal), every metric of every step, the checkpoint,
    every group consumed once."""
    port = free_port()
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", "configs/demo.yaml", *SMALL, "run.steps=2",
           f"run.root_dir={tmp_path}", "run.name=prom-last", f"ray.metrics_export_port={port}", "ray.num_cpus=2",
           "rollout.num_cpus=0.5", "learner.num_cpus=0.5"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    latest, done = {}, threading.Event()

    def scrape():
        while not done.is_set():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if "ray_diffurl_steps_total{" in text:
                    latest["text"] = text
            except OSError:
                pass
            done.wait(0.1)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        done.set()
        scraper.join()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (run_dir,) = tmp_path.iterdir()
    assert f"run directory: {run_dir} (resolved config: {run_dir / 'config.yaml'})" in proc.stdout
    assert "rollout:" not in proc.stdout and "prom-last" in (run_dir / "config.yaml").read_text()
    _check_run(run_dir, steps=2, groups_per_step=2)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2
    text = latest.get("text", "")
    assert sample(text, "ray_diffurl_steps_total", run=run_dir.name) == 2, text[-2000:]
    assert sample(text, "ray_diffurl_reward_mean", run=run_dir.name) == pytest.approx(last["reward_mean"])
    assert sample(text, "ray_diffurl_kl", run=run_dir.name) == pytest.approx(last["kl"])
