"""Broadcast weight sync over gloo between real learner and rollout actors, and its bucket plan."""
from __future__ import annotations

import functools
import uuid

import pytest
import ray
import torch

from actors.groups import LearnerGroup, RolloutGroup
from actors.weight_sync import BroadcastSync, ObjectStoreSync, layout_of, plan_buckets, state_digest
from actors.stream import TrajectoryStream
from tests.system.test_learner_weights import _cfg, _publish_groups, model_dir, redis_url  # noqa: F401 (fixtures)


# ----------------------------------------------------------------- the bucket plan (no Ray)
def _layout(*sizes, dtype=torch.float32):
    return layout_of({f"t{i}": torch.zeros(n, dtype=dtype) for i, n in enumerate(sizes)})


def test_buckets_cover_every_tensor_once_in_order_and_respect_the_size():
    layout = _layout(10, 20, 30, 5, 100, 1)
    buckets = plan_buckets(layout, bucket_bytes=40 * 4)
    assert [i for b in buckets for i in b] == list(range(6))
    assert buckets == [[0, 1], [2, 3], [4], [5]]  # 100 floats exceed the bucket: a bucket of its own


def test_buckets_hold_one_dtype_each():
    layout = layout_of({"a": torch.zeros(4), "b": torch.zeros(4, dtype=torch.bfloat16), "c": torch.zeros(4),
                        "d": torch.zeros(4, dtype=torch.bfloat16)})
    buckets = plan_buckets(layout, bucket_bytes=1 << 20)
    assert buckets == [[0, 2], [1, 3]]
    assert all(len({layout[i][1] for i in b}) == 1 for b in buckets)


def test_digest_sees_a_single_bit():
    a = {"w": torch.ones(3)}
    b = {"w": torch.ones(3)}
    b["w"][1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert state_digest(a) == state_digest({"w": torch.ones(3)}) != state_digest(b)


# ----------------------------------------------------------------- real actors
@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, namespace="test-weight-sync")
    yield
    ray.shutdown()


def _learner_digest(learners: LearnerGroup) -> str:
    return state_digest(ray.get(learners.publish_weights()))


def _worker_digests(rollouts: RolloutGroup) -> dict[int, str]:
    numbers = rollouts.numbers()
    return dict(zip(numbers, ray.get(rollouts.call(numbers, "weights_digest"))))


@pytest.mark.integration
def test_broadcast_gives_every_worker_the_learners_exact_weights_and_version_including_a_late_one(
        cluster, model_dir, redis_url):
    path, tokenizer = model_dir
    B, G = 2, 2
    cfg = _cfg(B, G, **{"learner.num_ranks": 2, "learner.micro_batch_size": 1,
                        "rollout.num_workers": 2, "weights.sync": "broadcast", "weights.bucket_mb": 0.01,
                        "rollout.num_cpus": 0.25, "learner.num_cpus": 0.5})
    run_id = uuid.uuid4().hex[:8]
    open_stream = functools.partial(TrajectoryStream, redis_url, run_id)
    stream = open_stream()
    learners = LearnerGroup(cfg, str(path), open_stream)
    rollouts = RolloutGroup(cfg, str(path), None, open_stream, run_id)
    sync = BroadcastSync(cfg, learners, rollouts)
    try:
        assert [rollouts.add() for _ in range(2)] == [0, 1]
        learners.wait_ready()
        initial = _learner_digest(learners)
        _publish_groups(stream, tokenizer, 3 * B, G, seed=10)  # B new groups for each of the 3 steps
        for step in range(3):
            ray.get(learners.async_train_step(step))
            if step == 1:  # live scaling mid-run: the new worker waits for the next push
                late = rollouts.add()
                assert late in rollouts.waiting and rollouts.joined() == []
            stats = sync.push(step + 1)
            expected = _learner_digest(learners)
            assert expected != initial
            assert set(_worker_digests(rollouts).values()) == {expected}, f"step {step + 1}"
            assert {i["version"] for i in rollouts.wait_ready()} == {step + 1}
            assert stats["sync_workers"] == len(rollouts)
            if step == 1:
                assert rollouts.joined() == [late]
        assert sync.builds == 2  # built for workers {0, 1}, rebuilt once worker 2 had its first version
        assert len(sync.layout) > 0 and len(plan_buckets(sync.layout, int(0.01 * 2**20))) > 1
    finally:
        learners.kill()
        rollouts.kill()


@pytest.mark.integration
def test_a_wrong_version_stamp_is_refused_and_the_object_store_sync_matches_the_broadcast(
        cluster, model_dir, redis_url):
    path, tokenizer = model_dir
    B, G = 2, 2
    cfg = _cfg(B, G, **{"learner.micro_batch_size": 2, "weights.sync": "broadcast", "rollout.num_cpus": 0.25,
                        "learner.num_cpus": 0.5})
    run_id = uuid.uuid4().hex[:8]
    open_stream = functools.partial(TrajectoryStream, redis_url, run_id)
    _publish_groups(open_stream(), tokenizer, B, G, seed=3)
    learners = LearnerGroup(cfg, str(path), open_stream)
    rollouts = RolloutGroup(cfg, str(path), None, open_stream, run_id)
    try:
        rollouts.add()
        ray.get(learners.async_train_step(0))
        sync = BroadcastSync(cfg, learners, rollouts)
        sync._build([0])
        with pytest.raises(ray.exceptions.RayTaskError, match="received version 1, expected 7"):
            ray.get(learners.broadcast_weights(1) + rollouts.call([0], "receive_weights", 7))
        broadcast = _worker_digests(rollouts)[0]  # the buckets were drained and copied before the check
        ObjectStoreSync(cfg, learners, rollouts).push(1)
        assert _worker_digests(rollouts)[0] == broadcast == _learner_digest(learners)
    finally:
        learners.kill()
        rollouts.kill()
