"""`diffurl submit`: local validation first, token auth, and real jobs on a `ray start --head` with a dashboard."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import ray

from orchestrator import cli
from orchestrator.metrics import read_metrics
from orchestrator.ops import submit
from orchestrator.redis_server import free_port
from tests.ray_head import start_ray_head
from tests.system.test_train_integration import SMALL

TOKEN = "diffurl-test-token-7f3a"
VENV_BIN = str(Path(sys.executable).parent)


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffurl: error: "), lines
    return lines[0]


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """A machine with no Ray token anywhere: empty HOME, no RAY_AUTH_TOKEN(_PATH)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)


def test_auth_token_follows_rays_precedence_env_then_named_file_then_home(no_token, monkeypatch, tmp_path):
    assert submit.auth_token() == (None, None)
    home_token = tmp_path / "home" / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text("from-home\n")
    assert submit.auth_token() == ("from-home", str(home_token))
    named = tmp_path / "cluster_token"
    named.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert submit.auth_token() == ("from-path", str(named))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.auth_token() == ("from-env", "RAY_AUTH_TOKEN")


def test_token_path_naming_a_missing_file_exits_2_with_one_line(no_token, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    rc = cli.main(["submit", "configs/demo.yaml", "--address", f"http://127.0.0.1:{free_port()}"])
    assert rc == 2
    assert "RAY_AUTH_TOKEN_PATH=" in one_error_line(capsys)


def test_the_job_gets_the_project_without_local_state_and_a_project_relative_config():
    env = submit.runtime_env()
    assert Path(env["working_dir"]) == submit.REPO_ROOT and (submit.REPO_ROOT / "orchestrator" / "cli.py").is_file()
    assert {".venv", "runs", ".cache", ".git"} <= set(env["excludes"])
    assert "env_vars" not in env, "the job must inherit the cluster's auth mode and token, not this machine's"
    config = submit.job_config_path(str(submit.REPO_ROOT / "configs" / "demo.yaml"))
    assert config == "configs/demo.yaml"


def run_entrypoint(command: str, python: Path) -> subprocess.CompletedProcess:
    """`command` as Ray's job supervisor runs it (a shell), with `python` first on PATH."""
    return subprocess.run(["sh", "-c", command], env={"PATH": f"{python.parent}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


def test_the_entrypoint_runs_the_train_command_with_its_arguments_intact_through_the_shell(tmp_path):
    python = tmp_path / "python"  # imports "ray" (exits 0 for -c), else prints the arguments it got
    python.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 0\n'
                      '/usr/bin/python3 -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@"\n')
    python.chmod(0o755)
    odd = ["run.name=a b", "x='q'", 'y="$HOME"', "z=;exit 3", "w=`id`"]
    new = run_entrypoint(submit.entrypoint("configs/demo.yaml", odd), python)
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout) == ["-m", "orchestrator.cli", "train", "configs/demo.yaml", *odd]
    resumed = run_entrypoint(submit.entrypoint(None, ["run.steps=9"], resume="/shared/runs/r 1"), python)
    assert json.loads(resumed.stdout) == ["-m", "orchestrator.cli", "train", "--resume", "/shared/runs/r 1",
                                          "run.steps=9"]


def test_a_node_whose_python_lacks_ray_fails_the_job_with_one_line_and_exit_2(tmp_path):
    if subprocess.run(["/usr/bin/python3", "-c", "import ray"], capture_output=True).returncode == 0:
        pytest.skip("/usr/bin/python3 imports ray here: no interpreter without ray to stand for the system one")
    python = tmp_path / "python"
    python.symlink_to("/usr/bin/python3")
    proc = run_entrypoint(submit.entrypoint("configs/demo.yaml", ["run.steps=1"]), python)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"diffurl: the job's python ({python}) cannot import ray: start Ray from an activated venv "
        "(source .venv/bin/activate && ray start ...) or put the venv's bin on PATH"]


@pytest.mark.parametrize("address, expected", [
    ("http://head:8265/", "http://head:8265"), ("head:8265", "http://head:8265"), ("https://h:1", "https://h:1")])
def test_dashboard_address_is_normalised_to_an_http_url(address, expected):
    assert submit.dashboard_url(address) == expected


def test_a_ray_client_address_is_rejected_with_a_hint(capsys):
    rc = cli.main(["submit", "configs/demo.yaml", "--address", "ray://head:10001"])
    assert rc == 2
    assert "http://HEAD:8265" in one_error_line(capsys)


def test_bad_config_exits_2_before_contacting_the_cluster(capsys):
    rc = cli.main(["submit", "configs/demo.yaml", "learner.bogus=1", "--address", f"http://127.0.0.1:{free_port()}"])
    assert rc == 2
    assert "learner.bogus=1: unknown key" in one_error_line(capsys)


def test_resume_of_a_run_without_a_checkpoint_exits_2_before_contacting_the_cluster(tmp_path, capsys):
    run_dir = tmp_path / "demo-1"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text((submit.REPO_ROOT / "configs" / "demo.yaml").read_text())
    rc = cli.main(["submit", "--resume", str(run_dir), "--address", f"http://127.0.0.1:{free_port()}"])
    assert rc == 2
    assert "the run has no checkpoint yet" in one_error_line(capsys)
    assert cli.main(["submit", "--resume", str(tmp_path), "--address", "http://h:1"]) == 2
    assert "not a run directory here" in one_error_line(capsys)


def test_submit_without_config_or_resume_exits_2(capsys):
    assert cli.main(["submit", "--address", "http://h:1"]) == 2
    assert "give a CONFIG" in one_error_line(capsys)


def test_unreachable_address_exits_2_with_one_line(no_token, capsys):
    address = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["submit", "configs/demo.yaml", "--address", address]) == 2
    assert f"--address={address}: cannot reach the Ray Jobs API" in one_error_line(capsys)


def job_info(head, out: str):
    """The job whose id `diffurl submit` printed in `out`, as the cluster holds it."""
    (job_id,) = re.findall(r"^submitted job (\S+) to ", out, re.M)
    return submit.job_client(head.dashboard_url).get_job_info(job_id)


@pytest.fixture(scope="module")
def token_head():
    """A real head with a dashboard in token-auth mode; `python` on its PATH is this environment's."""
    head = start_ray_head(num_cpus=3, dashboard=True, env={
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    try:
        yield head
    finally:
        head.stop()


@pytest.mark.integration
def test_submit_without_the_clusters_token_is_refused_with_one_line(token_head, no_token, capsys):
    rc = cli.main(["submit", "configs/demo.yaml", "--address", token_head.dashboard_url])
    assert rc == 2
    assert "requires a Ray auth token and none was found" in one_error_line(capsys)


@pytest.mark.integration
@pytest.mark.slow
def test_submitted_two_step_job_succeeds_status_and_plot_report_it_and_a_resubmitted_resume_adds_a_step(
        token_head, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the token is sent by diffurl itself, not by Ray's client
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # must not override --address
    overrides = [o for o in SMALL if not o.startswith("run.steps")] + [
        "run.steps=2", f"run.root_dir={tmp_path / 'runs'}", "run.name=submitted",
        "rollout.num_cpus=0.5", "learner.num_cpus=0.5"]
    rc = cli.main(["submit", "configs/demo.yaml", *overrides, "--address", token_head.dashboard_url, "--wait"])
    out, err = capsys.readouterr()
    assert rc == 0, out
    assert "SUCCEEDED" in out and re.search(r"ray job logs --follow submitted-\d{8}-\d{6}-\d+ ", out), out
    assert f"--address {token_head.dashboard_url}" in out
    assert err == "", err  # none of Ray's packaging INFO / WARNING lines
    (run_dir,) = (tmp_path / "runs").iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    job = job_info(token_head, out)  # the dashboard's Jobs table: named after the run and the command
    assert job.metadata["job_name"] == "submitted: train configs/demo.yaml"
    assert job.entrypoint.startswith(": diffurl train configs/demo.yaml ")
    # a job on a cluster: its Redis listens on every interface, and run.json names it by the driver node's IP
    # as Ray knows it (`ray start` resolves the head's --node-ip-address=127.0.0.1 to this machine's IP)
    assert "bind 0.0.0.0" in (run_dir / "redis" / "redis.conf").read_text().splitlines()
    assert urlsplit(info["redis_url"]).hostname == ray.util.get_node_ip_address()

    assert cli.main(["status", str(run_dir)]) == 0
    status = capsys.readouterr().out
    assert "step       2/2" in status and "finished" in status and str(run_dir) in status
    assert "(has the run ended?); showing the run directory only" in status  # its redis stopped with the driver

    assert cli.main(["plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "6 panels" in capsys.readouterr().out

    rc = cli.main(["submit", "--resume", str(run_dir), "run.steps=3", "--address", token_head.dashboard_url,
                      "--wait"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert job_info(token_head, out).metadata["job_name"] == f"{run_dir.name}: resume {run_dir}"
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2, 3]
    assert cli.main(["status", str(run_dir)]) == 0
    assert "step       3/3" in capsys.readouterr().out


@pytest.mark.integration
def test_submit_wait_exits_1_when_the_job_fails_on_the_cluster(token_head, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    bad_data = tmp_path / "bad.jsonl"
    # a known format's columns (passes the local check), but no usable problem: no tests
    bad_data.write_text('{"task_id": "x", "question": "q", "entry_point": "f", "tests": []}\n')
    rc = cli.main(["submit", "configs/demo.yaml", f"data.train={bad_data}", f"run.root_dir={tmp_path / 'runs'}",
                      "--address", token_head.dashboard_url, "--wait"])
    captured = capsys.readouterr()
    assert rc == 1, captured.out + captured.err
    assert "FAILED" in captured.out
    assert job_info(token_head, captured.out).metadata["job_name"] == "demo: train configs/demo.yaml"  # its run.name
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("diffurl: job demo-") and "ended FAILED" in last
    assert "no usable problems" in captured.err  # the job's own error, from its log tail


@pytest.fixture
def cached_file():
    """A data file under the project's .cache (which submit leaves out of the upload), removed afterwards."""
    folder = submit.REPO_ROOT / ".cache" / f"submit-test-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    path.write_text((submit.REPO_ROOT / "configs" / "data" / "toy_train.jsonl").read_text())
    yield path
    shutil.rmtree(folder)


def test_paths_the_job_would_not_find_exit_2_before_contacting_the_cluster(cached_file, tmp_path, monkeypatch,
                                                                         capsys):
    """They used to pass here and fail on the cluster after the job started (issue 24, item 4)."""
    address = ["--address", f"http://127.0.0.1:{free_port()}"]
    config = str(submit.REPO_ROOT / "configs" / "demo.yaml")
    monkeypatch.chdir(submit.REPO_ROOT)
    assert cli.main(["submit", config, f"data.train={cached_file.relative_to(submit.REPO_ROOT)}", *address]) == 2
    assert "under .cache/, which submit does not upload" in one_error_line(capsys)
    outside = tmp_path / "train.jsonl"
    outside.write_text(cached_file.read_text())
    assert cli.main(["submit", config, f"data.train={os.path.relpath(outside)}", *address]) == 2
    assert "leads out of the project" in one_error_line(capsys)
    monkeypatch.chdir(tmp_path)  # a path relative to another directory than the project root
    toy = os.path.relpath(submit.REPO_ROOT / "configs" / "data" / "toy_train.jsonl")
    assert cli.main(["submit", config, f"data.train={toy}", *address]) == 2
    assert "give it as configs/data/toy_train.jsonl (from the project root)" in one_error_line(capsys)


def test_a_data_file_in_no_known_format_exits_2_before_contacting_the_cluster(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt_text": "x", "answer": "y"}\n')
    rc = cli.main(["submit", "configs/demo.yaml", f"data.train={data}", "--address", f"http://127.0.0.1:{free_port()}"])
    assert rc == 2
    assert "prompt_text" in one_error_line(capsys)
