"""Actor groups: one object per role that owns its Ray actors, fans calls out and shards the work.

- `LearnerGroup`: the DeepSpeed ranks `learner-0..N-1`, created together and called together; a step is
  one `async_train_step` (every rank joins), weights leave as one object from rank 0.
- `RolloutGroup`: the rollout workers `rollout-<n>` (numbered for life: a worker added by live scaling
  gets a new number), each running one prompt group at a time; the group adds, retires, restarts and
  updates workers, and hands each new worker the newest weights.

Weight sync (small models): learner rank 0 returns its state dict as one object-store object; every
rollout worker loads that same object, version-stamped. Never one call per parameter.
Callers never index actors or write `[a.f.remote() for a in actors]`: they call these methods.
"""
from __future__ import annotations

import ray
from ray.exceptions import GetTimeoutError, RayActorError


class LearnerGroup:
    def __init__(self, cfg, model_dir: str, master_port: int, open_stream, resume_from: tuple | None = None):
        """`resume_from`: (checkpoint root, tag, reference model file), or None for a new run."""
        from actors.learner import Learner

        world = cfg.learner.num_ranks
        self.actors = [
            Learner.options(name=f"learner-{rank}", num_cpus=cfg.learner.num_cpus, max_restarts=0).remote(
                cfg, model_dir, rank, world, master_port, open_stream, resume_from)
            for rank in range(world)]

    def wait_ready(self) -> list[dict]:
        return ray.get(self._all("info"))

    def async_train_step(self, step: int) -> list[ray.ObjectRef]:
        """Every rank trains step `step`; rank 0's ref comes first (its result is the step's statistics)."""
        return self._all("train_step", step)

    def publish_weights(self) -> ray.ObjectRef:
        """The current weights as one object-store object (rank 0's state dict; every rank joins under ZeRO-3)."""
        refs = self._all("export_weights")
        ray.get(refs[1:])
        return refs[0]

    def save_checkpoint(self, ckpt_root: str, tag: str, policy_dir: str, reference_file: str,
                        client_state: dict) -> list[str]:
        """Every rank saves; returns the stream entries the checkpoint covers (rank 0's list)."""
        return ray.get(self._all("save_checkpoint", ckpt_root, tag, policy_dir, reference_file, client_state))[0]

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def _all(self, method: str, *args) -> list[ray.ObjectRef]:
        return [getattr(actor, method).remote(*args) for actor in self.actors]


class RolloutGroup:
    def __init__(self, cfg, model_dir: str, pool, open_stream, run_id: str, version: int = 0):
        """Workers load `model_dir` (policy `version`) when they start; later weights come from `load_weights`."""
        self.cfg, self.model_dir, self.pool, self.open_stream, self.run_id = cfg, model_dir, pool, open_stream, run_id
        self.workers: dict[int, ray.actor.ActorHandle] = {}  # worker number -> actor
        self.retiring: set[int] = set()  # retired once idle: a running group finishes first
        self.base_version = version  # the policy version in model_dir: what a (re)started worker holds
        self.weights, self.version = None, version  # newest weights handle (None: model_dir is current)
        self._next_number = 0

    def __len__(self) -> int:
        return len(self.workers)

    def numbers(self) -> list[int]:
        return list(self.workers)

    def add(self) -> int:
        """Start one worker with the newest weights; returns its number."""
        from actors.rollout import RolloutWorker

        n, self._next_number = self._next_number, self._next_number + 1
        self.workers[n] = RolloutWorker.options(
            name=f"rollout-{n}", num_cpus=self.cfg.rollout.num_cpus, max_restarts=self.cfg.rollout.max_restarts,
            max_task_retries=0).remote(self.cfg, self.model_dir, self.pool, self.open_stream, self.run_id,
                                       f"rollout-{n}", self.base_version)
        if self.weights is not None:
            self._load([n])
        return n

    def wait_ready(self) -> list[dict]:
        return ray.get([actor.info.remote() for actor in self.workers.values()])

    def rollout(self, worker: int, jobs: list) -> ray.ObjectRef:
        """Start prompt groups (`actors.rollout.GroupJob`s) on `worker`, decoded in one batch; the ref
        resolves to one RolloutOutcome per job."""
        return self.workers[worker].rollout_groups.remote(jobs, self.version)

    def load_weights(self, weights: ray.ObjectRef, version: int) -> None:
        """Every worker swaps to `weights` (version `version`) before its next group."""
        self.weights, self.version = weights, version
        self._load(self.numbers())

    def update(self, worker: int) -> None:
        """Bring one worker (restarted by Ray from its constructor arguments) to the newest weights."""
        if self.weights is not None:
            self._load([worker])

    def recover(self, worker: int, timeout_s: float = 120.0) -> bool:
        """After `worker` died mid-group: True once Ray has restarted it with the newest weights; False
        (and it is removed) when it does not come back."""
        try:
            info = ray.get(self.workers[worker].info.remote(), timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            self.retiring.discard(worker)
            ray.kill(self.workers.pop(worker), no_restart=True)
            return False
        if info["version"] != self.version:
            self.update(worker)
        return True

    def scale(self, want: int, idle: list[int]) -> list[int]:
        """Move toward `want` workers: start new ones at once, retire the highest-numbered ones once idle.
        Returns the idle workers after the change."""
        active = [n for n in self.workers if n not in self.retiring]
        idle = idle + [self.add() for _ in range(want - len(active))]
        self.retiring.update(sorted(active, reverse=True)[:max(0, len(active) - want)])
        for n in [n for n in idle if n in self.retiring]:
            idle.remove(n)
            self.retiring.discard(n)
            ray.kill(self.workers.pop(n), no_restart=True)
        return idle

    def kill(self) -> None:
        for actor in self.workers.values():
            ray.kill(actor, no_restart=True)
        self.workers = {}

    def _load(self, numbers: list[int]) -> None:
        loaded = ray.get([self.workers[n].load_weights.remote(self.weights, self.version) for n in numbers])
        if any(v != self.version for v in loaded):
            raise RuntimeError(f"weight sync: workers report versions {loaded}, expected {self.version}")
