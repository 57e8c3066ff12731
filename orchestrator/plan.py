"""The actor plan of a run: how many of each actor, with what resources and environment
(`diffurl train --dry-run` prints it)."""
from __future__ import annotations

# quiet, deterministic actors: no per-load progress bars, no tokenizer thread pools, no accelerator probing
ACTOR_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}


def actor_plan(cfg) -> list[dict]:
    """How many of each actor, with what resources: printed by `diffurl train --dry-run`."""
    lc, rc, sc = cfg.learner, cfg.rollout, cfg.sandbox
    return [
        {"role": "learner", "names": [f"learner-{r}" for r in range(lc.num_ranks)],
         "num_cpus": lc.num_cpus, "detail": f"DeepSpeed ZeRO-{lc.zero_stage}, {cfg.model.dtype}, "
                                            f"estimator={lc.estimator}, mu={lc.mu}"},
        {"role": "rollout", "names": [f"rollout-{i}" for i in range(rc.num_workers)],
         "num_cpus": rc.num_cpus, "detail": f"G={rc.group_size}, {rc.max_new_tokens} tokens, {_decoder(rc)}, "
                                            f"alg={rc.alg}, T={rc.temperature}, max_restarts={rc.max_restarts}"},
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


def _decoder(rc) -> str:
    if rc.decoder == "reference":
        return f"reference decoder in {rc.steps} steps"
    rule = f"factor {rc.factor:g}" if rc.factor is not None else f"threshold {rc.threshold:g}"
    block = f"blocks of {rc.block_length}" if rc.block_length else "one block"
    return f"fast decoder ({rule}, {block}, cache {rc.cache})"
