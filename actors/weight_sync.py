"""Broadcast weight sync: a torch.distributed group of learner rank 0 (member 0) and every rollout worker.

The group is its own process group (a TCPStore on a free port of rank 0's node and a ProcessGroupGloo or
ProcessGroupNCCL built on it), apart from the learner's DeepSpeed group, so rollout workers never join the
training collectives. One sync:

    header  int64 [version, number of buckets, number of tensors]   broadcast from member 0
    bucket  one flat tensor per bucket (tensors of one dtype, in state-dict order, about bucket_mb each)

Every member computes the same buckets from the `layout` (name, dtype, shape of each tensor of member 0's
state dict) it is given when it joins, so nothing but the header and the flat buckets travels. A receiver
checks the header against the version the driver expects before it copies anything into its model.

The strategies (`weights.sync`), behind one `push(version)`, drive the actor groups of actors/groups.py:
  `ObjectStoreSync` (small models): learner rank 0 returns its state dict as one object-store object and
  every worker loads that same object, version-stamped.
  `BroadcastSync`: the group above (flat buckets, a version header; nccl on GPU, gloo on CPU). A worker that
  starts after the first sync (live scaling, a Ray restart) gets the current version once through the object
  store (exported when the first such worker needs it, or at the next push when a train step is running) and
  is in the group from the next push on; the group is rebuilt whenever its membership changed.
  Never one call per parameter.
"""
from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import time

import ray
import torch
import torch.distributed as dist
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

Layout = list[tuple[str, str, tuple[int, ...]]]  # (name, dtype name, shape) in state-dict order


def layout_of(state: dict[str, torch.Tensor]) -> Layout:
    return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in state.items()]


def plan_buckets(layout: Layout, bucket_bytes: int) -> list[list[int]]:
    """Indices into `layout`, cut into buckets of one dtype and at most `bucket_bytes` (a larger tensor is a
    bucket of its own). A pure function of its arguments: every member gets the same buckets."""
    buckets: list[list[int]] = []
    open_bucket: dict[str, tuple[list[int], int]] = {}  # dtype -> (indices, bytes) of its bucket being filled
    for i, (_, dtype, shape) in enumerate(layout):
        size = _numel(shape) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
        indices, used = open_bucket.get(dtype, ([], 0))
        if indices and used + size > bucket_bytes:
            buckets.append(indices)
            indices, used = [], 0
        open_bucket[dtype] = (indices + [i], used + size)
    buckets.extend(indices for indices, _ in open_bucket.values() if indices)
    return sorted(buckets, key=lambda b: b[0])


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict: equal digests, bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def free_port_here() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class SyncStats:
    version: int
    buckets: int
    bytes: int
    seconds: float


class BroadcastMember:
    """One process's membership of a weight-sync group (member 0 sends, the others receive)."""

    def __init__(self, master_addr: str, master_port: int, member: int, size: int, *, backend: str, device,
                 layout: Layout, bucket_bytes: int, timeout_s: float, name: str):
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(master_addr, master_port, size, member == 0, timeout)
        prefixed = dist.PrefixStore(name, store)
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = dist.ProcessGroupNCCL(prefixed, member, size, options)
        else:
            self.group = dist.ProcessGroupGloo(prefixed, member, size, timeout)
        self.store, self.member, self.size, self.name = store, member, size, name
        self.device = torch.device(device)
        self.layout = layout
        self.buckets = plan_buckets(layout, bucket_bytes)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()

    def send(self, state: dict[str, torch.Tensor], version: int) -> SyncStats:
        """Member 0: broadcast `state` (laid out as `layout`) stamped `version`."""
        import time

        t0 = time.perf_counter()
        tensors = list(state.values())
        if layout_of(state) != self.layout:
            raise RuntimeError(f"weight sync {self.name}: the state dict no longer matches the group's layout")
        self._broadcast(torch.tensor([version, len(self.buckets), len(tensors)], dtype=torch.long,
                                     device=self.device))
        sent = 0
        for bucket in self.buckets:
            flat = torch.cat([tensors[i].detach().reshape(-1).to(self.device) for i in bucket])
            self._broadcast(flat)
            sent += flat.numel() * flat.element_size()
        return SyncStats(version, len(self.buckets), sent, time.perf_counter() - t0)

    @torch.no_grad()
    def receive(self, model: torch.nn.Module, expected_version: int) -> SyncStats:
        """Members 1..: receive one sync into `model`'s state dict; the header must carry `expected_version`."""
        target = model.state_dict()
        params = list(target.values())
        return self._receive(expected_version, lambda i, tensor: params[i].copy_(tensor), len(target))

    @torch.no_grad()
    def receive_state(self, expected_version: int) -> tuple[dict[str, torch.Tensor], SyncStats]:
        """Members 1..: receive one sync as a new state dict (name -> tensor, in the layout's order), for an
        engine that loads weights through its own loader (vLLM) instead of holding a torch module."""
        state: dict[str, torch.Tensor] = {}  # views into the received buckets, which they keep alive

        def keep(i: int, tensor: torch.Tensor) -> None:
            state[self.layout[i][0]] = tensor

        stats = self._receive(expected_version, keep, len(self.layout))
        return state, stats

    def _receive(self, expected_version: int, put, n_target: int) -> SyncStats:
        import time

        t0 = time.perf_counter()
        header = torch.zeros(3, dtype=torch.long, device=self.device)
        self._broadcast(header)
        version, n_buckets, n_tensors = (int(v) for v in header.tolist())
        if (n_buckets, n_tensors) != (len(self.buckets), len(self.layout)) or n_target != len(self.layout):
            raise RuntimeError(f"weight sync {self.name}: sender has {n_tensors} tensors in {n_buckets} buckets, "
                               f"this worker expects {len(self.layout)} in {len(self.buckets)}")
        received = 0
        for bucket in self.buckets:
            dtype = getattr(torch, self.layout[bucket[0]][1])
            flat = torch.empty(sum(_numel(self.layout[i][2]) for i in bucket), dtype=dtype, device=self.device)
            self._broadcast(flat)
            received += flat.numel() * flat.element_size()
            offset = 0
            for i in bucket:
                n = _numel(self.layout[i][2])
                put(i, flat[offset:offset + n].view(self.layout[i][2]))
                offset += n
        if version != expected_version:  # after draining the buckets, so the group stays in step
            raise RuntimeError(f"weight sync {self.name}: received version {version}, expected {expected_version}")
        return SyncStats(version, n_buckets, received, time.perf_counter() - t0)

    def close(self) -> None:
        self.group = None
        self.store = None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ----------------------------------------------------------------------------------------- strategies

STUCK_GRACE_S = 10.0  # after a broadcast failed, a receiver not done by then is stuck in the collective


class ObjectStoreSync:
    """`weights.sync: object_store`: one state-dict object per version, loaded by every worker."""

    def __init__(self, cfg, learners, rollouts):
        self.learners, self.rollouts = learners, rollouts

    def push(self, version: int) -> dict:
        t0 = time.perf_counter()
        self.rollouts.load_weights(self.learners.publish_weights(), version)
        return {"sync_s": time.perf_counter() - t0, "sync_workers": len(self.rollouts)}


class BroadcastSync:
    """`weights.sync: broadcast`: learner rank 0 broadcasts flat version-stamped buckets to its group."""

    def __init__(self, cfg, learners, rollouts):
        self.cfg, self.learners, self.rollouts = cfg, learners, rollouts
        self.layout = None
        self.group: tuple[int, tuple[int, ...]] | None = None  # (restarts, members) the group was built for
        self.builds = 0

    def push(self, version: int) -> dict:
        """Broadcast `version` to the workers in the group (rebuilt first when membership changed), then hand
        it to waiting workers through the object store."""
        t0 = time.perf_counter()
        rollouts, members = self.rollouts, self.rollouts.members()
        handle = None  # this version in the object store, once exported
        if members:
            receiving = []
            try:
                if self.group != (rollouts.restarts, tuple(members)):
                    self._build(members)
                receiving = rollouts.call(members, "receive_weights", version)
                ray.get(self.learners.broadcast_weights(version) + receiving, timeout=self.cfg.weights.timeout_s)
            except (RayActorError, RayTaskError, GetTimeoutError) as e:  # a learner's failure raises from the export
                print(f"weight sync: broadcast of version {version} failed ({type(e).__name__}); "
                      f"sending it through the object store and rebuilding the group", flush=True)
                self.group = None
                # a receiver still inside the failed collective would hold its actor until the collective's
                # timeout: restart it (it gets the weights when it is back, as after any restart)
                if receiving:
                    _, stuck = ray.wait(receiving, num_returns=len(receiving), timeout=STUCK_GRACE_S)
                    rollouts.restart([n for n, ref in zip(members, receiving) if ref in stuck])
                handle = self.learners.publish_weights()
                rollouts.load_weights(handle, version, numbers=rollouts.members())
        rollouts.set_newest(version, handle)
        waiting = [n for n in rollouts.waiting if n in rollouts.workers]
        if waiting:  # late joiners: this version once through the object store, the group from the next push
            rollouts.load_weights(handle or self.learners.publish_weights(), version, numbers=waiting)  # the handle stays: a worker added before the next push loads it at once
        return {"sync_s": time.perf_counter() - t0, "sync_workers": len(members) + len(waiting)}

    def _build(self, members: list[int]) -> None:
        w = self.cfg.weights
        if self.layout is None:
            self.layout = self.learners.weight_layout()
        addr, port = self.learners.weight_sync_address()
        self.builds += 1
        name = f"weights-{self.builds}"
        size = len(members) + 1
        ray.get([self.learners.join_weight_group(port, size, name, self.layout, w.bucket_mb, w.timeout_s)]
                + [self.rollouts.workers[n].join_weight_group.remote(addr, port, i + 1, size, name, self.layout,
                                                                      w.bucket_mb, w.timeout_s)
                   for i, n in enumerate(members)], timeout=w.timeout_s)
        self.group = (self.rollouts.restarts, tuple(members))


def weight_sync(cfg, learners, rollouts):
    """The strategy of `weights.sync` over an actors.groups LearnerGroup and RolloutGroup."""
    return (BroadcastSync if cfg.weights.sync == "broadcast" else ObjectStoreSync)(cfg, learners, rollouts)
