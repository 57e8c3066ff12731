"""Which device each role runs on, from `run.device`, the roles' GPU requests and what the Ray cluster has.

    run.device=auto  CUDA where a role asks for GPUs and Ray reports GPUs; with no GPUs in the cluster a GPU
                     request is an error (exit 2) naming the key and what the cluster has
    run.device=cuda  the same, and a cluster without GPUs is an error even before the requests are read
    run.device=cpu   every role on CPU; GPU requests are ignored (e.g. to try a GPU recipe on a laptop)

A role's actors ask Ray for `learner.gpus_per_rank` / `rollout.gpus_per_worker` GPUs each (fractions let
several rollout workers share one GPU); sandbox workers are always CPU-only. On CUDA a model is moved to the
actor's GPU in bfloat16 and the learner's DeepSpeed uses the cuda accelerator with nccl; on CPU it keeps the
configured dtype, the cpu accelerator and gloo.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import UserError


@dataclass(frozen=True)
class Devices:
    learner: str          # "cuda" or "cpu"
    rollout: str
    learner_gpus: float   # GPUs each learner rank asks Ray for (0 on CPU)
    rollout_gpus: float   # GPUs each rollout worker asks Ray for (0 on CPU)

    def dist_backend(self) -> str:
        return "nccl" if self.learner == "cuda" else "gloo"


def resolve_devices(cfg, cluster: dict[str, float]) -> Devices:
    """`cluster`: `ray.cluster_resources()` (or the counts of a planned cluster)."""
    if cfg.run.device == "cpu":
        return Devices("cpu", "cpu", 0.0, 0.0)
    have = float(cluster.get("GPU", 0.0))
    if have <= 0:
        what = _describe(cluster)
        if cfg.run.device == "cuda":
            raise UserError(f"run.device=cuda: the Ray cluster has no GPUs ({what}); use run.device=auto or cpu")
        for key, value in (("learner.gpus_per_rank", cfg.learner.gpus_per_rank),
                           ("rollout.gpus_per_worker", cfg.rollout.gpus_per_worker)):
            if value > 0:
                raise UserError(f"{key}={value:g}: the Ray cluster has no GPUs ({what}); set it to 0, "
                                f"or run.device=cpu to run this config on CPU")
    lg, rg = cfg.learner.gpus_per_rank, cfg.rollout.gpus_per_worker
    return Devices("cuda" if lg > 0 else "cpu", "cuda" if rg > 0 else "cpu", lg, rg)


def gpus_needed(cfg, devices: Devices) -> float:
    return cfg.learner.num_ranks * devices.learner_gpus + cfg.rollout.num_workers * devices.rollout_gpus


def check_capacity(cfg, devices: Devices, cluster: dict[str, float]) -> None:
    """A run that needs more GPUs or custom resources than the cluster has would wait forever for its
    actors: exit 2 instead."""
    for role, count, resources in (("learner", cfg.learner.num_ranks, cfg.learner.resources),
                                   ("rollout", cfg.rollout.num_workers, cfg.rollout.resources)):
        for name, amount in resources.items():
            have = float(cluster.get(name, 0.0))
            if count * amount > have + 1e-9:
                raise UserError(f"{role}.resources={{{name}: {amount:g}}}: {count} x {amount:g} {name} needed, the Ray "
                                f"cluster has {have:g} ({_describe(cluster)}); start nodes with --resources or "
                                f"change {role}.resources")
    need, have = gpus_needed(cfg, devices), float(cluster.get("GPU", 0.0))
    if need > have + 1e-9:
        raise UserError(f"learner.num_ranks={cfg.learner.num_ranks} x learner.gpus_per_rank={devices.learner_gpus:g} "
                        f"+ rollout.num_workers={cfg.rollout.num_workers} x rollout.gpus_per_worker="
                        f"{devices.rollout_gpus:g} = {need:g} GPUs: the Ray cluster has {have:g} ({_describe(cluster)})")


def _describe(cluster: dict[str, float]) -> str:
    nodes = int(cluster.get("nodes", 0))
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    return (f"{nodes} node{'s' if nodes != 1 else ''}, " if nodes else "") + f"{cpus:g} CPUs, {gpus:g} GPUs"
