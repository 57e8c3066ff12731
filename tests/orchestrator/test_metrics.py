import os
import re
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.metrics import REQUIRED_STEP_METRICS, MetricsSink, metric_name, read_metrics
from orchestrator.redis_server import free_port


def test_each_logged_step_is_one_json_line_with_step_and_wall_time(tmp_path):
    before = time.time()
    with MetricsSink(tmp_path, "unit", tensorboard=False) as sink:
        sink.log(1, {"reward_mean": 0.25, "loss": -1.5})
        sink.log(2, {"reward_mean": 0.75, "kl": float("nan"), "grad_norm": float("inf")})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["reward_mean"] == 0.25 and rows[0]["loss"] == -1.5
    assert rows[1]["kl"] is None and rows[1]["grad_norm"] is None  # non-finite -> null, still valid JSON
    assert before <= rows[0]["time"] <= rows[1]["time"] <= time.time()


def test_a_reopened_sink_appends_to_the_same_file(tmp_path):
    for step in (1, 2):
        with MetricsSink(tmp_path, "unit", tensorboard=False) as sink:
            sink.log(step, {"loss": float(step)})
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0, 2.0]


def test_tensorboard_holds_every_scalar_at_its_step(tmp_path):
    with MetricsSink(tmp_path, "unit") as sink:
        sink.log(3, {"reward_mean": 0.5, "time_train": 2.0})
        sink.log(4, {"reward_mean": 1.0, "time_train": 1.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"reward_mean", "time_train"}
    assert [(e.step, e.value) for e in events.Scalars("reward_mean")] == [(3, 0.5), (4, 1.0)]


def test_progress_bar_shows_the_latest_reward(tmp_path, capsys):
    with MetricsSink(tmp_path, "demo", tensorboard=False, progress_steps=2) as sink:
        sink.log(1, {"reward_mean": 0.125, "pass_rate": 0.5})
        sink.log(2, {"reward_mean": 0.875, "pass_rate": 1.0})
    err = capsys.readouterr().err
    assert "2/2" in err and "reward_mean=0.875" in err


def test_metric_names_are_prefixed_and_prometheus_safe():
    assert metric_name("reward_mean") == "diffurl_reward_mean"
    assert metric_name("time/train-step") == "diffurl_time_train_step"
    for name in REQUIRED_STEP_METRICS:
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", metric_name(name))


def test_required_metrics_include_every_phase_time():
    phases = {"generate", "reward", "score", "train", "sync", "checkpoint"}
    assert {f"time_{p}" for p in phases} <= set(REQUIRED_STEP_METRICS)
    assert len(set(REQUIRED_STEP_METRICS)) == len(REQUIRED_STEP_METRICS) == 27


def sample(text: str, name: str, **labels) -> float | None:
    """The value of the first Prometheus sample `name{...}` whose labels include `labels`."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return None


# Runs in a fresh process, as a driver does: Ray keeps metric instruments per process, so one created in
# an earlier Ray session of the pytest process (e.g. by an in-process demo run) would shadow this one.
EXPORT_SCRIPT = """
import sys, time, urllib.request
import ray
from orchestrator.metrics import MetricsSink
port, run_dir = int(sys.argv[1]), sys.argv[2]
ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port, log_to_driver=False)
wanted = ("ray_diffurl_reward_mean{", "ray_diffurl_sandbox_jobs_total{", "ray_diffurl_steps_total{",
          "ray_diffurl_phase_seconds_count{", "ray_diffurl_sandbox_jobs_per_step{")
with MetricsSink(run_dir, "promtest", tensorboard=False) as sink:
    sink.log(1, {"reward_mean": 0.5, "time_generate": 1.5, "sandbox_jobs": 3.0})  # the gauge comes first
    sink.count("sandbox_jobs", 3)
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline and not all(w in text for w in wanted):
        time.sleep(0.5)
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            text = ""
print(text)
ray.shutdown()
"""


@pytest.mark.integration
def test_ray_metrics_named_by_the_run_reach_the_prometheus_endpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(free_port()), str(tmp_path)],
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert sample(text, "ray_diffurl_reward_mean", run="promtest") == 0.5, text[-2000:]
    assert sample(text, "ray_diffurl_sandbox_jobs_total", run="promtest") == 3
    assert sample(text, "ray_diffurl_sandbox_jobs_per_step", run="promtest") == 3
    assert sample(text, "ray_diffurl_steps_total", run="promtest") == 1
    assert sample(text, "ray_diffurl_phase_seconds_count", run="promtest", phase="generate") == 1
    assert sample(text, "ray_diffurl_phase_seconds_sum", run="promtest", phase="generate") == 1.5
