"""Learner ranks and weight sync as real Ray actors, with a real redis-server feeding the learner."""
from __future__ import annotations

import functools
import random

import pytest
import ray

from actors.dllm import build_model, save_model
from orchestrator.config import load_config
from orchestrator.redis_server import EmbeddedRedis, free_port
from orchestrator.stream import TrajectoryStream
from orchestrator.weights import make_weight_sync

pytestmark = pytest.mark.integration

B, G, K = 2, 2, 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, namespace="test-learner-weights")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(50)]
    model, tokenizer = build_model({
        "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256},
        "tokenizer": {"train_texts": texts, "vocab_size": 300}, "seed": 0})
    out = tmp_path_factory.mktemp("model") / "init"
    save_model(model, tokenizer, out)
    return out, tokenizer


@pytest.fixture
def redis_url(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server.url
    server.stop()


def _cfg(**extra):
    overrides = [f"rollout.prompts_per_step={B}", f"rollout.group_size={G}", f"rollout.max_new_tokens={K}",
                 f"rollout.steps={K}", "learner.lr=0.01", "learner.lr_schedule=constant", "learner.mu=2",
                 "learner.num_cpus=0.5", "rollout.num_cpus=0.5"]
    return load_config("configs/demo.yaml", overrides + [f"{k}={v}" for k, v in extra.items()])


def _publish_groups(stream, tokenizer, run_id: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    vocab = range(10, len(tokenizer))
    for i in range(n):
        stream.publish({
            "run_id": run_id, "group_id": f"g{i:08d}", "prompt_id": f"p{i}",
            "prompt_ids": [rng.choice(vocab) for _ in range(rng.randint(3, 7))],  # ragged: left padding
            "completion_ids": [[rng.choice(vocab) for _ in range(K)] for _ in range(G)],
            "completion_mask": [[1] * K for _ in range(G)],
            "rewards": [float(rng.random() * 2.5) for _ in range(G)],
            "version_start": 0, "version_end": 0,
        })


def test_two_zero2_learner_ranks_stay_in_sync_after_a_step(cluster, model_dir, redis_url):
    from actors.learner import Learner

    path, tokenizer = model_dir
    cfg = _cfg(**{"learner.num_ranks": 2, "learner.zero_stage": 2, "learner.micro_batch_size": 1})
    open_stream = functools.partial(TrajectoryStream, redis_url, "ranks")
    _publish_groups(open_stream(), tokenizer, "ranks", B, seed=1)
    port = free_port()
    learners = [Learner.options(name=f"learner-{r}", num_cpus=0.5).remote(cfg, str(path), r, 2, port, open_stream)
                for r in range(2)]
    try:
        before = ray.get(learners[0].checksum.remote())
        stats = ray.get([l.train_step.remote(0, 120.0) for l in learners])
        after = ray.get([l.checksum.remote() for l in learners])
        assert after[0] == after[1], f"ranks diverged: {after}"
        assert after[0] != before, "a step changed nothing"
        assert len(stats[0]["groups"]) == B
    finally:
        for l in learners:
            ray.kill(l)


def test_weight_sync_gives_every_rollout_worker_the_learners_version_and_outputs(cluster, model_dir, redis_url):
    from actors.learner import Learner
    from actors.rollout import RolloutWorker

    path, tokenizer = model_dir
    cfg = _cfg(**{"learner.zero_stage": 2, "learner.micro_batch_size": 2})
    open_stream = functools.partial(TrajectoryStream, redis_url, "sync")
    _publish_groups(open_stream(), tokenizer, "sync", B, seed=2)
    learner = Learner.options(name="learner-0", num_cpus=0.5).remote(cfg, str(path), 0, 1, free_port(), open_stream)
    workers = [RolloutWorker.options(name=f"rollout-{i}", num_cpus=0.5).remote(
        cfg, str(path), None, open_stream, "sync", f"rollout-{i}") for i in range(2)]
    try:
        ray.get(learner.train_step.remote(0, 120.0))
        sync = make_weight_sync("object_store")
        sync.load(workers, sync.publish([learner], version=1), version=1)
        infos = ray.get([w.info.remote() for w in workers])
        assert [i["version"] for i in infos] == [1, 1]
        prompts = ["def f3(x):\n", "def f7(x):\n    return"]
        expected = ray.get(learner.greedy.remote(prompts, K, K))
        assert ray.get([w.greedy.remote(prompts, K, K) for w in workers]) == [expected, expected]
        learner_sum = ray.get(learner.checksum.remote())
        assert ray.get([w.checksum.remote() for w in workers]) == [learner_sum, learner_sum]
    finally:
        for a in [learner, *workers]:
            ray.kill(a)
