"""The driver: one run of coupled-GRPO, sync or async, short and explicit.

    sync:   sample B prompts -> rollout workers decode + score + publish B groups
            -> learner reads B groups, mu updates -> weights to every rollout worker -> checkpoint -> ack
    async:  the same loop shifted: rollout workers keep generating while the learner trains; a group may
            start only when accepted + running <= (eta + version + 1) * B.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray

from orchestrator.config import config_to_yaml, save_config
from orchestrator.data import build_chat_prompt, load_prompts
from orchestrator.errors import UserError
from orchestrator.metrics import MetricsSink
from orchestrator.redis_server import EmbeddedRedis, connect, free_port
from orchestrator.run_setup import format_plan, init_ray, make_run_dir, prepare_model
from orchestrator.stream import TrajectoryStream
from orchestrator.weights import make_weight_sync


def derived_seed(*parts) -> int:
    key = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


class PromptSampler:
    """Epoch-wise shuffled prompt order as a pure function of (seed, epoch); records consumed ids."""

    def __init__(self, problems: list[dict], seed: int, shuffle: bool):
        self.problems, self.seed, self.shuffle = problems, seed, shuffle
        self.cursor = 0  # prompts drawn so far in total
        self.consumed: list[str] = []

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.problems)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng(derived_seed(self.seed, "epoch", epoch)).permutation(n)

    def next(self) -> dict:
        n = len(self.problems)
        epoch, offset = divmod(self.cursor, n)
        problem = self.problems[int(self._order(epoch)[offset])]
        self.cursor += 1
        self.consumed.append(problem["task_id"])
        return problem


@dataclass
class Group:
    """One prompt group in flight on a rollout worker."""
    index: int
    problem: dict
    worker: int
    ref: object = None

    @property
    def group_id(self) -> str:
        return f"g{self.index:08d}"


@dataclass
class RunState:
    step: int = 0
    version: int = 0
    groups_started: int = 0
    groups_trained: int = 0
    accepted: dict[str, dict] = field(default_factory=dict)  # group id -> summary, published, not trained on


class Driver:
    def __init__(self, cfg, run_dir: Path, model_dir: Path, redis_url: str):
        self.cfg, self.run_dir, self.model_dir = cfg, run_dir, model_dir
        self.run_id = run_dir.name
        self.redis_url = redis_url
        problems, skipped = load_prompts(cfg.data.train)
        if not problems:
            raise UserError(f"data.train={cfg.data.train}: no usable problem rows")
        self.skipped_rows = skipped
        for p in problems:
            p["messages"] = build_chat_prompt(p)
        self.sampler = PromptSampler(problems, cfg.run.seed, cfg.data.shuffle)
        self.open_stream = functools.partial(TrajectoryStream, redis_url, self.run_id,
                                             maxlen=cfg.redis.stream_maxlen)
        self.stream = self.open_stream()
        self.metrics = MetricsSink(run_dir, self.run_id, tensorboard=cfg.metrics.tensorboard,
                                   progress_steps=cfg.run.steps if cfg.metrics.progress_bar else None)
        self.weight_sync = make_weight_sync("object_store")
        self.state = RunState()
        self.actors: list = []

    # ----------------------------------------------------------------- actors
    def start_actors(self) -> None:
        from actors.learner import Learner
        from sandbox_workers import SandboxPool

        cfg = self.cfg
        self.pool = SandboxPool(num_workers=cfg.sandbox.num_workers, redis_url=self.redis_url,
                                pass_weight=cfg.sandbox.pass_weight, format_weight=cfg.sandbox.format_weight,
                                test_timeout_s=cfg.sandbox.test_timeout_s, memory_mb=cfg.sandbox.memory_mb)
        port = free_port()
        world = cfg.learner.num_ranks
        self.learners = [
            Learner.options(name=f"learner-{r}", num_cpus=cfg.learner.num_cpus).remote(
                cfg, str(self.model_dir), r, world, port, self.open_stream)
            for r in range(world)]
        self.rollouts = [self._new_rollout(i) for i in range(cfg.rollout.num_workers)]
        self.actors = self.learners + self.rollouts
        ray.get([w.info.remote() for w in self.rollouts])
        ray.get([l.checksum.remote() for l in self.learners])

    def _new_rollout(self, i: int):
        from actors.rollout import RolloutWorker

        cfg = self.cfg
        return RolloutWorker.options(name=f"rollout-{i}", num_cpus=cfg.rollout.num_cpus,
                                     max_restarts=cfg.rollout.max_restarts).remote(
            cfg, str(self.model_dir), self.pool, self.open_stream, self.run_id, f"rollout-{i}")

    def stop_actors(self) -> None:
        for a in self.actors:
            ray.kill(a)
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown()
        self.actors = []

    # ----------------------------------------------------------------- groups
    def _start_group(self, worker: int) -> Group:
        st = self.state
        g = Group(index=st.groups_started, problem=self.sampler.next(), worker=worker)
        st.groups_started += 1
        seed = derived_seed(self.cfg.run.seed, "rollout", g.index)
        g.ref = self.rollouts[worker].rollout_group.remote(g.problem, g.problem["task_id"], g.group_id, seed)
        return g

    # ----------------------------------------------------------------- one step
    def _sync_and_checkpoint(self, step: int, timings: dict) -> None:
        st = self.state
        st.version += 1
        timings["time_sync"] = self.weight_sync.push(self.learners, self.rollouts, st.version)
        t0 = time.perf_counter()
        if (step + 1) % self.cfg.run.checkpoint_every == 0 or step + 1 == self.cfg.run.steps:
            self.checkpoint(step)
        timings["time_checkpoint"] = time.perf_counter() - t0

    def checkpoint(self, step: int) -> Path:
        ckpt_root = self.run_dir / "checkpoints"
        tag = f"step{step + 1:06d}"
        client_state = {"step": step + 1, "version": self.state.version,
                        "consumed_prompt_ids": list(self.sampler.consumed),
                        "sampler_cursor": self.sampler.cursor, "groups_started": self.state.groups_started}
        covered = ray.get([l.save_checkpoint.remote(str(ckpt_root), tag, client_state)
                           for l in self.learners])[0]
        (ckpt_root / tag / "driver_state.json").write_text(json.dumps(client_state))
        (ckpt_root / "latest").write_text(tag)
        ray.get([l.ack.remote(covered) for l in self.learners[:1]])
        tags = sorted(p.name for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step"))
        for old in tags[:-self.cfg.run.keep_checkpoints]:
            shutil.rmtree(ckpt_root / old, ignore_errors=True)
        return ckpt_root / tag

    def _log(self, step: int, summaries: list[dict], stats: dict, timings: dict, wall: float) -> dict:
        rewards = np.array([r for s in summaries for r in s["rewards"]], dtype=np.float64)
        n_jobs = sum(s["sandbox_jobs"] for s in summaries)
        t_reward = sum(s["time_reward"] for s in summaries)
        t_gen = sum(s["time_generate"] for s in summaries)
        tokens = self.cfg.rollout.max_new_tokens * self.cfg.rollout.group_size * len(summaries)
        staleness = [self.state.version - 1 - s["version_start"] for s in summaries]
        row = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "pass_rate": float(np.mean([p for s in summaries for p in s["pass_rates"]])),
            "format_rate": float(np.mean([f == 1.0 for s in summaries for f in s["formats"]])),
            "zero_var_frac": stats["zero_var_frac"],
            "completion_len": sum(s["completion_tokens"] for s in summaries) / max(1, rewards.size),
            "kl": stats["kl"], "clip_frac": stats["clip_fraction"], "loss": stats["loss"],
            "ratio_mean": stats["ratio_mean"], "grad_norm": stats["grad_norm"], "lr": stats["lr"],
            "local_arness": float(np.mean([s["local_arness"] for s in summaries])),
            "global_arness": float(np.mean([s["global_arness"] for s in summaries])),
            "staleness": float(np.mean(staleness)), "staleness_max": float(max(staleness)),
            "stream_depth": float(self.stream.depth()),
            "sandbox_jobs_per_s": n_jobs / max(t_reward, 1e-9),
            "sandbox_timeouts": float(sum(s["timeouts"] for s in summaries)),
            "tokens_per_s": tokens / max(t_gen, 1e-9),
            "time_score": stats["time_score"], "time_train": stats["time_train"],
            "version": float(self.state.version), "step_wall_s": wall,
            **timings,
        }
        self.metrics.log(step + 1, row)
        self.metrics.count("groups", len(summaries))
        self.metrics.count("sandbox_jobs", n_jobs)
        return row

    def run(self) -> list[dict]:
        cfg, st = self.cfg, self.state
        B = cfg.rollout.prompts_per_step
        eta = cfg.run.eta if cfg.run.mode == "async" else 0
        rows: list[dict] = []
        in_flight: dict = {}  # ObjectRef -> Group
        idle = list(range(len(self.rollouts)))
        train_refs: list = []
        untrained = 0  # accepted groups not yet handed to the learner
        step_t0 = gen_t0 = train_t0 = time.perf_counter()
        timings: dict = {}
        while st.step < cfg.run.steps:
            # admission: a group may start when accepted + running <= (eta + version + 1) * B (sync: eta = 0)
            limit = (eta + st.version + 1) * B
            while idle and st.groups_trained + untrained + len(in_flight) < limit \
                    and st.groups_started < cfg.run.steps * B:
                g = self._start_group(idle.pop(0))
                in_flight[g.ref] = g
            if not train_refs and untrained >= B:
                untrained -= B
                st.groups_trained += B
                timings["time_rollout_wall"] = time.perf_counter() - gen_t0
                train_t0 = gen_t0 = time.perf_counter()
                train_refs = [l.train_step.remote(st.step) for l in self.learners]
            ready, _ = ray.wait(list(in_flight) + train_refs[:1], num_returns=1)
            if train_refs and ready[0] is train_refs[0]:
                stats = ray.get(train_refs)[0]
                train_refs = []
                timings["time_train_wall"] = time.perf_counter() - train_t0
                batch = [st.accepted.pop(g["group_id"]) for g in stats["groups"]]
                timings["time_generate"] = max(s["time_generate"] for s in batch)
                timings["time_reward"] = max(s["time_reward"] for s in batch)
                self._sync_and_checkpoint(st.step, timings)
                rows.append(self._log(st.step, batch, stats, timings, time.perf_counter() - step_t0))
                with open(self.run_dir / "trained_groups.jsonl", "a") as f:
                    f.write(json.dumps({"step": st.step + 1, "groups": stats["groups"]}) + "\n")
                st.step += 1
                step_t0, timings = time.perf_counter(), {}
                continue
            g = in_flight.pop(ready[0])
            summary = ray.get(ready[0])
            idle.append(g.worker)
            st.accepted[summary["group_id"]] = summary
            untrained += 1
        return rows


def train(cfg, *, dry_run: bool = False, out=print) -> Path | None:
    """`diffurl train`: set up a run directory, Redis, Ray and the actors, then run the loop."""
    if dry_run:
        out(format_plan(cfg))
        return None
    run_dir = make_run_dir(cfg)
    save_config(cfg, run_dir)
    out(f"run directory: {run_dir}\n--- resolved config ---\n{config_to_yaml(cfg)}-----------------------")
    redis = None
    ray_started = False
    driver = None
    try:
        if cfg.redis.url:
            connect(cfg.redis.url).ping()
            redis_url = cfg.redis.url
        else:
            redis = EmbeddedRedis(run_dir / "redis")
            redis.start()
            redis_url = redis.url
        problems, _ = load_prompts(cfg.data.train)
        model_dir = prepare_model(cfg, run_dir, problems)
        ray_started, metrics_port = init_ray(cfg, run_dir.name)
        if metrics_port:
            out(f"ray metrics: http://127.0.0.1:{metrics_port}/metrics")
        driver = Driver(cfg, run_dir, model_dir, redis_url)
        driver.start_actors()
        rows = driver.run()
        last = rows[-1]
        out(f"done: {len(rows)} steps, reward {last['reward_mean']:.3f}, pass rate {last['pass_rate']:.3f}; "
            f"run directory {run_dir}")
        if driver.skipped_rows:
            out(f"skipped {len(driver.skipped_rows)} bad dataset rows: " + "; ".join(driver.skipped_rows[:5]))
        return run_dir
    finally:
        if driver is not None:
            driver.stop_actors()
            driver.metrics.close()
        if ray_started:
            ray.shutdown()
        if redis is not None:
            redis.stop()
