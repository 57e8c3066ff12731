"""Learner ranks and weight sync as real Ray actors (through the actor groups), with a real redis-server
feeding the learner and the real sandbox scoring a rollout."""
from __future__ import annotations

import functools
import random
import uuid

import pytest
import ray

from actors.dllm import build_model, decode, save_model
from actors.groups import LearnerGroup, RolloutGroup
from actors.learner import LearnerImpl
from actors.prompts import build_chat_prompt, encode_prompt
from actors.decoder_settings import DecoderSettings
from actors.rollout import GroupJob
from actors.trajectory import CompletionReward, DecodeStats, RolloutStatus, Trajectory
from orchestrator.config import load_config
from orchestrator.redis_server import EmbeddedRedis, free_port
from actors.stream import TrajectoryStream
from tests.tiny_model import PEAKED, tiny_spec

pytestmark = pytest.mark.integration

K = 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, namespace="test-learner-weights")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(50)]
    model, tokenizer = build_model(tiny_spec(texts=texts, vocab_size=300, num_hidden_layers=1, num_attention_heads=2,
                                             num_key_value_heads=1, max_position_embeddings=256,
                                             **PEAKED))  # no near-ties for thread-count float noise to flip
    out = tmp_path_factory.mktemp("model") / "init"
    save_model(model, tokenizer, out)
    return out, tokenizer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def _cfg(B: int, G: int, **extra):
    overrides = [f"rollout.prompts_per_step={B}", f"rollout.group_size={G}", f"rollout.max_new_tokens={K}",
                 f"rollout.steps={K}", "learner.lr=0.01", "learner.lr_schedule=constant", "learner.mu=2",
                 "learner.num_cpus=0.5", "rollout.num_cpus=0.5"]
    return load_config("configs/demo.yaml", overrides + [f"{k}={v}" for k, v in extra.items()])


def _publish_groups(stream, tokenizer, B: int, G: int, seed: int) -> None:
    """B groups of G random completions, ragged in prompt length and completion length."""
    rng = random.Random(seed)
    vocab = range(10, len(tokenizer))
    for i in range(B):
        lengths = [rng.randint(2, K) for _ in range(G)]
        stream.publish(Trajectory(
            run_id="t", group_id=f"g{i:08d}", prompt_id=f"p{i}", worker_id="test", canary_bound=None,
            prompt_ids=[rng.choice(vocab) for _ in range(rng.randint(3, 7))],
            completion_ids=[[rng.choice(vocab) for _ in range(K)] for _ in range(G)],
            completion_mask=[[1] * n + [0] * (K - n) for n in lengths], texts=[""] * G,
            rewards=[CompletionReward(reward=rng.random() * 2.5, status="failed", pass_rate=0.0, format=1.0)
                     for _ in range(G)],
            version_start=0, version_end=0,
            decode=DecodeStats(decoder="reference", alg="origin", temperature=1.0, steps=K, max_new_tokens=K,
                               order=[list(range(K))] * G, local_arness=1.0, global_arness=1.0, forwards=K,
                               tokens_per_forward=1.0, batch_rows=G),
            time_generate=0.0, time_reward=0.0))


def _one_step(cfg, path, tokenizer, redis_url, B, G) -> tuple[dict, dict]:
    """Train one step of the same B groups from the same initial weights; (rank 0 stats, new weights)."""
    run_id = uuid.uuid4().hex[:8]
    open_stream = functools.partial(TrajectoryStream, redis_url, run_id)
    _publish_groups(open_stream(), tokenizer, B, G, seed=7)
    learners = LearnerGroup(cfg, str(path), open_stream)
    try:
        stats = ray.get(learners.async_train_step(0))[0]
        return stats, ray.get(learners.publish_weights())
    finally:
        learners.kill()


def _relative_difference(a: dict, b: dict, init: dict) -> float:
    """|update_a - update_b| / |update_a| over all parameters (2-norms of the flattened updates)."""
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    update = sum(float((a[k].double() - init[k].double()).pow(2).sum()) for k in a)
    return (diff / update) ** 0.5


def test_step_token_loss_gives_the_same_update_for_any_micro_batch_size_and_rank_count(cluster, model_dir, redis_url):
    path, tokenizer = model_dir
    B, G = 2, 4
    runs = {(mbs, ranks): _one_step(_cfg(B, G, **{"learner.micro_batch_size": mbs, "learner.num_ranks": ranks}),
                                    path, tokenizer, redis_url, B, G)
            for mbs, ranks in ((4, 1), (8, 1), (2, 2))}
    init = build_model(str(path))[0].state_dict()
    (base_stats, base_weights), *others = runs.values()
    for stats, weights in others:
        difference = _relative_difference(weights, base_weights, init)
        print(f"step_tokens: relative difference of the updates {difference:.2e}")
        assert difference < 1e-4, "the update depends on how the step is split"
        for key in ("grad_norm", "loss", "kl", "clip_fraction", "ratio_mean"):
            assert stats[key] == pytest.approx(base_stats[key], rel=1e-4, abs=1e-7), key
    released = [_one_step(_cfg(B, G, **{"learner.micro_batch_size": mbs, "learner.loss_norm": "micro_batch_tokens"}),
                          path, tokenizer, redis_url, B, G) for mbs in (4, 8)]
    difference = _relative_difference(released[0][1], released[1][1], init)
    print(f"micro_batch_tokens: relative difference of the updates {difference:.2e}")
    assert difference > 1e-2, "the released rule should depend on the split"


class InspectableLearner(LearnerImpl):
    """A learner rank that can report its own parameters (a test-only subclass, not a production method)."""

    def parameter_sum(self) -> float:
        return float(sum(p.detach().double().sum() for p in self.engine.module.parameters()))


def test_two_zero2_learner_ranks_stay_in_sync_after_a_step(cluster, model_dir, redis_url):
    path, tokenizer = model_dir
    B, G = 2, 2
    cfg = _cfg(B, G, **{"learner.num_ranks": 2, "learner.zero_stage": 2, "learner.micro_batch_size": 1})
    open_stream = functools.partial(TrajectoryStream, redis_url, uuid.uuid4().hex[:8])
    _publish_groups(open_stream(), tokenizer, B, G, seed=1)
    actor, port = ray.remote(InspectableLearner), free_port()
    learners = [actor.options(num_cpus=0.5).remote(cfg, r, 2) for r in range(2)]
    ray.get([l.setup.remote("127.0.0.1", port, str(path), open_stream) for l in learners])
    try:
        before = ray.get(learners[0].parameter_sum.remote())
        stats = ray.get([l.train_step.remote(0, 120.0) for l in learners])
        after = ray.get([l.parameter_sum.remote() for l in learners])
        assert after[0] == after[1], f"ranks diverged: {after}"
        assert after[0] != before, "a step changed nothing"
        assert len(stats[0]["groups"]) == B
    finally:
        for l in learners:
            ray.kill(l)


@ray.remote(num_cpus=0.5)
def _decode_in_a_worker(model_dir: str, weights: dict, problem: dict, cfg, group_size: int) -> list[list[int]]:
    """What a rollout worker with `weights` decodes for `problem`, computed in a Ray worker process like theirs
    (same thread count, so near-ties break the same way)."""
    model, tokenizer = build_model(model_dir)
    model.load_state_dict(weights)
    prompt, r = encode_prompt(tokenizer, problem["messages"], cfg.data.max_prompt_tokens), cfg.rollout
    out = decode(model.eval(), tokenizer, [prompt] * group_size, DecoderSettings.from_values(r), temperature=0.0,
                 seeds=[5] * group_size)  # T=0: the seeds do not matter
    return out.completion_ids.tolist()


def test_weight_sync_gives_every_rollout_worker_the_learners_version_and_outputs(cluster, model_dir, redis_url):
    from sandbox_workers import SandboxPool

    path, tokenizer = model_dir
    B, G = 2, 2
    cfg = _cfg(B, G, **{"learner.micro_batch_size": 2, "rollout.temperature": 0.0, "rollout.num_workers": 2})
    run_id = uuid.uuid4().hex[:8]
    open_stream = functools.partial(TrajectoryStream, redis_url, run_id)
    _publish_groups(open_stream(), tokenizer, B, G, seed=2)
    learners = LearnerGroup(cfg, str(path), open_stream)
    pool = SandboxPool(num_workers=1)
    rollouts = RolloutGroup(cfg, str(path), pool, open_stream, run_id)
    workers = [rollouts.add() for _ in range(2)]
    try:
        ray.get(learners.async_train_step(0))
        rollouts.load_weights(learners.publish_weights(), version=1)
        assert [i["version"] for i in rollouts.wait_ready()] == [1, 1]
        problem = {"task_id": "inc", "question": "Write inc(x).", "entry_point": "inc",
                   "tests": ["assert inc(1) == 2"], "reference": None}
        problem["messages"] = build_chat_prompt(problem)
        calls = [rollouts.rollout(w, [GroupJob(problem, f"g{9 + w:08d}", seed=5)]) for w in workers]
        outcomes = [o for per_call in ray.get(calls) for o in per_call]
        assert [o.status for o in outcomes] == [RolloutStatus.PUBLISHED] * 2
        published = {t.group_id: t for _, t in open_stream().read(10, "check")}
        expected = ray.get(_decode_in_a_worker.remote(str(path), learners.publish_weights(), problem, cfg, G))
        for o in outcomes:
            assert published[o.group_id].completion_ids == expected
            assert published[o.group_id].version_start == 1
    finally:
        learners.kill()
        rollouts.kill()
        pool.shutdown()
