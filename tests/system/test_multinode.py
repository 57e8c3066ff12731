"""Several raylets on this machine (a head and two workers started with `ray start`, told apart by custom
resources): learner ranks on different raylets, rollout workers on a third, broadcast weight sync across them."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.ray_head import start_ray_head, start_ray_worker
from tests.system.test_train_integration import DIFFURL, REPO, SMALL, _check_run, _env, _run_dir

pytestmark = pytest.mark.integration

RUN = [*SMALL, "learner.num_ranks=2", "learner.micro_batch_size=1", "learner.num_cpus=1", "rollout.num_cpus=1",
       "learner.placement=SPREAD", "learner.resources={learner_node: 1}", "rollout.resources={rollout_node: 1}",
       "weights.sync=broadcast", "weights.bucket_mb=0.05", "rollout.decoder=reference"]


@pytest.fixture(scope="module")
def three_raylets():
    head = start_ray_head(num_cpus=1)
    workers = []
    try:
        # the head has no custom resources: the two learner ranks need the two learner nodes
        workers.append(start_ray_worker(head, num_cpus=2, resources={"learner_node": 1, "node_b": 1}))
        workers.append(start_ray_worker(head, num_cpus=2, resources={"learner_node": 1, "node_c": 1}))
        workers.append(start_ray_worker(head, num_cpus=2, resources={"rollout_node": 1, "node_d": 1}))
        yield head
    finally:
        for w in workers:
            w.stop()
        head.stop()


def test_two_rank_learner_on_two_raylets_and_rollouts_on_a_third_train_3_steps(three_raylets, tmp_path):
    cmd = DIFFURL + ["train", "configs/demo.yaml", *RUN, f"run.root_dir={tmp_path}", "run.name=multinode",
                     f"ray.address={three_raylets.address}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith("placement: ")]
    learners, rollouts = (re.findall(r"'([0-9a-f]{8})'", part) for part in line.split("rollout workers"))
    assert len(learners) == 2 and len(set(learners)) == 2, line  # one rank per raylet
    assert len(rollouts) == 1 and rollouts[0] not in learners, line
    assert re.search(r"master [0-9.]+:\d+\)", line) and "weight sync broadcast" in line  # rank 0's node IP
    _check_run(_run_dir(tmp_path), steps=3, groups_per_step=2)
    info = json.loads((_run_dir(tmp_path) / "run.json").read_text())
    assert info["status"] == "finished"
