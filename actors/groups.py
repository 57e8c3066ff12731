"""Actor groups: one object per role that owns its Ray actors, fans calls out and shards the work.

- `LearnerGroup`: the DeepSpeed ranks `learner-0..N-1`, one per bundle of a placement group
  (`learner.placement`: PACK, STRICT_PACK or SPREAD); rank 0's node IP and a port free there are the
  DeepSpeed master address. A step is one `async_train_step` (every rank joins).
- `RolloutGroup`: the rollout workers `rollout-<n>` (numbered for life: a worker added by live scaling
  gets a new number), scheduled by `rollout.placement` (SPREAD by default), each running the groups it is
  handed; the group adds, retires, restarts and updates workers.
- Weight sync (`weights.sync`) drives these groups from actors/weight_sync.py (`ObjectStoreSync`,
  `BroadcastSync`, behind one `push(version)`), through their methods.
Callers never index actors or write `[a.f.remote() for a in actors]`: they call these methods.
"""
from __future__ import annotations

import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

PLACEMENT_TIMEOUT_S = 300.0  # a placement group not placed by then (resources never free up) stops the run


class PlacementError(RuntimeError):
    """The cluster cannot hold the learner's placement group."""


def _bundle(num_cpus: float, gpus: float, resources: dict) -> dict:
    bundle = {"CPU": num_cpus, "GPU": gpus, **resources}
    return {k: float(v) for k, v in bundle.items() if v > 0} or {"CPU": 0.001}


class LearnerGroup:
    def __init__(self, cfg, model_dir: str, open_stream, resume_from: tuple | None = None, *,
                 device: str = "cpu", gpus_per_rank: float = 0.0):
        """`resume_from`: (checkpoint root, tag, reference model file), or None for a new run."""
        from actors.learner import Learner

        lc, world = cfg.learner, cfg.learner.num_ranks
        bundle = _bundle(lc.num_cpus, gpus_per_rank, dict(lc.resources))
        self.placement = placement_group([dict(bundle) for _ in range(world)], strategy=lc.placement)
        try:
            ray.get(self.placement.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            remove_placement_group(self.placement)
            raise PlacementError(f"the learner's placement group ({world} x {bundle}, {lc.placement}) was not placed "
                                 f"in {PLACEMENT_TIMEOUT_S:.0f} s; the cluster has {ray.available_resources()} free") from None
        self.actors = [
            Learner.options(name=f"learner-{rank}", num_cpus=lc.num_cpus, num_gpus=gpus_per_rank,
                            resources=dict(lc.resources) or None, max_restarts=0,
                            scheduling_strategy=PlacementGroupSchedulingStrategy(
                                self.placement, placement_group_bundle_index=rank)).remote(cfg, rank, world, device)
            for rank in range(world)]
        master_addr, master_port = ray.get(self.actors[0].master_address.remote())
        self.master = f"{master_addr}:{master_port}"
        self._setup = self._all("setup", master_addr, master_port, model_dir, open_stream, resume_from)

    def wait_ready(self) -> list[dict]:
        """Every rank's info (rank, pid, node_id, device) once it has built its engine."""
        return ray.get(self._setup)

    def async_train_step(self, step: int) -> list[ray.ObjectRef]:
        """Every rank trains step `step`; rank 0's ref comes first (its result is the step's statistics)."""
        return self._all("train_step", step)

    def publish_weights(self) -> ray.ObjectRef:
        """The current weights as one object-store object (rank 0's state dict; every rank joins under ZeRO-3)."""
        refs = self._all("export_weights")
        ray.get(refs[1:])
        return refs[0]

    def weight_layout(self) -> list:
        return ray.get(self._all("weight_layout"))[0]

    def join_weight_group(self, master_port: int, size: int, name: str, layout: list, bucket_mb: float,
                          timeout_s: float) -> ray.ObjectRef:
        """Rank 0 becomes member 0 of a weight-sync group (resolves once every member has joined)."""
        return self.actors[0].join_weight_group.remote(master_port, size, name, layout, bucket_mb, timeout_s)

    def weight_sync_address(self) -> tuple[str, int]:
        return ray.get(self.actors[0].master_address.remote())

    def broadcast_weights(self, version: int) -> list[ray.ObjectRef]:
        """Rank 0 sends `version` to its weight-sync group (every rank joins the gather under ZeRO-3);
        rank 0's ref comes first and resolves to its sync statistics."""
        return self._all("broadcast_weights", version)

    def save_checkpoint(self, ckpt_root: str, tag: str, policy_dir: str, reference_file: str,
                        client_state: dict) -> list[str]:
        """Every rank saves; returns the stream entries the checkpoint covers (rank 0's list)."""
        return ray.get(self._all("save_checkpoint", ckpt_root, tag, policy_dir, reference_file, client_state))[0]

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        remove_placement_group(self.placement)

    def _all(self, method: str, *args) -> list[ray.ObjectRef]:
        return [getattr(actor, method).remote(*args) for actor in self.actors]


class RolloutGroup:
    def __init__(self, cfg, model_dir: str, pool, open_stream, run_id: str, version: int = 0, *,
                 device: str = "cpu", gpus_per_worker: float = 0.0):
        """Workers load `model_dir` (policy `version`) when they start; later weights come from a sync."""
        self.cfg, self.model_dir, self.pool, self.open_stream, self.run_id = cfg, model_dir, pool, open_stream, run_id
        self.device, self.gpus = device, gpus_per_worker
        self.workers: dict[int, ray.actor.ActorHandle] = {}  # worker number -> actor
        self.retiring: set[int] = set()  # retired once idle: a running group finishes first
        self.waiting: set[int] = set()  # started behind the newest version: they get it at the next push
        self._joined: list[int] = []  # were waiting, now hold the newest version (until `joined` is read)
        self.base_version = version  # the policy version in model_dir: what a (re)started worker holds
        self.weights, self.version = None, version  # newest weights handle (None: model_dir or a broadcast)
        self.restarts = 0  # worker processes Ray restarted: a new process is not in the broadcast group
        self._next_number = 0

    def __len__(self) -> int:
        return len(self.workers)

    def numbers(self) -> list[int]:
        return list(self.workers)

    def members(self) -> list[int]:
        """Workers at the newest version (not waiting for it)."""
        return [n for n in self.workers if n not in self.waiting]

    def fits(self) -> int:
        """How many more rollout workers the cluster's free resources can place now (Ray's available
        resources against one worker's CPUs, GPUs and custom resources)."""
        need = {k: v for k, v in _bundle(self.cfg.rollout.num_cpus, self.gpus, dict(self.cfg.rollout.resources)).items()
                if v > 0}
        free = ray.available_resources()
        return min((int(free.get(k, 0.0) / v + 1e-9) for k, v in need.items()), default=1 << 16)

    def add(self, place_timeout_s: float | None = None) -> int | None:
        """Start one worker; returns its number. It is at the newest version at once when that is in
        model_dir or in the object store, else it waits for the next push (`joined`). `place_timeout_s`: give
        the worker up (killed, one line, None returned) when it has not started within that many seconds (Ray
        could not place it, or its constructor failed)."""
        from actors.rollout import RolloutWorker

        n, self._next_number = self._next_number, self._next_number + 1
        strategy = "SPREAD" if self.cfg.rollout.placement == "SPREAD" else "DEFAULT"
        self.workers[n] = RolloutWorker.options(
            name=f"rollout-{n}", num_cpus=self.cfg.rollout.num_cpus, num_gpus=self.gpus,
            resources=dict(self.cfg.rollout.resources) or None, scheduling_strategy=strategy,
            max_restarts=self.cfg.rollout.max_restarts, max_task_retries=0,
        ).remote(self.cfg, self.model_dir, self.pool, self.open_stream, self.run_id, f"rollout-{n}",
                 self.base_version, self.device)
        if place_timeout_s is not None:
            try:
                ray.get(self.workers[n].info.remote(), timeout=place_timeout_s)
            except (GetTimeoutError, RayActorError) as e:
                ray.kill(self.workers.pop(n), no_restart=True)
                why = ("Ray could not place it" if isinstance(e, GetTimeoutError)
                       else f"it failed: {e.__class__.__name__}")
                print(f"rollout-{n} did not start within {place_timeout_s:.0f} s ({why}); given up", flush=True)
                return None
        self.update(n, restarted=False)
        return n

    def active(self) -> int:
        """Workers not being retired."""
        return sum(1 for n in self.workers if n not in self.retiring)

    def wait_ready(self) -> list[dict]:
        return ray.get([actor.info.remote() for actor in self.workers.values()])

    def rollout(self, worker: int, jobs: list) -> ray.ObjectRef:
        """Start prompt groups (`actors.rollout.GroupJob`s) on `worker`, decoded in one batch; the ref
        resolves to one RolloutOutcome per job."""
        return self.workers[worker].rollout_groups.remote(jobs, self.version)

    def load_weights(self, weights: ray.ObjectRef, version: int, numbers: list[int] | None = None) -> None:
        """Object-store sync: every worker (or `numbers`) swaps to `weights` (version `version`) before its
        next group."""
        self.weights, self.version = weights, version
        numbers = self.numbers() if numbers is None else numbers
        self._load(numbers)
        self._joined += [n for n in numbers if n in self.waiting]
        self.waiting.difference_update(numbers)

    def update(self, worker: int, restarted: bool = True) -> bool:
        """Bring one worker (new, or restarted by Ray from its constructor arguments) to the newest weights.
        True when it is ready for groups; False when it waits for the next push."""
        self.restarts += int(restarted)
        if self.version == self.base_version:
            return True
        if self.weights is not None:
            self._load([worker])
            return True
        self.waiting.add(worker)
        return False

    def set_newest(self, version: int, handle) -> None:
        """The newest version is `version`, in the object store as `handle` (None: only in the broadcast group)."""
        self.version, self.weights = version, handle

    def joined(self) -> list[int]:
        """Workers that were waiting and now hold the newest version (after a push): ready for groups."""
        ready, self._joined = [n for n in self._joined if n in self.workers], []
        return ready

    def recover(self, worker: int, timeout_s: float = 120.0) -> bool:
        """After `worker` died mid-group: True once Ray has restarted it with the newest weights; False when
        it does not come back (it is removed) or waits for the next push."""
        try:
            info = ray.get(self.workers[worker].info.remote(), timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            self.retiring.discard(worker)
            self.waiting.discard(worker)
            ray.kill(self.workers.pop(worker), no_restart=True)
            return False
        if info["version"] == self.version:
            self.restarts += 1  # a new process: not in the broadcast group
            return True
        return self.update(worker)

    def scale(self, want: int, idle: list[int], place_timeout_s: float | None = None) -> list[int]:
        """Move toward `want` workers: start new ones at once (each given up after `place_timeout_s`, see `add`),
        retire the highest-numbered ones once idle. Returns the idle workers after the change (new workers that
        wait for the next push are not idle)."""
        active = [n for n in self.workers if n not in self.retiring]
        added = [self.add(place_timeout_s) for _ in range(want - len(active))]
        idle = idle + [n for n in added if n is not None and n not in self.waiting]
        self.retiring.update(sorted(active, reverse=True)[:max(0, len(active) - want)])
        for n in [n for n in self.workers if n in self.retiring and (n in idle or n in self.waiting)]:
            if n in idle:
                idle.remove(n)
            self.retiring.discard(n)
            self.waiting.discard(n)
            ray.kill(self.workers.pop(n), no_restart=True)
        return idle

    def restart(self, numbers: list[int]) -> None:
        """Have Ray restart these workers' processes (within rollout.max_restarts; dead for good past it)."""
        for n in numbers:
            print(f"rollout-{n} is stuck in a failed weight sync; restarting it", flush=True)
            ray.kill(self.workers[n], no_restart=False)

    def kill(self) -> None:
        for actor in self.workers.values():
            ray.kill(actor, no_restart=True)
        self.workers = {}

    def call(self, numbers: list[int], method: str, *args) -> list[ray.ObjectRef]:
        return [getattr(self.workers[n], method).remote(*args) for n in numbers]

    def _load(self, numbers: list[int]) -> None:
        """A worker that died (its node lost), or that Ray cannot restart within weights.timeout_s, is skipped:
        its next group finds it dead, or restarted and stale."""
        refs = {n: self.workers[n].load_weights.remote(self.weights, self.version) for n in numbers}
        deadline = time.monotonic() + self.cfg.weights.timeout_s
        for n, ref in refs.items():
            try:
                loaded = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except (RayActorError, GetTimeoutError) as e:
                print(f"weight sync: rollout-{n} is gone ({type(e).__name__}); it is recovered at its next group",
                      flush=True)
                continue
            if loaded != self.version:
                raise RuntimeError(f"weight sync: rollout-{n} reports version {loaded}, expected {self.version}")
