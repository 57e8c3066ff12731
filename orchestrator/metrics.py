"""One metrics sink per run: `metrics.jsonl`, TensorBoard scalars, Ray metrics and a progress bar.

    sink = MetricsSink(run_dir, "demo", progress_steps=cfg.run.steps)
    sink.log(step, {"reward_mean": 0.4, "time_generate": 1.2, ...})
    sink.count("sandbox_jobs", 8)
    sink.close()

Ray metrics (when Ray is initialised in this process) appear in the Ray dashboard and on the Prometheus
endpoint as `ray_diffurl_<name>{run="<run name>"}`: a Gauge per logged metric, Counters for totals
(`ray_diffurl_steps_total`, and whatever `count` is given), and a Histogram of phase times
(`ray_diffurl_phase_seconds{phase="generate"}`) from the `time_*` metrics.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np

from orchestrator.rundir import RunDir

REQUIRED_STEP_METRICS = (
    "reward_mean", "reward_std", "pass_rate", "format_rate", "zero_var_frac", "completion_len",
    "kl", "clip_frac", "loss", "grad_norm", "lr", "local_arness", "global_arness", "staleness",
    "stream_depth", "sandbox_jobs_per_s", "sandbox_timeouts", "tokens_per_s", "decode_forwards", "tokens_per_forward",
    "time_generate", "time_reward", "time_score", "time_train", "time_sync", "time_checkpoint",
    "unjudgeable_problems",
)
COUNTERS = ("steps", "groups", "sandbox_jobs")  # the totals `MetricsSink.count` keeps
PHASE_SECONDS_BOUNDARIES = [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]
PROGRESS_FIELDS = ("reward_mean", "pass_rate")


def metric_name(name: str) -> str:
    """Prometheus-safe Ray metric name: `diffurl_` + the name with anything outside [A-Za-z0-9_] as `_`."""
    return "diffurl_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


class MetricsSink:
    def __init__(self, run_dir: str | Path, run_name: str, tensorboard: bool = True, ray_metrics: bool = True,
                 progress_steps: int | None = None):
        """`progress_steps`: show a terminal progress bar over that many steps (None: no bar)."""
        run = RunDir(Path(run_dir))
        run.path.mkdir(parents=True, exist_ok=True)
        self.run_name = run_name
        self.path = run.metrics
        self._jsonl = self.path.open("a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(run.tensorboard))
        self._ray_metrics = ray_metrics
        self._gauges: dict = {}
        self._counters: dict = {}
        self._phase_histogram = None
        self._bar = None
        if progress_steps is not None:
            from tqdm import tqdm
            self._bar = tqdm(total=progress_steps, desc=run_name, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record one step: a JSON line (non-finite values as null), TensorBoard scalars, Ray metrics."""
        values = {name: float(value) for name, value in metrics.items()}
        row = {"step": step, "time": time.time(),
               **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()
        if self._ray_ready():
            for name, value in values.items():
                self._gauge(name).set(value)
                if name.startswith("time_") and math.isfinite(value):
                    self._phase(name.removeprefix("time_"), value)
            self.count("steps")
        if self._bar is not None:
            self._bar.set_postfix({k: f"{values[k]:.3f}" for k in PROGRESS_FIELDS if k in values}, refresh=False)
            self._bar.update(1)

    def count(self, name: str, amount: float = 1) -> None:
        """Add to the Ray Counter `ray_diffurl_<name>_total` (a no-op without Ray)."""
        if amount > 0 and self._ray_ready():
            self._counter(name).inc(amount)

    def close(self) -> None:
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _ray_ready(self) -> bool:
        if not self._ray_metrics:
            return False
        import ray
        return ray.is_initialized()

    def _gauge(self, name: str):
        if name not in self._gauges:
            from ray.util.metrics import Gauge
            # Ray keeps the first metric registered under a name: a per-step value that is also a total
            # (sandbox_jobs) is exported as <name>_per_step next to the counter's <name>_total
            exported = f"{name}_per_step" if name in COUNTERS else name
            gauge = Gauge(metric_name(exported), description=f"diffurl per-step {name}", tag_keys=("run",))
            gauge.set_default_tags({"run": self.run_name})
            self._gauges[name] = gauge
        return self._gauges[name]

    def _counter(self, name: str):
        if name not in self._counters:
            from ray.util.metrics import Counter
            counter = Counter(metric_name(name), description=f"diffurl total {name}", tag_keys=("run",))
            counter.set_default_tags({"run": self.run_name})
            self._counters[name] = counter
        return self._counters[name]

    def _phase(self, phase: str, seconds: float) -> None:
        if self._phase_histogram is None:
            from ray.util.metrics import Histogram
            self._phase_histogram = Histogram(
                metric_name("phase_seconds"), description="diffurl time per phase of a step",
                boundaries=PHASE_SECONDS_BOUNDARIES, tag_keys=("run", "phase"))
            self._phase_histogram.set_default_tags({"run": self.run_name})
        self._phase_histogram.observe(seconds, tags={"phase": phase})


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of the run's metrics.jsonl (one dict per logged step)."""
    return read_jsonl(RunDir(Path(run_dir)).metrics)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of one of the run's own JSON-lines logs (metrics.jsonl, trained_groups.jsonl)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def step_metrics(batch: list, learner: dict, *, version: int) -> dict[str, float]:
    """One step's row from the B `GroupSummary`s trained on and the learner's statistics.

    Group-level phase times are the slowest group's (`time_generate`, `time_reward`); rates are per
    completion; staleness is the number of policy versions between a group's weights and the trained ones.
    `reward_on_canaries`: the fraction of canary completions whose pass rate beats the best honest one
    (any value above 0 is a reward hack; NaN, logged as null, in a step without canaries).
    `rollout_logprob_gap` (AR-GRPO only): the token mean of |learner log-prob - vLLM log-prob| of the
    trained completions, the learner's at the weights the groups were sampled with when staleness is 0;
    well above float noise it means the rollout engine holds other weights than it should.
    """
    rewards = np.array([r for s in batch for r in s.rewards], dtype=np.float64)
    canaries = [p > s.canary_bound + 1e-9 for s in batch if s.canary_bound is not None for p in s.pass_rates]
    jobs = sum(s.sandbox_jobs for s in batch)
    staleness = [version - 1 - s.version_start for s in batch]
    return {
        "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "pass_rate": float(np.mean([p for s in batch for p in s.pass_rates])),
        "format_rate": float(np.mean([f == 1.0 for s in batch for f in s.formats])),
        "zero_var_frac": learner["zero_var_frac"],
        "completion_len": sum(s.completion_tokens for s in batch) / max(1, rewards.size),
        "kl": learner["kl"], "clip_frac": learner["clip_fraction"], "loss": learner["loss"],
        "ratio_mean": learner["ratio_mean"], "grad_norm": learner["grad_norm"], "lr": learner["lr"],
        "local_arness": float(np.mean([s.local_arness for s in batch])),
        "global_arness": float(np.mean([s.global_arness for s in batch])),
        "staleness": float(np.mean(staleness)), "staleness_max": float(max(staleness)),
        "sandbox_jobs": float(jobs),
        "sandbox_jobs_per_s": jobs / max(sum(s.time_reward for s in batch), 1e-9),
        "sandbox_timeouts": float(sum(s.timeouts for s in batch)),
        "decode_forwards": float(np.mean([s.forwards for s in batch])),
        "tokens_per_forward": float(np.mean([s.tokens_per_forward for s in batch])),
        "tokens_per_s": sum(s.generated_tokens for s in batch) / max(sum(s.time_generate for s in batch), 1e-9),
        "time_generate": max(s.time_generate for s in batch), "time_reward": max(s.time_reward for s in batch),
        "time_score": learner["time_score"], "time_train": learner["time_train"],
        "canary_completions": float(len(canaries)),
        "reward_on_canaries": float(np.mean(canaries)) if canaries else float("nan"),
        "version": float(version),
        **({"rollout_logprob_gap": learner["rollout_logprob_gap"]} if "rollout_logprob_gap" in learner else {}),
    }
