"""Several raylets on this machine (a head and worker raylets started with `ray start`, told apart by custom
resources): learner ranks on different raylets, rollout workers on a third, broadcast weight sync across them;
the weights equal a single-node run's; losing a rollout raylet or a learner raylet mid-run.

The tests share one cluster and run in file order: the last one loses a learner raylet for good."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ray_head import start_ray_head, start_ray_worker
from tests.system.test_operations import _final_weights, _metric_steps, _trained_group_ids, _wait_for
from tests.system.test_train_integration import DIFFURL, REPO, SMALL, _check_run, _env, _run_dir

pytestmark = pytest.mark.integration

RUN = [*SMALL, "learner.num_ranks=2", "learner.micro_batch_size=1", "learner.num_cpus=1", "rollout.num_cpus=1",
       "learner.placement=SPREAD", "learner.resources={learner_node: 1}", "rollout.resources={rollout_node: 1}",
       "weights.sync=broadcast", "weights.bucket_mb=0.05", "rollout.decoder=reference"]
# a lost raylet is declared dead after ~3 missed 1 s health checks instead of Ray's default ~15 s
FAST_HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def cluster():
    head = start_ray_head(num_cpus=1, env=FAST_HEALTH_CHECK)
    nodes = {}
    try:
        # the head has no custom resources: the two learner ranks need the two learner nodes
        nodes["b"] = start_ray_worker(head, num_cpus=2, resources={"node_b": 1, "learner_node": 1})
        nodes["c"] = start_ray_worker(head, num_cpus=2, resources={"node_c": 1, "learner_node": 1})
        # room for a second rollout worker: the replacement of one lost with its node
        nodes["d"] = start_ray_worker(head, num_cpus=3, resources={"node_d": 1, "rollout_node": 2})
        yield head, nodes
    finally:
        for node in nodes.values():
            node.stop()
        head.stop()


def _placement(stdout: str) -> tuple[list[str], list[str]]:
    """The node-id prefixes of the learner ranks (in rank order) and of the rollout workers."""
    (line,) = [l for l in stdout.splitlines() if l.startswith("placement: ")]
    learners, rollouts = (re.findall(r"'([0-9a-f]{8})'", part) for part in line.split("rollout workers"))
    return learners, rollouts


def _node_ids(address: str) -> dict[str, str]:
    """node_<name> resource -> the node-id prefix of the live node that has it."""
    probe = (f"import ray; ray.init(address='{address}'); print({{r: n['NodeID'][:8] for n in ray.nodes() "
             "if n['Alive'] for r in n['Resources'] if r.startswith('node_')})")
    out = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


def _run_to_step_1(cmd: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """Start a run in `tmp_path` (its output in train.log) and return once it has logged step 1."""
    log = tmp_path / "train.log"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _metric_steps(_run_dir(tmp_path)) if list(tmp_path.glob("*/metrics.jsonl")) else [],
                  timeout=400, what="step 1", proc=proc)
    except BaseException:
        proc.kill()
        raise
    return proc, log


def test_two_rank_learner_on_two_raylets_and_rollouts_on_a_third_train_3_steps_to_single_node_weights(
        cluster, tmp_path):
    head, _ = cluster
    cmd = DIFFURL + ["train", "configs/demo.yaml", *RUN, f"run.root_dir={tmp_path / 'multi'}", "run.name=multinode",
                     f"ray.address={head.address}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    learners, rollouts = _placement(proc.stdout)
    assert len(learners) == 2 and len(set(learners)) == 2, proc.stdout  # one rank per raylet
    assert len(rollouts) == 1 and rollouts[0] not in learners, proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("placement: "))
    assert re.search(r"master [0-9.]+:\d+\)", line) and "weight sync broadcast" in line  # rank 0's node IP
    multi = _run_dir(tmp_path / "multi")
    _check_run(multi, steps=3, groups_per_step=2)
    assert json.loads((multi / "run.json").read_text())["status"] == "finished"

    # the same run on one local node (no custom resources, no placement spread): the same weights, bit for bit
    one_node = [a for a in RUN if "resources=" not in a and "placement=" not in a and "num_cpus=" not in a]
    local = DIFFURL + ["train", "configs/demo.yaml", *one_node, f"run.root_dir={tmp_path / 'single'}",
                       "run.name=single", "learner.num_cpus=0.5", "rollout.num_cpus=0.5"]
    proc = subprocess.run(local, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    single = _run_dir(tmp_path / "single")
    assert _trained_group_ids(single) == _trained_group_ids(multi)
    a, b = _final_weights(multi), _final_weights(single)
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert a.keys() == b.keys() and not different, f"multi-node weights differ from single-node in {different[:5]}"


def test_losing_a_rollout_raylet_mid_run_trains_every_group_exactly_once(cluster, tmp_path):
    head, nodes = cluster
    nodes["e"] = start_ray_worker(head, num_cpus=2, resources={"node_e": 1, "rollout_node": 1})
    ids = _node_ids(head.address)
    cmd = DIFFURL + ["train", "configs/demo.yaml", *RUN, "run.steps=6", "rollout.num_workers=2",
                     "rollout.max_restarts=2", f"run.root_dir={tmp_path}", "run.name=lose-rollout",
                     f"ray.address={head.address}"]
    proc, log = _run_to_step_1(cmd, tmp_path)
    try:
        _, rollouts = _placement(log.read_text())
        assert ids["node_e"] in rollouts, f"no rollout worker on the raylet to lose: {rollouts}"
        assert proc.poll() is None, "the run ended before the raylet was lost: the test proved nothing"
        nodes.pop("e").kill()  # its rollout worker is busy with a group of the next step
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        proc.kill()
    out = log.read_text()
    assert re.search(r"rollout-\d (died during|is gone|was restarted by Ray)", out), out[-3000:]  # seen, not dodged
    _check_run(_run_dir(tmp_path), steps=6, groups_per_step=2)  # every group once, nothing pending


def test_losing_a_learner_raylet_exits_1_with_the_resume_command_and_resume_completes(cluster, tmp_path):
    head, nodes = cluster
    cmd = DIFFURL + ["train", "configs/demo.yaml", *RUN, "run.steps=6", "run.checkpoint_every=1",
                     f"run.root_dir={tmp_path}", "run.name=lose-learner", f"ray.address={head.address}"]
    ids = _node_ids(head.address)
    proc, log = _run_to_step_1(cmd, tmp_path)
    try:
        learners, _ = _placement(log.read_text())
        (rank1,) = [name for name in ("b", "c") if ids[f"node_{name}"] == learners[1]]
        assert proc.poll() is None, "the run ended before the raylet was lost: the test proved nothing"
        nodes.pop(rank1).kill()
        rc = proc.wait(timeout=300)
    finally:
        proc.kill()
    out = log.read_text()
    run_dir = _run_dir(tmp_path)
    assert rc == 1, out[-4000:]
    (line,) = [l for l in out.splitlines() if l.startswith("diffurl: run failed: ")]
    assert "a learner " in line and line.endswith(f"resume with: diffurl train --resume {run_dir}"), line
    assert "Traceback" not in out, out[-4000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "\x1b" not in info["error"], info
    done = _metric_steps(run_dir)
    assert done and done[-1] < 6, done

    nodes["f"] = start_ray_worker(head, num_cpus=2, resources={"node_f": 1, "learner_node": 1})  # a healthy cluster
    proc = subprocess.run(DIFFURL + ["train", "--resume", str(run_dir)], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert _metric_steps(run_dir) == list(range(1, 7)), "each step exactly once in metrics.jsonl"
    _check_run(run_dir, steps=6, groups_per_step=2)
