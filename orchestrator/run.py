"""What a run needs before its first step: a run directory, Ray, the initial model, the actor plan."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import ray

from orchestrator.errors import UserError
from orchestrator.redis_server import free_port


def make_run_dir(cfg) -> Path:
    root = Path(cfg.run.root_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{cfg.run.name}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{cfg.run.name}-{stamp}-{n}"
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"run.root_dir={cfg.run.root_dir}: cannot create the run directory ({e.strerror})")
    return run_dir


# quiet, deterministic actors: no per-load progress bars, no tokenizer thread pools, no accelerator probing
ACTOR_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}


def init_ray(cfg, run_id: str) -> tuple[bool, int | None]:
    """Connect to `ray.address` (from the config or RAY_ADDRESS) or start a local cluster.

    Returns (started_here, metrics_export_port).
    """
    namespace = f"{cfg.ray.namespace}-{run_id}"
    if ray.is_initialized():
        return False, None
    if cfg.ray.address:
        try:
            ray.init(address=cfg.ray.address, namespace=namespace, log_to_driver=True,
                     runtime_env={"env_vars": ACTOR_ENV})
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"ray.address={cfg.ray.address}: cannot connect to a Ray cluster there ({e})")
        return False, None
    port = cfg.ray.metrics_export_port or free_port()
    kwargs = dict(namespace=namespace, include_dashboard=cfg.ray.include_dashboard,
                  _metrics_export_port=port, log_to_driver=True, runtime_env={"env_vars": ACTOR_ENV})
    if cfg.ray.include_dashboard:
        kwargs["dashboard_port"] = cfg.ray.dashboard_port
    if cfg.ray.num_cpus is not None:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    ray.init(**kwargs)
    return True, port


def probe_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a HOST:PORT cluster address does not answer (ray.init would hang)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: leave them to ray.init
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"ray.address={address}: no Ray cluster answers there ({e.strerror or e}); "
                        f"start one with `ray start --head` or unset RAY_ADDRESS for a local cluster") from None


def tokenizer_corpus(problems: list[dict]) -> list[str]:
    """Texts the tiny model's BPE is trained on: every question, test and reference of the dataset."""
    texts = []
    for p in problems:
        texts.append(p.get("question", ""))
        texts.extend(p.get("tests", []))
        if p.get("reference"):
            texts.append(f"```python\n{p['reference']}\n```\n")
    texts.append("You are a helpful assistant. Please answer in one ```python code block.")
    return [t for t in texts if t]


def prepare_model(cfg, run_dir: Path, problems: list[dict]) -> Path:
    """The initial policy as an HF directory every actor loads: `model.path`, or a freshly built tiny model."""
    from actors.dllm import build_model, save_model

    if cfg.model.path:
        path = Path(cfg.model.path)
        if not (path / "config.json").is_file():
            raise UserError(f"model.path={cfg.model.path}: not a model directory (no config.json there)")
        return path
    tiny = cfg.model.tiny
    spec = {
        "config": {k: getattr(tiny, k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings")},
        "tokenizer": tiny.tokenizer_dir or {"train_texts": tokenizer_corpus(problems),
                                            "vocab_size": tiny.vocab_size},
        "seed": cfg.run.seed,
    }
    model, tokenizer = build_model(spec)
    out = run_dir / "init_model"
    save_model(model, tokenizer, out)
    return out


def actor_plan(cfg) -> list[dict]:
    """How many of each actor, with what resources: printed by `diffurl train --dry-run`."""
    lc, rc, sc = cfg.learner, cfg.rollout, cfg.sandbox
    return [
        {"role": "learner", "names": [f"learner-{r}" for r in range(lc.num_ranks)],
         "num_cpus": lc.num_cpus, "detail": f"DeepSpeed ZeRO-{lc.zero_stage}, {cfg.model.dtype}, "
                                            f"estimator={lc.estimator}, mu={lc.mu}"},
        {"role": "rollout", "names": [f"rollout-{i}" for i in range(rc.num_workers)],
         "num_cpus": rc.num_cpus, "detail": f"G={rc.group_size}, {rc.max_new_tokens} tokens in {rc.steps} "
                                            f"steps, alg={rc.alg}, T={rc.temperature}, "
                                            f"max_restarts={rc.max_restarts}"},
        {"role": "sandbox", "names": [f"sandbox-{i}" for i in range(sc.num_workers)],
         "num_cpus": 0, "detail": f"timeout {sc.test_timeout_s}s/test, {sc.memory_mb} MiB"},
    ]


def format_plan(cfg) -> str:
    lines = [f"actor plan ({cfg.run.mode} mode, {cfg.run.steps} steps, "
             f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} completions per step):"]
    total = 0.0
    for a in actor_plan(cfg):
        n = len(a["names"])
        total += n * a["num_cpus"]
        lines.append(f"  {a['role']:<8} x{n}  num_cpus={a['num_cpus']:<4} {a['names'][0]}..{a['names'][-1]}"
                     f"  {a['detail']}")
    lines.append(f"  placement: Ray's default scheduler, any node with free CPUs; {total:g} CPUs reserved in total")
    lines.append(f"  redis: {'embedded redis-server in the run directory' if not cfg.redis.url else 'external'}")
    return "\n".join(lines)

