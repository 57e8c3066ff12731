"""Weight sync strategies: how a new policy version travels from the learner to every rollout worker.

A strategy has one method, `push(learners, rollout_workers, version) -> seconds`. On CPU the state dict
goes into the object store once and every worker reads that same object; a GPU strategy (bucketed
NCCL broadcast from learner rank 0) fits the same interface. Never one call per parameter.
"""
from __future__ import annotations

import time
from typing import Protocol

import ray


class WeightSync(Protocol):
    def push(self, learners: list, rollout_workers: list, version: int) -> float: ...


class ObjectStoreSync:
    """Learner rank 0 returns its state dict as one object; every rollout worker loads that object."""

    def push(self, learners: list, rollout_workers: list, version: int) -> float:
        t0 = time.perf_counter()
        refs = [learner.export_weights.remote() for learner in learners]  # every rank joins under ZeRO-3
        weights = refs[0]  # rank 0's return value: one object in the object store
        loaded = ray.get([w.load_weights.remote(weights, version) for w in rollout_workers])
        ray.get(refs[1:])
        if any(v != version for v in loaded):
            raise RuntimeError(f"weight sync: workers report versions {loaded}, expected {version}")
        return time.perf_counter() - t0


def make_weight_sync(name: str = "object_store") -> WeightSync:
    strategies = {"object_store": ObjectStoreSync}
    if name not in strategies:
        raise ValueError(f"weight sync strategy {name!r}: choose one of {sorted(strategies)}")
    return strategies[name]()
