"""Placement: which device each role runs on and what the run asks of the cluster, and the plan of a run that
`diffurl train --dry-run` prints.

Devices: which device each role runs on, from `run.device`, the roles' GPU requests and what the Ray cluster has.

    run.device=auto  CUDA where a role asks for GPUs and Ray reports GPUs; with no GPUs in the cluster a GPU
                     request is an error (exit 2) naming the key and what the cluster has
    run.device=cuda  the same, and a cluster without GPUs is an error even before the requests are read
    run.device=cpu   every role on CPU; GPU requests are ignored (e.g. to try a GPU recipe on a laptop)

A role's actors ask Ray for `learner.gpus_per_rank` / `rollout.gpus_per_worker` GPUs each (fractions let
several rollout workers share one GPU); sandbox workers are always CPU-only. On CUDA a model is moved to the
actor's GPU in bfloat16 and the learner's DeepSpeed uses the cuda accelerator with nccl; on CPU it keeps the
configured dtype, the cpu accelerator and gloo.

The plan `diffurl train --dry-run` prints: how many of each actor, with what CPUs, GPUs and
placement, on which device, how much GPU memory each needs (`orchestrator.memory_plan`), how weights reach the
rollout workers, and what the whole run asks of the cluster. Also the actors' environment (`ACTOR_ENV`).

Without a cluster (no `ray.address`) the plan assumes the requested GPUs exist; with one (`cluster_resources`)
the devices are resolved against it as a run would (`resolve_devices` above) and the needs compared with its totals.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from orchestrator.errors import UserError, one_line
from orchestrator.memory_plan import gib, learner_memory, model_shape, rollout_memory, training_dtype


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


# quiet, deterministic actors: no per-load progress bars, no tokenizer thread pools, no accelerator probing
# CPU_KERNELS: the same CPU code paths on every x86-64 machine with AVX2, so that CPU results (the demo's warm
# start and numbers) do not depend on which one runs them: torch's own kernels at AVX2 (with its AVX-512 ones, 60
# SFT steps already give other weights), MKL's conditional numerical reproducibility at its AVX2 branch, oneDNN
# capped at AVX2. GPU work does not read them. Set any of them yourself to choose otherwise.
CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
ACTOR_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu", **CPU_KERNELS}


def apply_actor_env() -> None:
    """ACTOR_ENV in this process too (quiet model loading, no thread pools, the pinned CPU kernels), where the
    user has not set a variable; before torch is imported, or its kernels are chosen already."""
    for key, value in ACTOR_ENV.items():
        os.environ.setdefault(key, value)


def actor_env() -> dict[str, str]:
    """ACTOR_ENV for Ray's workers, with this process's own value wherever the user set one."""
    return {key: os.environ.get(key, value) for key, value in ACTOR_ENV.items()}


def actor_plan(cfg, devices: Devices | None = None) -> list[dict]:
    """How many of each actor, with what resources: printed by `diffurl train --dry-run`. `num_gpus`: what
    each actor asks Ray for under `devices` (default: the configured requests)."""
    lc, rc, sc = cfg.learner, cfg.rollout, cfg.sandbox
    learner_gpus = lc.gpus_per_rank if devices is None else devices.learner_gpus
    rollout_gpus = rc.gpus_per_worker if devices is None else devices.rollout_gpus
    return [
        {"role": "learner", "names": [f"learner-{r}" for r in range(lc.num_ranks)],
         "num_cpus": lc.num_cpus, "num_gpus": learner_gpus, "resources": dict(lc.resources),
         "detail": f"DeepSpeed ZeRO-{lc.zero_stage}, {cfg.model.dtype}, "
                   + (f"estimator={lc.estimator}" if lc.objective == "coupled_grpo" else "objective=ar_grpo")
                   + f", mu={lc.mu}"},
        {"role": "rollout", "names": [f"rollout-{i}" for i in range(rc.num_workers)],
         "num_cpus": rc.num_cpus, "num_gpus": rollout_gpus, "resources": dict(rc.resources),
         "detail": f"G={rc.group_size}, {rc.max_new_tokens} tokens, {_decoder(rc)}, "
                   f"alg={rc.alg}, T={rc.temperature}, max_restarts={rc.max_restarts}"},
        {"role": "sandbox", "names": [f"sandbox-{i}" for i in range(sc.num_workers)],
         "num_cpus": 0, "num_gpus": 0, "resources": {},
         "detail": f"timeout {sc.test_timeout_s}s/test, {sc.memory_mb} MiB"},
    ]


def format_plan(cfg, cluster: dict[str, float] | None = None) -> str:
    """The dry-run plan. `cluster`: `cluster_resources(cfg.ray.address)`, or None to plan as if the requested
    GPUs exist. Raises UserError where a run would refuse to start (GPUs requested, none in the cluster)."""
    planned = cluster if cluster is not None else ({} if cfg.run.device == "cpu" else {"GPU": math.inf})
    devices = resolve_devices(cfg, planned)
    actors = actor_plan(cfg, devices)
    lines = [f"actor plan ({cfg.run.mode} mode, {cfg.run.steps} steps, "
             f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} completions per step):"]
    for a in actors:
        n = len(a["names"])
        lines.append(f"  {a['role']:<8} x{n}  num_cpus={a['num_cpus']:<4g} num_gpus={a['num_gpus']:<4g} "
                     f"{a['names'][0]}..{a['names'][-1]}  {a['detail']}")
    lines += ["  placement:", *_placement(cfg, devices)]
    lines += _memory(cfg, devices)
    lines.append(f"  weight sync: {_weight_sync(cfg, devices)}")
    need = _needs(actors)
    lines.append(f"  needs: {_resources(need)} in total")
    if cluster is not None:
        lines += _against(cfg, devices, cluster, need)
    lines.append(f"  redis: {'embedded redis-server in the run directory' if not cfg.redis.url else 'external'}")
    return "\n".join(lines)


def cluster_resources(address: str) -> dict[str, float]:
    """The totals of the Ray cluster at `address` (`ray.cluster_resources()`) and its number of alive nodes
    (key "nodes"); a cluster that cannot be reached is a UserError."""
    import ray

    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        return {**ray.cluster_resources(), "nodes": len([n for n in ray.nodes() if n["Alive"]])}
    except Exception as e:  # noqa: BLE001 (any failure to reach the cluster is the user's address)
        raise UserError(f"ray.address={address}: cannot read the cluster's resources ({one_line(e)})") from None
    finally:
        if ray.is_initialized():
            ray.shutdown()


def _placement(cfg, devices: Devices) -> list[str]:
    lc, rc = cfg.learner, cfg.rollout
    bundle = {"CPU": lc.num_cpus, "GPU": devices.learner_gpus, **lc.resources}
    bundle_text = ", ".join(f"{k}: {v:g}" for k, v in bundle.items() if v > 0) or "CPU: 0.001"
    learner_device = (f"cuda, one GPU per rank, {devices.dist_backend()}" if devices.learner == "cuda"
                      else f"cpu, {training_dtype(cfg, 'cpu')}, {devices.dist_backend()}")
    if devices.rollout == "cuda":
        share = 1 / devices.rollout_gpus
        shared = f", {share:g} workers per GPU" if share > 1 and share == int(share) else ""
        rollout_device = f"cuda, {devices.rollout_gpus:g} GPU per worker{shared}"
    else:
        rollout_device = f"cpu, {training_dtype(cfg, 'cpu')}"
    strategy = {"SPREAD": "SPREAD (over the nodes)", "DEFAULT": "DEFAULT (Ray's default scheduler)"}[rc.placement]
    bundles = f"{lc.num_ranks} bundle{'s' if lc.num_ranks != 1 else ''}"
    return [f"    learner: a placement group of {bundles} {{{bundle_text}}}, strategy {lc.placement}; "
            f"{learner_device}",
            f"    rollout: scheduling strategy {strategy}; {rollout_device}"
            + (f"; resources {dict(rc.resources)}" if rc.resources else ""),
            "    sandbox: CPU only, num_cpus=0 (Ray's default scheduler; each runs its tests in sandboxed processes)"]


def _memory(cfg, devices: Devices) -> list[str]:
    shape, source = model_shape(cfg)
    if shape is None:
        return [f"  memory estimate: {source}"]
    lc = cfg.learner
    learner, rollout = learner_memory(cfg, shape, devices.learner), rollout_memory(cfg, shape, devices.rollout)
    where = {"cuda": "GPU memory", "cpu": "host memory"}
    checkpointing = ", gradient checkpointing" if cfg.model.gradient_checkpointing else ""
    lines = [f"  memory estimate from {source}: {shape.parameters:,} parameters",
             f"    per learner rank ({where[devices.learner]}, {training_dtype(cfg, devices.learner)}, "
             f"ZeRO-{lc.zero_stage} over {lc.num_ranks} rank{'s' if lc.num_ranks != 1 else ''}{checkpointing}):",
             f"      {learner.describe()}",
             f"    per rollout worker ({where[devices.rollout]}, {training_dtype(cfg, devices.rollout)}):",
             f"      {rollout.describe()}"]
    if devices.rollout == "cuda" and devices.rollout_gpus < 1:
        per_gpu = math.floor(1 / devices.rollout_gpus + 1e-9)
        lines.append(f"      {per_gpu} workers per GPU: {gib(per_gpu * rollout.total)} per GPU")
    return lines


def _weight_sync(cfg, devices: Devices) -> str:
    w = cfg.weights
    if w.sync == "object_store":
        return "object_store (learner rank 0 puts its state dict in Ray's object store once; every worker loads it)"
    return (f"broadcast (a torch.distributed group of learner rank 0 and the {cfg.rollout.num_workers} workers, "
            f"{devices.dist_backend()}, flat buckets of {w.bucket_mb:g} MiB)")


def _needs(actors: list[dict]) -> dict[str, float]:
    need: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    for a in actors:
        n = len(a["names"])
        for key, value in {"CPU": a["num_cpus"], "GPU": a["num_gpus"], **a["resources"]}.items():
            need[key] = need.get(key, 0.0) + n * value
    return need


def _against(cfg, devices: Devices, cluster: dict[str, float], need: dict[str, float]) -> list[str]:
    nodes = int(cluster.get("nodes", 0))
    have = {k: float(cluster.get(k, 0.0)) for k in need}
    lines = [f"  cluster: {nodes} node{'s' if nodes != 1 else ''}, {_resources(have)}"]
    short = []
    try:
        check_capacity(cfg, devices, cluster)
    except UserError as e:
        short.append(str(e))
    short += [f"{_resources({k: v})} needed, the cluster has {have[k]:g}" for k, v in need.items()
              if k == "CPU" and v > have[k] + 1e-9]  # GPUs and custom resources: check_capacity
    lines += [f"  SHORT: {s}" for s in short] or [f"  fits: {gpus_needed(cfg, devices):g} of {have['GPU']:g} GPUs, "
                                                    f"{need['CPU']:g} of {have['CPU']:g} CPUs"]
    return lines


def _resources(amounts: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}s" if k in ("CPU", "GPU") else f"{v:g} {k}" for k, v in amounts.items())


def _decoder(rc) -> str:
    if rc.engine == "vllm":
        return f"vLLM (causal, KV cache {rc.vllm_kv_cache_mb:g} MiB on CPU)"
    if rc.decoder == "reference":
        return f"reference decoder in {rc.steps} steps"
    rule = f"factor {rc.factor:g}" if rc.factor is not None else f"threshold {rc.threshold:g}"
    block = f"blocks of {rc.block_length}" if rc.block_length else "one block"
    return f"fast decoder ({rule}, {block}, cache {rc.cache})"
