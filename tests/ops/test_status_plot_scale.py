"""`diffurl status`, `plot` and `scale` on run directories built here, against a real redis-server; sandbox
heartbeats from a real pool on a real Ray cluster."""
from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.ops.plot import plot_run
from orchestrator.redis_server import free_port
from orchestrator.ops.status import ALIVE_WITHIN_S
from actors.stream import TrajectoryStream
from orchestrator.stream import RunState
from orchestrator.cli import main
from sandbox_workers.worker import Heartbeat
from tests.orchestrator.test_redis_stream import sample_trajectory
from tests.sandbox.pools import module_pool

PHASES = {"time_generate": 1.5, "time_reward": 0.25, "time_score": 0.5, "time_train": 2.0, "time_sync": 0.1,
          "time_checkpoint": 0.3}


def metrics_row(step: int) -> dict:
    return {"step": step, "time": 1.7e9 + step, "reward_mean": 0.1 * step, "reward_std": 0.05, "pass_rate": 0.2 * step,
            "kl": 0.01 * step, "local_arness": 0.3, "global_arness": 0.6, "staleness": 0.5, "staleness_max": 1.0,
            "stream_depth": 3.0, **PHASES}


def make_run(root: Path, redis_url: str, rows: list[dict], status: str = "running", steps: int = 4) -> Path:
    """A run directory as the driver leaves it: run.json, the resolved config.yaml, metrics.jsonl."""
    run_id = f"ops-{uuid.uuid4().hex[:8]}"
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    now = time.time()
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": run_id, "run_dir": str(run_dir), "redis_url": redis_url, "ray_address": None, "driver_pid": 1,
        "status": status, "started": now - 60, "updated": now}))
    (run_dir / "config.yaml").write_text(f"run:\n  name: ops\n  steps: {steps}\n")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffurl: error: "), lines
    return lines[0]



@pytest.fixture
def gone_url():
    """The URL of a Redis that does not run (the run ended and its embedded server stopped)."""
    return f"redis://:pw@127.0.0.1:{free_port()}/0"


def test_status_reports_live_workers_stream_and_the_latest_step_with_phase_times(tmp_path, server, client, capsys):
    run_dir = make_run(tmp_path, server.url, [metrics_row(1), metrics_row(2)])
    run_id = run_dir.name
    state = RunState(client, run_id)
    state.set_status("running")
    state.set_desired_workers(3)
    state.set_desired_workers(2, role="sandbox")
    now = time.time()
    state.heartbeat("rollout-0", now=now)
    state.heartbeat("rollout-1", now=now - ALIVE_WITHIN_S - 5)  # stale: not alive
    state.heartbeat("sandbox-0", now=now)
    stream = TrajectoryStream(client, run_id)
    for i in range(3):
        stream.publish(sample_trajectory(group_id=f"g{i}"))
    stream.ack([eid for eid, _ in stream.read(1, "learner-0")])

    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "status     running (redis)" in out
    assert "step       2/4" in out
    assert "reward     0.200 (std 0.050)   pass rate 0.400" in out
    assert "rollout 1 alive / 3 desired" in out and "sandbox 1 alive / 2 desired" in out
    assert "stream     depth 2 (redis)" in out
    assert "staleness  mean 0.500, max 1.000" in out
    assert "generate 1.50s" in out and "checkpoint 0.30s" in out
    assert str(run_dir) in out and "note" not in out


ADD = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]}
ADD_OK = "def add(a, b):\n    return a + b\n"


def wait_for_heartbeat(state: RunState, worker: str, timeout_s: float = 15.0) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker in state.heartbeats():
            return state.heartbeats()[worker]
        time.sleep(0.1)
    return None


def test_a_heartbeat_writes_at_most_once_per_interval_however_often_it_beats(server, client):
    key = f"diffurl:hb-{uuid.uuid4().hex[:8]}:heartbeat"
    hsets = lambda: client.info("commandstats").get("cmdstat_hset", {}).get("calls", 0)  # noqa: E731
    before, beats = hsets(), 0
    heartbeat = Heartbeat(server.url, key, "sandbox-0", interval_s=0.5)
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            heartbeat.beat()
            beats += 1
    finally:
        heartbeat.close()
    assert beats > 1000 and 1 <= hsets() - before <= 3  # writes at 0, 0.5 and maybe 1.0 s
    assert set(client.hgetall(key)) == {b"sandbox-0"}


def test_a_heartbeat_to_a_redis_that_is_down_never_raises_and_is_logged_once(gone_url, caplog):
    heartbeat = Heartbeat(gone_url, "diffurl:gone:heartbeat", "sandbox-0", interval_s=0.05)
    try:
        with caplog.at_level("WARNING", logger="sandbox_workers.worker"):
            for _ in range(10):
                heartbeat.beat()
                time.sleep(0.1)
    finally:
        heartbeat.close()
    failures = [r for r in caplog.records if "heartbeat to Redis failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.integration
def test_status_counts_a_sandbox_worker_that_scored_as_alive(ray_cluster, tmp_path, server, client, capsys):
    run_dir = make_run(tmp_path, server.url, [metrics_row(1)])
    state = RunState(client, run_dir.name)
    state.set_desired_workers(1, role="sandbox")
    with module_pool("hb-sandbox", redis_url=server.url, heartbeat_key=state.heartbeat_key) as pool:
        assert wait_for_heartbeat(state, "sandbox-0") is not None, "a worker heartbeats when it starts"
        client.hdel(state.heartbeat_key, "sandbox-0")
        scored_at = time.time()
        assert pool.score([ADD], [ADD_OK])[0]["status"] == "passed"
        beat = wait_for_heartbeat(state, "sandbox-0")
    assert beat is not None and beat >= scored_at, "a worker heartbeats when it scores a batch"
    assert main(["status", str(run_dir)]) == 0
    assert "sandbox 1 alive / 1 desired" in capsys.readouterr().out


@pytest.mark.integration
def test_a_sandbox_worker_whose_heartbeat_redis_is_down_still_scores(ray_cluster, gone_url):
    with module_pool("hb-gone-sandbox", redis_url=gone_url, heartbeat_key="diffurl:gone:heartbeat") as pool:
        results = pool.score([ADD, ADD], [ADD_OK, "def add(a, b):\n    return a - b\n"])
    assert [r["status"] for r in results] == ["passed", "failed"]


def test_status_of_an_ended_run_says_redis_is_gone_and_shows_the_run_directory(tmp_path, gone_url, capsys):
    run_dir = make_run(tmp_path, gone_url, [metrics_row(1), metrics_row(2), metrics_row(3)], status="finished")
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "status     finished (run.json" in out and "step       3/4" in out
    assert "stream     depth 3 at step 3" in out
    assert "cannot connect" in out and "(has the run ended?); showing the run directory only" in out
    assert ":pw@" not in out  # the password is redacted


def test_status_of_a_run_with_no_metrics_yet_says_so(tmp_path, server, capsys):
    run_dir = make_run(tmp_path, server.url, [])
    assert main(["status", str(run_dir)]) == 0
    assert "step       0/4  (no metrics logged yet)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["status", "plot", "scale"])
def test_a_missing_run_directory_exits_2_with_one_line(tmp_path, command, capsys):
    extra = ["--rollout-workers", "2"] if command == "scale" else []
    assert main([command, str(tmp_path / "nope"), *extra]) == 2
    assert f"run directory {tmp_path / 'nope'}: not found" in one_error_line(capsys)


def test_scale_writes_desired_counts_that_run_state_reads_back(tmp_path, server, client, capsys):
    run_dir = make_run(tmp_path, server.url, [metrics_row(1)])
    state = RunState(client, run_dir.name)
    state.set_desired_workers(1)
    state.set_desired_workers(1, role="sandbox")
    assert main(["scale", str(run_dir), "--rollout-workers", "3"]) == 0
    assert (state.desired_workers(), state.desired_workers("sandbox")) == (3, 1)
    assert main(["scale", str(run_dir), "--rollout-workers", "2", "--sandbox-workers", "4"]) == 0
    assert (state.desired_workers(), state.desired_workers("sandbox")) == (2, 4)
    assert "rollout workers: 2, sandbox workers: 4" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--rollout-workers", "0"], "--rollout-workers=0: must be an integer >= 1"),
    (["--rollout-workers", "2", "--sandbox-workers", "-1"], "--sandbox-workers=-1: must be an integer >= 1"),
    ([], "nothing to change"),
])
def test_scale_rejects_bad_counts_with_one_line_and_changes_nothing(tmp_path, server, client, capsys, args, message):
    run_dir = make_run(tmp_path, server.url, [])
    state = RunState(client, run_dir.name)
    state.set_desired_workers(1)
    assert main(["scale", str(run_dir), *args]) == 2
    assert message in one_error_line(capsys)
    assert state.desired_workers() == 1 and state.desired_workers("sandbox") is None


def test_scale_with_unreachable_redis_exits_2_with_one_line(tmp_path, gone_url, capsys):
    run_dir = make_run(tmp_path, gone_url, [])
    assert main(["scale", str(run_dir), "--rollout-workers", "2"]) == 2
    line = one_error_line(capsys)
    assert f"run {run_dir.name}: " in line and "cannot connect" in line and "(has the run ended?)" in line


def test_scale_of_a_finished_run_is_refused(tmp_path, server, client, capsys):
    run_dir = make_run(tmp_path, server.url, [], status="finished")
    RunState(client, run_dir.name).set_status("finished")
    assert main(["scale", str(run_dir), "--rollout-workers", "2"]) == 2
    assert "status is finished; only a running run can be scaled" in one_error_line(capsys)
    assert RunState(client, run_dir.name).desired_workers() is None


def test_scale_of_a_directory_without_run_json_exits_2(tmp_path, capsys):
    assert main(["scale", str(tmp_path), "--rollout-workers", "2"]) == 2
    assert "no run.json" in one_error_line(capsys)


def test_status_of_a_directory_that_is_not_a_run_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["status", str(tmp_path)]) == 2
    assert f"run directory {tmp_path}: not a diffurl run" in one_error_line(capsys)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def kill_driver(run_dir: Path) -> int:
    """run.json as a driver SIGKILLed on this host leaves it: still `running`, its pid no process."""
    info = json.loads((run_dir / "run.json").read_text())
    info.update(driver_pid=dead_pid(), driver_host=socket.gethostname())
    (run_dir / "run.json").write_text(json.dumps(info))
    return info["driver_pid"]


def test_status_tells_a_killed_driver_from_a_running_one_whatever_redis_says(tmp_path, server, client, capsys):
    run_dir = make_run(tmp_path, server.url, [metrics_row(1)])
    RunState(client, run_dir.name).set_status("running")  # the embedded Redis outlived its driver
    (run_dir / "run.json").write_text(json.dumps({**json.loads((run_dir / "run.json").read_text()),
                                                  "driver_pid": 1, "driver_host": socket.gethostname()}))
    assert main(["status", str(run_dir)]) == 0
    assert "status     running (redis)" in capsys.readouterr().out  # pid 1 is a process: alive
    pid = kill_driver(run_dir)
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert (f"status     dead: its driver (pid {pid} on {socket.gethostname()}) is gone, killed before it could "
            f"record how the run ended; resume with: diffurl train --resume {run_dir}") in out
    assert "running" not in out


def test_scale_of_a_killed_run_says_so_with_the_resume_command(tmp_path, server, client, capsys):
    run_dir = make_run(tmp_path, server.url, [])
    kill_driver(run_dir)
    assert main(["scale", str(run_dir), "2"]) == 2
    line = one_error_line(capsys)
    assert "is gone" in line and line.endswith(f"(resume with: diffurl train --resume {run_dir})")
    assert RunState(client, run_dir.name).desired_workers() is None


@pytest.mark.parametrize("status", ["finished", "failed", "stopped"])
def test_scale_of_an_ended_run_says_it_ended_not_that_redis_is_down(tmp_path, gone_url, capsys, status):
    run_dir = make_run(tmp_path, gone_url, [], status=status)
    assert main(["scale", str(run_dir), "--rollout-workers", "2"]) == 2
    line = one_error_line(capsys)
    assert f"status is {status}; only a running run can be scaled" in line and "connect" not in line
    assert ("resume with" in line) is (status != "finished")


def test_scale_run_n_sets_the_rollout_workers_and_two_counts_are_refused(tmp_path, server, client, capsys):
    run_dir = make_run(tmp_path, server.url, [])
    assert main(["scale", str(run_dir), "3"]) == 0
    assert RunState(client, run_dir.name).desired_workers() == 3
    assert main(["scale", str(run_dir), "2", "--rollout-workers", "4"]) == 2
    assert "both give the rollout workers" in one_error_line(capsys)
    assert RunState(client, run_dir.name).desired_workers() == 3


def test_plot_writes_a_png_with_six_panels_in_a_grid_and_a_curve_per_metric(tmp_path, gone_url, capsys):
    run_dir = make_run(tmp_path, gone_url, [metrics_row(s) for s in range(1, 6)])
    assert main(["plot", str(run_dir)]) == 0
    assert "6 panels" in capsys.readouterr().out
    png = run_dir / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        width, height = image.size
        assert 1000 <= width <= 2000 and 600 <= height <= 1200, (width, height)  # two rows of three, not one row
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 10, "the image is blank"

    plot = plot_run(run_dir, tmp_path / "out" / "c.png")
    assert plot.path.is_file() and plot.steps == 5
    assert plot.panels == {
        "reward": ["reward_mean"], "pass rate": ["pass_rate"], "KL to reference": ["kl"],
        "AR-ness": ["local_arness", "global_arness"],
        "phase times": sorted(name.removeprefix("time_") for name in PHASES), "walls": []}
    assert plot.worker_changes == []


def test_plot_draws_walls_apart_from_phases_and_marks_each_worker_count_change(tmp_path, gone_url):
    rows = [{**metrics_row(s), "time_rollout_wall": 2.0, "time_train_wall": 2.5, "step_wall_s": 4.6,
             "rollout_workers": float(n), "sandbox_workers": float(m)}
            for s, n, m in [(1, 2, 1), (2, 2, 1), (3, 3, 1), (4, 3, 2), (5, 1, 2)]]
    plot = plot_run(make_run(tmp_path, gone_url, rows))
    assert plot.panels["walls"] == ["rollout_wall", "train_wall", "step_wall_s"]
    assert plot.panels["phase times"] == sorted(name.removeprefix("time_") for name in PHASES)
    assert plot.worker_changes == [(3, "rollout 2 -> 3"), (4, "sandbox 1 -> 2"), (5, "rollout 3 -> 1")]


def test_plot_leaves_a_metric_that_was_never_logged_empty(tmp_path, gone_url):
    rows = [{k: v for k, v in metrics_row(s).items() if k != "kl"} for s in (1, 2)]
    rows[1]["reward_mean"] = None  # a non-finite value is logged as null
    plot = plot_run(make_run(tmp_path, gone_url, rows))
    assert plot.panels["KL to reference"] == [] and plot.panels["reward"] == ["reward_mean"]


def test_plot_of_a_run_without_metrics_exits_2_with_one_line(tmp_path, gone_url, capsys):
    run_dir = make_run(tmp_path, gone_url, [])
    assert main(["plot", str(run_dir)]) == 2
    assert "no metrics in metrics.jsonl yet" in one_error_line(capsys)
    assert not (run_dir / "curves.png").exists()
