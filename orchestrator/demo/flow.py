"""`diffurl demo` (what `make demo` runs): a tiny dLLM learns the generated task family with coupled-GRPO.

    warm start (cached)  ->  eval before on the held-out split  ->  coupled-GRPO through the whole system
    (`orchestrator.run.train`: driver, rollout workers, sandbox workers, DeepSpeed learner, Redis stream)
    ->  eval after  ->  before/after table, reward curve PNG, wall time, and the final line
    `held-out pass@1 (T=0): BEFORE -> AFTER`.

`--config configs/ablation_d1.yaml` (or `ablation_decoupled.yaml`) runs the same budget with another estimator;
`--config configs/ar_grpo.yaml` runs the AR baseline: a causal Qwen2 warm-started with the same recipe, AR-GRPO
with vLLM rollouts, at the same rollout budget.
Everything the demo writes lands in the run directory: `demo_table.md`, `demo_results.json`,
`reward_curve.png`, next to the run's own `metrics.jsonl` and checkpoints.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from orchestrator.config import REPO_ROOT, check_paths, decoder_settings, load_config, policy_family
from orchestrator.demo.tasks import FAMILY_VERSION, write_splits
from orchestrator.demo.warmstart import WarmStartSettings, warm_start
from orchestrator.errors import UserError
from orchestrator.evaluate import (EvalOptions, EvalResult, evaluate, format_table, load_eval_problems,
                                   resolve_checkpoint, results_to_json)
from orchestrator.metrics import read_metrics
from orchestrator.rundir import RunDir

DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "diffurl"


@dataclass
class DemoSettings:
    config: str = str(DEMO_CONFIG)
    overrides: list[str] = field(default_factory=list)
    cache_root: str = str(DEFAULT_CACHE)
    task_seed: int = 0
    warm: WarmStartSettings = field(default_factory=WarmStartSettings)
    eval_samples: int = 1  # samples per held-out problem at the rollout temperature
    heldout_limit: int | None = None  # evaluate on the first N held-out problems only (tests)


@dataclass
class DemoResult:
    run_dir: Path
    before: list[EvalResult]
    after: list[EvalResult]
    wall_s: float

    @property
    def final_line(self) -> str:
        return (f"held-out pass@1 (T=0): {100 * self.before[0].pass_at[1]:.1f}% -> "
                f"{100 * self.after[0].pass_at[1]:.1f}%")


def run_demo(settings: DemoSettings, out=print) -> DemoResult:
    import ray

    from orchestrator.run import init_ray, train

    t0 = time.perf_counter()
    cache = Path(settings.cache_root)
    splits = _task_splits(cache, settings.task_seed, out)
    chosen = load_config(settings.config, list(settings.overrides))
    family = policy_family(chosen)  # model.tiny.family, or (AR-GRPO) a causal Qwen2 warm-started the same way
    if family != settings.warm.model.family:
        settings = replace(settings, warm=replace(settings.warm, model=replace(settings.warm.model, family=family)))
    if chosen.demo.warm_start_steps is not None and chosen.demo.warm_start_steps != settings.warm.steps:
        settings = replace(settings, warm=replace(settings.warm, steps=chosen.demo.warm_start_steps))
    if chosen.demo.warm_start_seed is not None and chosen.demo.warm_start_seed != settings.warm.seed:
        settings = replace(settings, warm=replace(settings.warm, seed=chosen.demo.warm_start_seed))
    import torch

    torch.set_num_threads(settings.warm.threads)  # the evals below decode here: the same threads on any machine
    model_dir = warm_start(settings.warm, cache, splits["train"], log=out)
    cfg = load_config(settings.config, [f"model.path={model_dir}", f"data.train={splits['rl']}",
                                        *settings.overrides])
    check_paths(cfg)
    if cfg.rollout.max_new_tokens != settings.warm.completion_tokens:
        out(f"note: rollout.max_new_tokens={cfg.rollout.max_new_tokens} differs from the warm start's "
            f"completion length {settings.warm.completion_tokens}")
    heldout = load_eval_problems(str(splits["heldout"]), settings.heldout_limit)
    ro = cfg.rollout
    # evals decode with the reference decoder (the paper's; LLaDA's generate.py) and the rollouts' other settings
    decode = (replace(decoder_settings(cfg), decoder="reference"),
              EvalOptions(max_prompt_tokens=cfg.data.max_prompt_tokens, seed=cfg.run.seed))
    temperatures = [0.0] + ([ro.temperature] if ro.temperature > 0 else [])
    started, _ = init_ray(cfg, "demo")
    try:
        out(f"--- eval before RL: {len(heldout)} held-out problems ---")
        before = _evaluate(cfg, model_dir, heldout, temperatures, settings.eval_samples, decode, out)
        out(f"--- {_method(cfg)} through the whole system ({cfg.run.steps} steps) ---")
        run_dir = train(cfg, out=out)
        out("--- eval after RL ---")
        after = _evaluate(cfg, resolve_checkpoint(run_dir), heldout, temperatures, settings.eval_samples, decode, out)
    finally:
        if started:
            ray.shutdown()
    result = DemoResult(run_dir=run_dir, before=before, after=after, wall_s=time.perf_counter() - t0)
    report(result, cfg, settings, out)
    return result


def _method(cfg) -> str:
    from actors.policy import policy_for

    name = policy_for(policy_family(cfg)).name
    if cfg.learner.objective == "ar_grpo":
        return f"AR-GRPO ({name}, {cfg.rollout.engine} rollouts)"
    return f"coupled-GRPO ({name}, estimator={cfg.learner.estimator}, {cfg.rollout.decoder} decoder)"


def _task_splits(cache: Path, seed: int, out) -> dict[str, Path]:
    tasks_dir = cache / f"tasks-v{FAMILY_VERSION}-seed{seed}"
    paths = {split: tasks_dir / f"{split}.jsonl" for split in ("train", "rl", "heldout")}
    if not all(p.is_file() for p in paths.values()):
        paths = write_splits(tasks_dir, seed)
    counts = ", ".join(f"{split} {path.read_text().count(chr(10))}" for split, path in paths.items())
    out(f"task family: {counts} problems in {tasks_dir}")
    return paths


def _evaluate(cfg, model_dir, problems, temperatures, samples, decode, out) -> list[EvalResult]:
    from sandbox_workers import SandboxPool

    pool = SandboxPool(num_workers=cfg.sandbox.num_workers, require_format=False, name_prefix="eval-sandbox",
                       test_timeout_s=cfg.sandbox.test_timeout_s, memory_mb=cfg.sandbox.memory_mb)
    try:
        settings, options = decode
        return evaluate(model_dir, problems, pool, temperatures=temperatures, samples=samples, settings=settings,
                        options=options, log=out)
    finally:
        pool.shutdown()


def report(result: DemoResult, cfg, settings: DemoSettings, out=print) -> None:
    """Write demo_table.md, demo_results.json and reward_curve.png to the run dir; print the table and summary."""
    run_dir = result.run_dir
    table = format_table({"before (warm start)": result.before, f"after ({cfg.run.steps} RL steps)": result.after})
    header = (f"# diffurl demo: {_method(cfg)}, {cfg.run.steps} steps of "
              f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} completions\n\n")
    RunDir(run_dir).demo_table.write_text(header + table + "\n")
    RunDir(run_dir).demo_results.write_text(json.dumps({
        "estimator": cfg.learner.estimator, "objective": cfg.learner.objective, "engine": cfg.rollout.engine,
        "steps": cfg.run.steps, "wall_s": result.wall_s,
        "before": results_to_json(result.before), "after": results_to_json(result.after),
        "warm_start": asdict(settings.warm), "heldout_limit": settings.heldout_limit}, indent=2))
    png = plot_reward_curve(run_dir)
    out(f"\n{header}{table}\n")
    out(f"reward curve: {png}")
    out(f"total wall time: {result.wall_s / 60:.1f} min ({result.wall_s:.0f} s)")
    out(result.final_line)


def plot_reward_curve(run_dir: Path) -> Path:
    """reward_mean and pass_rate per step from metrics.jsonl -> run_dir/reward_curve.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for key, label in (("reward_mean", "reward (mean of group)"), ("pass_rate", "test pass rate")):
        values = [r[key] for r in rows]
        ax.plot(steps, values, alpha=0.35)
        ax.plot(steps, _running_mean(values, max(1, len(values) // 10)), label=f"{label}, running mean")
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward in [0, 2.5] / pass rate in [0, 1]")
    ax.set_title(f"{run_dir.name}: training reward")
    ax.grid(alpha=0.3)
    ax.legend()
    path = RunDir(run_dir).reward_curve
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def demo_command(config: str | None, overrides: list[str], cache_dir: str | None, eval_samples: int | None) -> int:
    """`diffurl demo` with the values of its flags; None takes the DemoSettings default."""
    given = {"config": config, "cache_root": cache_dir, "eval_samples": eval_samples}
    settings = DemoSettings(overrides=list(overrides), **{k: v for k, v in given.items() if v is not None})
    if settings.eval_samples < 1:
        raise UserError(f"--eval-samples {settings.eval_samples}: must be >= 1")
    run_demo(settings)
    return 0
