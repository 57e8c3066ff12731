"""The driver: the training loop of one run of coupled-GRPO, sync or async.

    sync:   issue B prompt groups -> rollout workers decode, score, publish -> learner trains on the B groups
            -> weights to every rollout worker -> checkpoint (acks the stream) -> next step
    async:  the same loop shifted: rollout workers keep generating while the learner trains; a group may
            start only when trained + accepted + running <= (eta + version + 1) * B (sync: eta = 0).

Lost groups are issued again (`bookkeeping`), dead rollout workers are restarted by Ray and brought up to
date (`RolloutGroup.recover`), and live scaling reads the desired worker counts from Redis between groups.
The run's lifecycle (Redis, Ray, run.json) is in `run.py`, checkpoints in `checkpoint.py`.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import time
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.dllm.seeding import derived_seed
from actors.trajectory import RolloutOutcome, RolloutStatus
from orchestrator import checkpoint
from orchestrator.bookkeeping import Group, LoopState, PromptSampler, group_id
from orchestrator.data import load_prompts
from orchestrator.placement import check_capacity, resolve_devices
from orchestrator.errors import RunFailed, UserError, one_line
from orchestrator.metrics import MetricsSink, step_metrics
from orchestrator.rundir import RunDir
from actors.stream import TrajectoryStream
from orchestrator.stream import RunState

MAX_GROUP_ATTEMPTS = 3  # a group whose rollout fails this often (not a worker death) stops the run
SCALE_CHECK_S = 0.5     # how often the desired worker counts are read from Redis
PLACE_TIMEOUT_S = 180.0  # a rollout worker added by scaling that has not started by then is given up


def _free_resources() -> str:
    free = ray.available_resources()
    shown = [k for k in sorted(free) if not k.startswith(("node:", "memory", "object_store_memory"))
             and "_group_" not in k]  # placement groups' own resources
    return ", ".join(f"{k} {free[k]:g}" for k in shown)


class Driver:
    def __init__(self, cfg, run: RunDir, model_dir: Path, redis_url: str, resume: dict | None = None):
        """`resume`: the driver state of the checkpoint to continue from (None: a new run)."""
        from actors.prompts import build_chat_prompt

        self.cfg, self.rundir, self.model_dir, self.redis_url, self.resume = cfg, run, model_dir, redis_url, resume
        problems, self.skipped_rows = load_prompts(cfg.data.train, cfg.data.format)
        run.write_info(skipped_rows=self.skipped_rows)  # every bad row and why, whatever becomes of the run
        if self.skipped_rows:
            print(f"skipped {len(self.skipped_rows)} bad rows of {cfg.data.train} (all in {run.run_info}): "
                  + "; ".join(self.skipped_rows[:3]), flush=True)
        problems = self.judgeable(problems)
        for p in problems:
            p["messages"] = build_chat_prompt(p)  # a canary keeps its problem's prompt
        self.sampler = PromptSampler(problems, cfg.run.seed, cfg.data.shuffle, cfg.data.canary_fraction)
        self.open_stream = functools.partial(TrajectoryStream, redis_url, run.run_id, maxlen=cfg.redis.stream_maxlen)
        self.stream = self.open_stream()
        self.run_state = RunState(self.stream.client, run.run_id)
        self.state = LoopState() if resume is None else checkpoint.restore(resume, self.stream)
        self.metrics = MetricsSink(run.path, run.run_id, tensorboard=cfg.metrics.tensorboard,
                                   progress_steps=(cfg.run.steps - self.state.step) if cfg.metrics.progress_bar else None)
        self.pool = self.learners = self.rollouts = self.sync = None
        self.in_flight: dict[ray.ObjectRef, list[Group]] = {}  # one rollout call -> its groups
        self.idle: list[int] = []  # rollout workers with no group
        self._scale_checked = 0.0

    def judgeable(self, problems: list[dict]) -> list[dict]:
        """The training problems a reward can be computed for: checked against their references when the run
        starts (`orchestrator.judgeable`) and recorded in the run directory, so that a resume leaves out the
        same ones (and the prompt sampler sees the same list) without checking again."""
        from orchestrator.judgeable import keep_judgeable, summary

        path = self.rundir.unjudgeable
        if self.resume is not None and path.is_file():
            self.unjudgeable = json.loads(path.read_text())
            print(summary(len(problems), self.unjudgeable, 0, "training problems"), flush=True)
            return [p for p in problems if p["task_id"] not in self.unjudgeable]
        sb = self.cfg.sandbox
        kept, self.unjudgeable = keep_judgeable(problems, workers=sb.num_workers, timeout_s=sb.test_timeout_s,
                                                memory_mb=sb.memory_mb, what="training problems",
                                                out=lambda line: print(line, flush=True))
        path.write_text(json.dumps(self.unjudgeable, indent=1))
        return kept

    # ----------------------------------------------------------------- the loops
    def run(self) -> list[dict]:
        return self.run_async() if self.cfg.run.mode == "async" else self.run_sync()

    def run_sync(self) -> list[dict]:
        B, rows = self.cfg.rollout.prompts_per_step, []
        while self.state.step < self.cfg.run.steps:
            step_t0 = time.perf_counter()
            while len(self.state.accepted) < B:
                self.issue_groups(limit=(self.state.version + 1) * B)
                self.wait(train=None)
            timings = {"time_rollout_wall": time.perf_counter() - step_t0}
            stats = self.train_result(self.learners.async_train_step(self.state.step))
            rows.append(self.finish_step(stats, timings, step_t0))
        return rows

    def run_async(self) -> list[dict]:
        B, eta, rows = self.cfg.rollout.prompts_per_step, self.cfg.run.eta, []
        train, timings, step_t0 = None, {}, time.perf_counter()
        while self.state.step < self.cfg.run.steps:
            self.issue_groups(limit=(eta + self.state.version + 1) * B)
            if train is None and len(self.state.accepted) >= B:
                timings = {"time_rollout_wall": time.perf_counter() - step_t0}  # often ~0: groups were ready
                train = self.learners.async_train_step(self.state.step)
            if self.wait(train):
                rows.append(self.finish_step(self.train_result(train), timings, step_t0))
                train, step_t0 = None, time.perf_counter()
        return rows

    # ----------------------------------------------------------------- groups
    def issue_groups(self, limit: int) -> None:
        """Start groups while trained + accepted + running < limit (and the run needs more), spread evenly over
        the idle workers; each worker decodes its share in one batched call."""
        from actors.rollout import GroupJob

        st, total = self.state, self.cfg.rollout.prompts_per_step * self.cfg.run.steps
        running = sum(len(groups) for groups in self.in_flight.values())
        room = min(limit, total) - (len(st.trained) + len(st.accepted) + running)
        indices = []
        while self.idle and len(indices) < room and (st.reissue or st.next_index < total):
            indices.append(st.take_index())
        workers, self.idle = self.idle[:len(indices)], self.idle[len(indices):]
        for k, worker in enumerate(workers):
            groups = [Group(index=i, worker=worker, attempt=st.attempts.get(i, 0)) for i in indices[k::len(workers)]]
            jobs = [GroupJob(self.sampler.problem_at(g.index), group_id(g.index),
                             derived_seed(self.cfg.run.seed, "rollout", g.index), g.attempt) for g in groups]
            self.in_flight[self.rollouts.rollout(worker, jobs)] = groups

    def wait(self, train: list | None) -> bool:
        """Wait up to 1 s for a rollout call or the running train step; True when the train step is done."""
        self.apply_scaling()
        ready, _ = ray.wait(list(self.in_flight) + (train or [])[:1], num_returns=1, timeout=1.0)
        if not ready:
            return False
        if train and ready[0] is train[0]:
            return True
        groups = self.in_flight.pop(ready[0])
        worker = groups[0].worker
        try:
            outcomes: list[RolloutOutcome] = ray.get(ready[0])
        except RayActorError:
            self.worker_died(worker, groups)
            return False
        except RayTaskError as e:  # the rollout raised: a bug or a broken environment, not the candidate
            self.idle.append(worker)
            for g in groups:
                self.retry_or_fail(g, f"rollout-{worker} raised {e}")
            return False
        self.idle.append(worker)
        for g, outcome in zip(groups, outcomes):
            match outcome.status:
                case RolloutStatus.PUBLISHED:
                    self.run_state.heartbeat(f"rollout-{worker}")  # a worker that delivers a group is alive
                    self.state.accept(outcome.summary)
                case RolloutStatus.STALE:  # restarted between calls: issue the group again
                    self.state.reissue.insert(0, g.index)
                case RolloutStatus.SANDBOX_ERROR:
                    self.retry_or_fail(g, outcome.error)
        if any(o.status is RolloutStatus.STALE for o in outcomes):
            print(f"rollout-{worker} was restarted by Ray (behind version {self.state.version}); "
                  f"re-issuing {', '.join(group_id(g.index) for g in groups)}", flush=True)
            if not self.rollouts.update(worker):
                self.idle.remove(worker)  # it gets the newest weights at the next push
        return False

    def retry_or_fail(self, g: Group, error: str) -> None:
        if self.state.lost(g.index) >= MAX_GROUP_ATTEMPTS:
            raise RunFailed(f"group {group_id(g.index)} failed {MAX_GROUP_ATTEMPTS} times: {error.splitlines()[0]}")

    def worker_died(self, worker: int, groups: list[Group]) -> None:
        names = ", ".join(group_id(g.index) for g in groups)
        print(f"rollout-{worker} died during {names}; re-issuing them", flush=True)
        for g in groups:
            self.state.lost(g.index)
        if self.rollouts.recover(worker):
            self.idle.append(worker)

    def apply_scaling(self) -> None:
        if time.monotonic() - self._scale_checked < SCALE_CHECK_S:
            return
        self._scale_checked = time.monotonic()
        want = self.run_state.desired_workers() or self.cfg.rollout.num_workers
        active = self.rollouts.active()
        if want > active and active + self.rollouts.fits() < want:  # never ask Ray for what it cannot place
            want = self._cap_rollouts(want, active + self.rollouts.fits())
        self.idle = self.rollouts.scale(want, self.idle, place_timeout_s=PLACE_TIMEOUT_S)
        if self.rollouts.active() < want:  # a new worker was given up: what runs is what is desired
            got = self.rollouts.active()
            self.scale_refused(f"{want} rollout workers asked, {want - got} did not start within "
                               f"{PLACE_TIMEOUT_S:.0f} s; running {got}", got)
        want_sandbox = self.run_state.desired_workers(role="sandbox")
        if want_sandbox and want_sandbox != self.pool.num_workers:
            self.pool.resize(want_sandbox)

    # ----------------------------------------------------------------- one step
    def train_result(self, train: list) -> dict:
        return self.on_learners(f"during step {self.state.step + 1}", lambda: ray.get(train)[0])

    def on_learners(self, when: str, work):
        """`work()`, with a learner's death or failure (its node lost, or the surviving rank's collective
        after another rank's node was lost) turned into RunFailed with the resume command."""
        try:
            return work()
        except RayActorError as e:
            what = f"died ({type(e).__name__})"
        except RayTaskError as e:
            what = f"failed ({one_line(e)})"
        raise RunFailed(f"a learner {what} {when}; resume with: diffurl train --resume {self.rundir.path}") from None

    def finish_step(self, stats: dict, timings: dict, step_t0: float) -> dict:
        """After a train step: new weights to every rollout worker, metrics, checkpoint when due.
        `timings` holds the step's `time_rollout_wall` (the wait for its B groups)."""
        st, cfg = self.state, self.cfg
        timings = {**timings, "time_train_wall": time.perf_counter() - step_t0 - timings["time_rollout_wall"]}
        batch = st.train_on([g["group_id"] for g in stats["groups"]])
        st.step, st.version = st.step + 1, st.version + 1
        self.chaos_kill("trained")
        t0 = time.perf_counter()
        self.on_learners(f"in the weight sync after step {st.step}", lambda: self.sync.push(st.version))
        self.idle += self.rollouts.joined()
        row = {**step_metrics(batch, stats, version=st.version), **timings, "time_sync": time.perf_counter() - t0,
               "stream_depth": float(self.stream.depth()), "rollout_workers": float(len(self.rollouts)),
               "sandbox_workers": float(self.pool.num_workers), "unjudgeable_problems": float(len(self.unjudgeable))}
        t0 = time.perf_counter()
        if st.step % cfg.run.checkpoint_every == 0 or st.step == cfg.run.steps:
            self.on_learners(f"saving the checkpoint of step {st.step}", lambda: checkpoint.save(
                self.rundir, self.learners, self.stream, st, self.sampler, row, stats["groups"],
                cfg.run.keep_checkpoints))
            self.chaos_kill("checkpointed")
        row.update(time_checkpoint=time.perf_counter() - t0, step_wall_s=time.perf_counter() - step_t0)
        self.metrics.log(st.step, row)
        self.metrics.count("groups", len(batch))
        self.metrics.count("sandbox_jobs", int(row["sandbox_jobs"]))
        checkpoint.record_step(self.rundir, st.step, stats["groups"])
        self.run_state.heartbeat("driver")
        return row

    def chaos_kill(self, point: str) -> None:
        """Fault injection for the resume tests: die like `kill -9` at a chosen point of a step (not on resume)."""
        chaos = self.cfg.chaos
        if self.resume is None and chaos.driver_kill_at_step == self.state.step and chaos.driver_kill_point == point:
            os.kill(os.getpid(), signal.SIGKILL)

    # ----------------------------------------------------------------- actors
    def start_actors(self) -> None:
        from actors.groups import LearnerGroup, PlacementError, RolloutGroup
        from actors.weight_sync import weight_sync
        from sandbox_workers import SandboxPool

        cfg, run = self.cfg, self.rundir
        cluster = {**ray.cluster_resources(), "nodes": len([n for n in ray.nodes() if n["Alive"]])}
        devices = resolve_devices(cfg, cluster)
        check_capacity(cfg, devices, cluster)
        counts = self.starting_counts()
        self.pool = SandboxPool(num_workers=counts["sandbox"], redis_url=self.redis_url,
                                pass_weight=cfg.sandbox.pass_weight, format_weight=cfg.sandbox.format_weight,
                                test_timeout_s=cfg.sandbox.test_timeout_s, memory_mb=cfg.sandbox.memory_mb,
                                require_format=True, heartbeat_key=self.run_state.heartbeat_key)
        resume_from = None
        if self.resume is not None:
            ckpt = run.checkpoint(self.resume["tag"])
            resume_from = (str(run.checkpoints), ckpt.tag, str(ckpt.reference_model))
        try:
            self.learners = LearnerGroup(cfg, str(self.model_dir), self.open_stream, resume_from,
                                         device=devices.learner, gpus_per_rank=devices.learner_gpus)
        except PlacementError as e:
            raise UserError(f"learner.placement={cfg.learner.placement}: {e}") from None
        self.rollouts = RolloutGroup(cfg, str(self.model_dir), self.pool, self.open_stream, run.run_id,
                                     version=self.state.version, device=devices.rollout,
                                     gpus_per_worker=devices.rollout_gpus)
        self.sync = weight_sync(cfg, self.learners, self.rollouts)
        fit = max(self.rollouts.fits(), cfg.rollout.num_workers)  # the config's count passed check_capacity
        if counts["rollout"] > fit:  # a count asked before the start, past what the cluster can place
            counts["rollout"] = self._cap_rollouts(counts["rollout"], fit)
        self.idle = [self.rollouts.add() for _ in range(counts["rollout"])]
        for role, n in counts.items():
            self.run_state.set_desired_workers(n, role=role)
        workers = self.rollouts.wait_ready()
        ranks = self.learners.wait_ready()
        print(f"placement: learner ranks on nodes {[r['node_id'][:8] for r in ranks]} ({devices.learner}, "
              f"master {self.learners.master}), rollout workers on nodes {[w['node_id'][:8] for w in workers]} "
              f"({devices.rollout}), weight sync {cfg.weights.sync}", flush=True)
        self.run_state.set_status("running")

    def scale_refused(self, note: str, running: int) -> None:
        """One line, the note in the run state for `diffurl status`, and the desired count set to what runs, so
        the request is not tried again at every check."""
        print(f"scale: {note}", flush=True)
        self.run_state.set_scale_note(note)
        self.run_state.set_desired_workers(max(1, running))

    def _rollout_needs(self) -> str:
        ro = self.cfg.rollout
        needs = {"CPU": ro.num_cpus, "GPU": self.rollouts.gpus, **dict(ro.resources)}
        return ", ".join(f"{k} {v:g}" for k, v in needs.items() if v)

    def starting_counts(self) -> dict[str, int]:
        """The worker counts to start with: a count `diffurl scale` asked for before the actors start (while
        the run was starting, or before this resume: the run's Redis keeps it) wins over the config's."""
        configured = {"rollout": self.cfg.rollout.num_workers, "sandbox": self.cfg.sandbox.num_workers}
        counts = {}
        for role, n in configured.items():
            asked = self.run_state.desired_workers(role)
            counts[role] = asked or n
            if asked and asked != n:
                print(f"{role} workers: {asked}, as diffurl scale asked (the config says {n})", flush=True)
        return counts

    def _cap_rollouts(self, want: int, fit: int) -> int:
        """A rollout count past what the cluster can place: said in one line (and in the scaling note), capped."""
        self.scale_refused(f"{want} rollout workers asked, {fit} fit (the cluster's free resources: "
                           f"{_free_resources()}; each worker needs {self._rollout_needs()}); running {fit}", fit)
        return fit

    def stop_actors(self) -> None:
        for group in (self.learners, self.rollouts):
            if group is not None:
                group.kill()
        if self.pool is not None:
            self.pool.shutdown()
        self.metrics.close()
