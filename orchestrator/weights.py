"""Weight sync strategies: how a new policy version travels from the learner to every rollout worker.

A strategy publishes a version once (`publish(learners, version) -> handle`) and loads that handle into
any number of rollout workers (`load(workers, handle, version)`), now or later (a worker added by live
scaling or restarted by Ray loads the same handle). On CPU the handle is one object-store object that
every worker reads; a GPU strategy (bucketed NCCL broadcast from learner rank 0) fits the same two
methods. Never one call per parameter.
"""
from __future__ import annotations

from typing import Any, Protocol

import ray


class WeightSync(Protocol):
    def publish(self, learners: list, version: int) -> Any: ...

    def load(self, rollout_workers: list, handle: Any, version: int) -> None: ...


class ObjectStoreSync:
    """Learner rank 0 returns its state dict as one object; every rollout worker loads that object."""

    def publish(self, learners: list, version: int) -> ray.ObjectRef:
        refs = [learner.export_weights.remote() for learner in learners]  # every rank joins under ZeRO-3
        ray.get(refs[1:])
        return refs[0]  # rank 0's return value: one object in the object store

    def load(self, rollout_workers: list, handle: ray.ObjectRef, version: int) -> None:
        loaded = ray.get([w.load_weights.remote(handle, version) for w in rollout_workers])
        if any(v != version for v in loaded):
            raise RuntimeError(f"weight sync: workers report versions {loaded}, expected {version}")


def make_weight_sync(name: str = "object_store") -> WeightSync:
    strategies = {"object_store": ObjectStoreSync}
    if name not in strategies:
        raise ValueError(f"weight sync strategy {name!r}: choose one of {sorted(strategies)}")
    return strategies[name]()
