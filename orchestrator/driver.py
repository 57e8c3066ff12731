"""The driver: one run of coupled-GRPO, sync or async, short and explicit.

    sync:   sample B prompts -> rollout workers decode + score + publish B groups
            -> learner reads B groups, mu updates -> weights to every rollout worker -> checkpoint -> ack
    async:  the same loop shifted: rollout workers keep generating while the learner trains; a group may
            start only when accepted + running <= (eta + version + 1) * B.

Group i always uses prompt i of the sampler and seed(i), so a group that is lost (its worker died) or
never trained on (the driver died) is re-issued as exactly the same group. Live scaling reads the desired
worker counts from Redis between groups.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from orchestrator.config import check_paths, config_to_yaml, load_config, save_config
from orchestrator.data import build_chat_prompt, load_prompts
from orchestrator.errors import RunFailed, UserError
from orchestrator.metrics import MetricsSink
from orchestrator.redis_server import EmbeddedRedis, connect, free_port
from orchestrator.run_setup import format_plan, init_ray, make_run_dir, prepare_model, probe_ray_address
from orchestrator.stream import RunState as RedisRunState
from orchestrator.stream import TrajectoryStream
from orchestrator.weights import make_weight_sync

MAX_GROUP_ATTEMPTS = 3  # a group whose rollout fails this often (not a worker death) stops the run


def derived_seed(*parts) -> int:
    key = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


class PromptSampler:
    """Prompt i of the run is a pure function of (seed, i): epoch-wise shuffled order, no cursor state."""

    def __init__(self, problems: list[dict], seed: int, shuffle: bool):
        self.problems, self.seed, self.shuffle = problems, seed, shuffle
        self._orders: dict[int, np.ndarray] = {}

    def problem_at(self, index: int) -> dict:
        epoch, offset = divmod(index, len(self.problems))
        if epoch not in self._orders:
            n = len(self.problems)
            self._orders[epoch] = (np.random.default_rng(derived_seed(self.seed, "epoch", epoch)).permutation(n)
                                   if self.shuffle else np.arange(n))
        return self.problems[int(self._orders[epoch][offset])]


def group_id(index: int) -> str:
    return f"g{index:08d}"


def group_index(gid: str) -> int:
    return int(gid[1:])


@dataclass
class Group:
    """One prompt group in flight on a rollout worker."""
    index: int
    worker: int
    attempt: int
    ref: object = None


@dataclass
class LoopState:
    step: int = 0
    version: int = 0
    next_index: int = 0                     # groups 0..next_index-1 have been issued at least once
    reissue: list[int] = field(default_factory=list)  # lost groups to run again, before new ones
    trained: set = field(default_factory=set)          # group ids trained on (as of `step`)
    accepted: dict = field(default_factory=dict)       # group id -> summary: published, not trained on
    attempts: dict = field(default_factory=dict)       # group index -> failed attempts so far


class Driver:
    def __init__(self, cfg, run_dir: Path, model_dir: Path, redis_url: str, resume: dict | None = None):
        """`resume`: the driver state of the checkpoint to continue from (None: a new run)."""
        self.cfg, self.run_dir, self.model_dir = cfg, run_dir, model_dir
        self.run_id = run_dir.name
        self.redis_url = redis_url
        problems, skipped = load_prompts(cfg.data.train)
        self.skipped_rows = skipped
        for p in problems:
            p["messages"] = build_chat_prompt(p)
        self.sampler = PromptSampler(problems, cfg.run.seed, cfg.data.shuffle)
        self.open_stream = functools.partial(TrajectoryStream, redis_url, self.run_id,
                                             maxlen=cfg.redis.stream_maxlen)
        self.stream = self.open_stream()
        self.run_state = RedisRunState(self.stream.client, self.run_id)
        self.weight_sync = make_weight_sync("object_store")
        self.weights = None  # the latest published weights handle (None: `model_dir` is current)
        self.state = LoopState()
        self.resume = resume
        if resume is not None:
            self._restore(resume)
        self.metrics = MetricsSink(run_dir, self.run_id, tensorboard=cfg.metrics.tensorboard,
                                   progress_steps=(cfg.run.steps - self.state.step)
                                   if cfg.metrics.progress_bar else None)
        self.learners: list = []
        self.rollouts: dict[int, object] = {}  # worker number -> actor handle
        self.retiring: set[int] = set()
        self.pool = None
        self._next_worker = 0
        self._desired_checked = 0.0

    # ----------------------------------------------------------------- actors
    def start_actors(self) -> None:
        from actors.learner import Learner
        from sandbox_workers import SandboxPool

        cfg = self.cfg
        self.pool = SandboxPool(num_workers=cfg.sandbox.num_workers, redis_url=self.redis_url,
                                pass_weight=cfg.sandbox.pass_weight, format_weight=cfg.sandbox.format_weight,
                                test_timeout_s=cfg.sandbox.test_timeout_s, memory_mb=cfg.sandbox.memory_mb,
                                require_format=True)
        port = free_port()
        world = cfg.learner.num_ranks
        resume_from = None
        if self.resume is not None:
            resume_from = (str(self.run_dir / "checkpoints"), self.resume["tag"])
        self.learners = [
            Learner.options(name=f"learner-{r}", num_cpus=cfg.learner.num_cpus, max_restarts=0).remote(
                cfg, str(self.model_dir), r, world, port, self.open_stream, resume_from)
            for r in range(world)]
        for _ in range(cfg.rollout.num_workers):
            self._add_rollout()
        self.run_state.set_desired_workers(cfg.rollout.num_workers)
        self.run_state.set_desired_workers(cfg.sandbox.num_workers, role="sandbox")
        ray.get([w.info.remote() for w in self.rollouts.values()])
        ray.get([l.checksum.remote() for l in self.learners])
        self.run_state.set_status("running")

    def _add_rollout(self) -> int:
        from actors.rollout import RolloutWorker

        cfg, i = self.cfg, self._next_worker
        self._next_worker += 1
        base_version = self.resume["version"] if self.resume else 0
        self.rollouts[i] = RolloutWorker.options(
            name=f"rollout-{i}", num_cpus=cfg.rollout.num_cpus, max_restarts=cfg.rollout.max_restarts,
            max_task_retries=0).remote(cfg, str(self.model_dir), self.pool, self.open_stream, self.run_id,
                                       f"rollout-{i}", base_version)
        if self.weights is not None:
            self.weight_sync.load([self.rollouts[i]], self.weights, self.state.version)
        return i

    def stop_actors(self) -> None:
        for a in [*self.learners, *self.rollouts.values()]:
            ray.kill(a, no_restart=True)
        if self.pool is not None:
            self.pool.shutdown()
        self.learners, self.rollouts = [], {}

    # ----------------------------------------------------------------- resume
    def _restore(self, saved: dict) -> None:
        """Continue from a checkpoint: groups published after it are replayed from the stream, groups
        issued after it and lost are issued again, and nothing trained on before it is trained on again."""
        st = self.state
        st.step, st.version, st.next_index = saved["step"], saved["version"], saved["next_index"]
        st.trained = set(saved["trained_group_ids"])
        from actors.rollout import summarize_record  # actors import torch: only when resuming

        for entry_id, record in self.stream.entries():
            gid = record["group_id"]
            if gid not in st.trained and gid not in st.accepted:
                st.accepted[gid] = summarize_record(entry_id, record)
        published = {group_index(g) for g in st.accepted}
        st.next_index = max([st.next_index, *(i + 1 for i in published)])
        st.reissue = [i for i in range(st.next_index)
                      if group_id(i) not in st.trained and i not in published]

    # ----------------------------------------------------------------- groups
    def _start_group(self, worker: int) -> Group:
        st = self.state
        if st.reissue:
            index = st.reissue.pop(0)
        else:
            index, st.next_index = st.next_index, st.next_index + 1
        problem = self.sampler.problem_at(index)
        g = Group(index=index, worker=worker, attempt=st.attempts.get(index, 0))
        g.ref = self.rollouts[worker].rollout_group.remote(
            problem, problem["task_id"], group_id(index), derived_seed(self.cfg.run.seed, "rollout", index),
            g.attempt, st.version)
        return g

    def _group_failed(self, g: Group, error: Exception) -> None:
        """A rollout did not come back: re-issue its group; a dead worker is replaced or brought up to date."""
        st = self.state
        st.attempts[g.index] = st.attempts.get(g.index, 0) + 1
        st.reissue.insert(0, g.index)
        if not isinstance(error, RayActorError):
            if st.attempts[g.index] >= MAX_GROUP_ATTEMPTS:
                raise RunFailed(f"group {group_id(g.index)} failed {MAX_GROUP_ATTEMPTS} times: {error}")
            return
        print(f"rollout-{g.worker} died during group {group_id(g.index)}; re-issuing the group", flush=True)
        worker = self.rollouts[g.worker]
        try:  # restarted by Ray (max_restarts) with its constructor arguments: bring its weights up to date
            info = ray.get(worker.info.remote(), timeout=120)
            if info["version"] != st.version and self.weights is not None:
                self.weight_sync.load([worker], self.weights, st.version)
        except (RayActorError, GetTimeoutError):
            del self.rollouts[g.worker]
            self.retiring.discard(g.worker)
            ray.kill(worker, no_restart=True)

    # ----------------------------------------------------------------- live scaling
    def _apply_scaling(self, idle: list[int]) -> None:
        now = time.monotonic()
        if now - self._desired_checked < 0.5:
            return
        self._desired_checked = now
        want = self.run_state.desired_workers() or self.cfg.rollout.num_workers
        active = [i for i in self.rollouts if i not in self.retiring]
        for _ in range(want - len(active)):
            idle.append(self._add_rollout())
        for i in sorted(active, reverse=True)[:max(0, len(active) - want)]:
            self.retiring.add(i)  # retired when idle: a running group finishes first
        for i in [i for i in idle if i in self.retiring]:
            idle.remove(i)
            self.retiring.discard(i)
            ray.kill(self.rollouts.pop(i), no_restart=True)
        want_sandbox = self.run_state.desired_workers(role="sandbox")
        if want_sandbox and want_sandbox != self.pool.num_workers:
            self.pool.resize(want_sandbox)

    # ----------------------------------------------------------------- one step
    def _finish_step(self, stats: dict, timings: dict, step_t0: float) -> dict:
        st = self.state
        batch = [st.accepted.pop(g["group_id"]) for g in stats["groups"]]
        st.trained.update(g["group_id"] for g in stats["groups"])
        timings["time_generate"] = max(s["time_generate"] for s in batch)
        timings["time_reward"] = max(s["time_reward"] for s in batch)
        st.version += 1
        t0 = time.perf_counter()
        self.weights = self.weight_sync.publish(self.learners, st.version)
        self.weight_sync.load(list(self.rollouts.values()), self.weights, st.version)
        timings["time_sync"] = time.perf_counter() - t0
        row = self._metrics_row(batch, stats, timings)
        t0 = time.perf_counter()
        if (st.step + 1) % self.cfg.run.checkpoint_every == 0 or st.step + 1 == self.cfg.run.steps:
            self.checkpoint(row, stats["groups"])
        row["time_checkpoint"] = time.perf_counter() - t0
        row["step_wall_s"] = time.perf_counter() - step_t0
        self._record_step(st.step + 1, row, stats["groups"])
        st.step += 1
        return row

    def _record_step(self, step: int, row: dict, groups: list[dict]) -> None:
        self.metrics.log(step, row)
        self.metrics.count("groups", len(groups))
        self.metrics.count("sandbox_jobs", int(row["sandbox_jobs"]))
        with open(self.run_dir / "trained_groups.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "groups": groups}) + "\n")
        self.run_state.heartbeat("driver")

    def checkpoint(self, row: dict, groups: list[dict]) -> Path:
        st = self.state
        ckpt_root = self.run_dir / "checkpoints"
        tag = f"step{st.step + 1:06d}"
        state = {"tag": tag, "step": st.step + 1, "version": st.version, "next_index": st.next_index,
                 "trained_group_ids": sorted(st.trained),
                 "consumed_prompt_ids": [self.sampler.problem_at(group_index(g))["task_id"]
                                         for g in sorted(st.trained)],
                 "metrics_row": row, "groups": groups}
        covered = ray.get([l.save_checkpoint.remote(str(ckpt_root), tag, {"driver": state})
                           for l in self.learners])[0]
        (ckpt_root / tag / "driver_state.json").write_text(json.dumps(state))
        (ckpt_root / "latest.tmp").write_text(tag)
        (ckpt_root / "latest.tmp").replace(ckpt_root / "latest")
        self.stream.ack(covered)
        tags = sorted(p.name for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step"))
        for old in tags[:-self.cfg.run.keep_checkpoints]:
            shutil.rmtree(ckpt_root / old, ignore_errors=True)
        return ckpt_root / tag

    def _metrics_row(self, batch: list[dict], stats: dict, timings: dict) -> dict:
        rewards = np.array([r for s in batch for r in s["rewards"]], dtype=np.float64)
        n_jobs = sum(s["sandbox_jobs"] for s in batch)
        t_reward = sum(s["time_reward"] for s in batch)
        t_gen = sum(s["time_generate"] for s in batch)
        tokens = self.cfg.rollout.max_new_tokens * self.cfg.rollout.group_size * len(batch)
        staleness = [self.state.version - 1 - s["version_start"] for s in batch]
        return {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "pass_rate": float(np.mean([p for s in batch for p in s["pass_rates"]])),
            "format_rate": float(np.mean([f == 1.0 for s in batch for f in s["formats"]])),
            "zero_var_frac": stats["zero_var_frac"],
            "completion_len": sum(s["completion_tokens"] for s in batch) / max(1, rewards.size),
            "kl": stats["kl"], "clip_frac": stats["clip_fraction"], "loss": stats["loss"],
            "ratio_mean": stats["ratio_mean"], "grad_norm": stats["grad_norm"], "lr": stats["lr"],
            "local_arness": float(np.mean([s["local_arness"] for s in batch])),
            "global_arness": float(np.mean([s["global_arness"] for s in batch])),
            "staleness": float(np.mean(staleness)), "staleness_max": float(max(staleness)),
            "stream_depth": float(self.stream.depth()),
            "sandbox_jobs": float(n_jobs), "sandbox_jobs_per_s": n_jobs / max(t_reward, 1e-9),
            "sandbox_timeouts": float(sum(s["timeouts"] for s in batch)),
            "tokens_per_s": tokens / max(t_gen, 1e-9),
            "time_score": stats["time_score"], "time_train": stats["time_train"],
            "rollout_workers": float(len(self.rollouts)), "sandbox_workers": float(self.pool.num_workers),
            "version": float(self.state.version),
            **timings,
        }

    # ----------------------------------------------------------------- the loop
    def run(self) -> list[dict]:
        cfg, st = self.cfg, self.state
        B = cfg.rollout.prompts_per_step
        eta = cfg.run.eta if cfg.run.mode == "async" else 0
        total_groups = cfg.run.steps * B
        rows: list[dict] = []
        in_flight: dict = {}  # ObjectRef -> Group
        idle = list(self.rollouts)
        train_refs: list = []
        step_t0 = train_t0 = time.perf_counter()
        timings: dict = {}
        while st.step < cfg.run.steps:
            self._apply_scaling(idle)
            # admission: a group may start when accepted + running <= (eta + version + 1) * B (sync: eta = 0)
            limit = (eta + st.version + 1) * B
            issued = len(st.trained) + len(st.accepted) + len(in_flight)
            while idle and issued < min(limit, total_groups) and (st.reissue or st.next_index < total_groups):
                g = self._start_group(idle.pop(0))
                in_flight[g.ref] = g
                issued += 1
            if not train_refs and len(st.accepted) >= B:
                # waiting for B scored groups since the previous step ended (async: often ~0)
                timings["time_rollout_wall"] = time.perf_counter() - step_t0
                train_t0 = time.perf_counter()
                train_refs = [l.train_step.remote(st.step) for l in self.learners]
            ready, _ = ray.wait(list(in_flight) + train_refs[:1], num_returns=1, timeout=1.0)
            if not ready:
                continue
            if train_refs and ready[0] is train_refs[0]:
                try:
                    stats = ray.get(train_refs)[0]
                except RayActorError as e:
                    raise RunFailed(f"a learner died during step {st.step + 1} ({type(e).__name__}); "
                                    f"resume with: diffurl train --resume {self.run_dir}") from None
                train_refs = []
                timings["time_train_wall"] = time.perf_counter() - train_t0
                rows.append(self._finish_step(stats, timings, step_t0))
                step_t0, timings = time.perf_counter(), {}
                continue
            g = in_flight.pop(ready[0])
            try:
                summary = ray.get(ready[0])
                if summary and "stale" in summary:  # restarted between groups: update it, run the group again
                    self.weight_sync.load([self.rollouts[g.worker]], self.weights, st.version)
                    st.reissue.insert(0, g.index)
                    idle.append(g.worker)
                    continue
                if not summary or len(summary.get("rewards", [])) != cfg.rollout.group_size:
                    raise RuntimeError(f"rollout-{g.worker} returned no group for {group_id(g.index)}")
            except (RayActorError, ActorUnavailableError, ActorDiedError, RayTaskError, RuntimeError) as e:
                self._group_failed(g, e)
                if g.worker in self.rollouts:
                    idle.append(g.worker)
                continue
            idle.append(g.worker)
            self.run_state.heartbeat(f"rollout-{g.worker}")  # a worker that delivers a group is alive
            if summary["group_id"] not in st.trained:
                st.accepted[summary["group_id"]] = summary
        return rows


# --------------------------------------------------------------------------- entry points
def train(cfg, *, dry_run: bool = False, out=print) -> Path | None:
    """`diffurl train CONFIG`: a new run directory, Redis, Ray and the actors, then the loop."""
    if dry_run:
        out(format_plan(cfg))
        return None
    if cfg.ray.address:
        probe_ray_address(cfg.ray.address)
    run_dir = make_run_dir(cfg)
    save_config(cfg, run_dir)
    out(f"run directory: {run_dir}\n--- resolved config ---\n{config_to_yaml(cfg)}-----------------------")
    return _run(cfg, run_dir, resume=None, out=out)


def resume(run_dir: str | Path, overrides: list[str] = (), *, out=print) -> Path:
    """`diffurl train --resume RUN_DIR`: continue from the run's latest checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--resume {run_dir}: not a run directory (no config.yaml there)")
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        raise UserError(f"--resume {run_dir}: the run has no checkpoint yet; start it again with diffurl train")
    tag = latest.read_text().strip()
    saved = json.loads((run_dir / "checkpoints" / tag / "driver_state.json").read_text())
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    check_paths(cfg)
    if cfg.ray.address:
        probe_ray_address(cfg.ray.address)
    save_config(cfg, run_dir)
    out(f"resuming {run_dir} from {tag} (step {saved['step']} of {cfg.run.steps})\n"
        f"--- resolved config ---\n{config_to_yaml(cfg)}-----------------------")
    _trim_logs(run_dir, saved)
    if saved["step"] >= cfg.run.steps:
        out(f"nothing to do: the run already has {saved['step']} steps (raise run.steps to go on)")
        return run_dir
    return _run(cfg, run_dir, resume=saved, out=out)


def _trim_logs(run_dir: Path, saved: dict) -> None:
    """Per-step logs hold each step exactly once: drop steps after the checkpoint (they will run again)
    and restore the checkpoint's own step if the driver died between checkpoint and log."""
    for name, row in (("metrics.jsonl", {"step": saved["step"], **saved["metrics_row"]}),
                      ("trained_groups.jsonl", {"step": saved["step"], "groups": saved["groups"]})):
        path = run_dir / name
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= saved["step"]]
        if not any(json.loads(line)["step"] == saved["step"] for line in kept):
            kept.append(json.dumps(row))
        path.write_text("".join(line + "\n" for line in kept))


def write_run_info(run_dir: Path, **fields) -> None:
    """RUN_DIR/run.json: how to reach a run (Redis, Ray, driver pid) and its status, for status/scale."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {"run_id": run_dir.name, "run_dir": str(run_dir),
                                                               "started": time.time()}
    info.update(fields, updated=time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(path)


def _run(cfg, run_dir: Path, *, resume: dict | None, out=print) -> Path:
    redis, ray_started, driver = None, False, None
    previous = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    write_run_info(run_dir, status="starting", driver_pid=os.getpid())
    try:
        if cfg.redis.url:
            connect(cfg.redis.url)
            redis_url = cfg.redis.url
        else:
            redis = _embedded_redis(run_dir, previous.get("redis_url"))
            redis.start()
            redis_url = redis.url
        write_run_info(run_dir, redis_url=redis_url, redis_pid=redis.pid if redis else None)
        if resume is not None:
            model_dir = run_dir / "checkpoints" / resume["tag"] / "policy"
        else:
            problems, _ = load_prompts(cfg.data.train)
            model_dir = prepare_model(cfg, run_dir, problems)
        ray_started, metrics_port = init_ray(cfg, run_dir.name)
        if metrics_port:
            out(f"ray metrics: http://127.0.0.1:{metrics_port}/metrics")
        write_run_info(run_dir, ray_address=cfg.ray.address, metrics_port=metrics_port)
        driver = Driver(cfg, run_dir, model_dir, redis_url, resume=resume)
        driver.start_actors()
        write_run_info(run_dir, status="running")
        rows = driver.run()
        driver.run_state.set_status("finished")
        write_run_info(run_dir, status="finished")
        if rows:
            last = rows[-1]
            out(f"done: step {driver.state.step}, reward {last['reward_mean']:.3f}, "
                f"pass rate {last['pass_rate']:.3f}; run directory {run_dir}")
        if driver.skipped_rows:
            out(f"skipped {len(driver.skipped_rows)} bad dataset rows: " + "; ".join(driver.skipped_rows[:5]))
        return run_dir
    except BaseException as e:
        status = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
        write_run_info(run_dir, status=status, error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        if driver is not None:
            driver.run_state.set_status(status)
        raise
    finally:
        if driver is not None:
            driver.stop_actors()
            driver.metrics.close()
        if ray_started:
            ray.shutdown()
        if redis is not None:
            redis.stop()


def _embedded_redis(run_dir: Path, previous_url: str | None):
    """The run's own redis-server; on resume the same password (and port, when free) as before."""
    if not previous_url:
        return EmbeddedRedis(run_dir / "redis")
    parts = urlsplit(previous_url)
    port = parts.port
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    except OSError:
        port = None
    return EmbeddedRedis(run_dir / "redis", port=port, password=parts.password)
