"""SandboxWorker Ray actors and the SandboxPool that spreads scoring jobs over them.

The pool object holds only settings and actor handles, so it pickles: rollout actors call pool.score from
their own processes. The pool is the one retry layer for sandbox failures (see SandboxPool.score).
Given a Redis URL and the run's heartbeat hash, worker i heartbeats as `sandbox-<i>` when it starts and
when it scores a batch (at most one write per worker every few seconds, never failing a score).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from sandbox_workers.isolation import SandboxUnavailable
from sandbox_workers.judge import compile_problem
from sandbox_workers.worker import Heartbeat, ScoreSettings, Scorer, unscorable_result

log = logging.getLogger(__name__)

RESTART_WAIT_S = 120.0  # how long a score call waits for a restarting worker before giving its jobs up


class SandboxWorker:
    """Ray actor around one Scorer (one sandbox slot). Jobs run one at a time; status() answers meanwhile."""

    heartbeat = None  # a worker without heartbeats (the default, and a worker assembled by hand in a test)

    def __init__(self, worker_id: str, settings: ScoreSettings, heartbeat: tuple[str, str] | None = None):
        """`heartbeat`: (Redis hash, id) to heartbeat under; needs settings.redis_url."""
        self.scorer = Scorer(worker_id, settings)
        self.lock = threading.Lock()
        self.heartbeat = Heartbeat(settings.redis_url, *heartbeat) if heartbeat and settings.redis_url else None
        self._beat()

    def ready(self) -> dict:
        return self.scorer.status()

    def score_batch(self, jobs: list[tuple[dict, str]]) -> list[dict]:
        """One result per job. A job the scorer raises on is that completion's failure alone (logged with its
        trace): the others of the batch keep their results."""
        self._beat()
        with self.lock:
            results = []
            for problem, completion in jobs:
                try:
                    results.append(self.scorer.score(problem, completion))
                except Exception as exc:  # noqa: BLE001 - one completion's data must not cost the batch
                    log.exception("%s: scoring %s raised", self.scorer.worker_id, problem.get("task_id"))
                    results.append(unscorable_result(problem, completion, self.scorer.settings,
                                                     _judge_error(exc), self.scorer.worker_id))
            return results

    def output_batch(self, jobs: list[dict]) -> list[dict]:
        """`Scorer.output` for each data job ({program, call, entry_point, max_bytes}), in order."""
        self._beat()
        with self.lock:
            return [self.scorer.output(j["program"], j["call"], j["entry_point"], j["max_bytes"]) for j in jobs]

    def status(self) -> dict:
        return self.scorer.status()

    def healthy(self) -> bool:
        with self.lock:
            return self.scorer.healthy()

    def close(self) -> None:
        with self.lock:
            self.scorer.close()
        if self.heartbeat is not None:
            self.heartbeat.close()

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()


class SandboxPool:
    """A set of named SandboxWorker actors (`<name_prefix>-<i>`); needs ray.is_initialized().

    `heartbeat_key`: the run's heartbeat hash in the Redis at `redis_url` (the orchestrator's
    `RunState.heartbeat_key`), where worker i heartbeats as `sandbox-<i>`; None: no heartbeats.
    """

    def __init__(self, num_workers: int = 2, redis_url: str | None = None, pass_weight: float = 2.0,
                 format_weight: float = 0.5, test_timeout_s: float = 5.0, memory_mb: int = 512,
                 max_concurrency: int | None = None, *, require_format: bool = True, num_cpus: float = 0,
                 name_prefix: str = "sandbox", batch_size: int = 4, recycle_every: int = 500,
                 heartbeat_key: str | None = None):
        if not ray.is_initialized():
            raise RuntimeError("SandboxPool needs a running Ray: call ray.init() first")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if heartbeat_key and not redis_url:
            raise ValueError(f"heartbeat_key={heartbeat_key!r} needs the redis_url of its Redis")
        self.settings = ScoreSettings(pass_weight=pass_weight, format_weight=format_weight,
                                      test_timeout_s=test_timeout_s, memory_mb=memory_mb,
                                      require_format=require_format, recycle_every=recycle_every,
                                      redis_url=redis_url)
        self.max_concurrency = max_concurrency
        self.num_cpus, self.name_prefix, self.batch_size = num_cpus, name_prefix, batch_size
        self.heartbeat_key = heartbeat_key
        self.workers: list = []
        self.owner = True  # this process starts and stops the workers; a pickled copy only uses them
        self.resize(num_workers)

    def __getstate__(self) -> dict:
        """A copy sent to another process (a rollout worker's constructor) carries no actor handles: as
        constructor arguments Ray would hold them in the object store (its ERROR line at every run, ray#53727),
        and a copy's handles would miss the workers added after it was made. The copy finds the workers by
        name (`<name_prefix>-<i>`) at each call instead, so it follows `resize` in the owner."""
        return {**self.__dict__, "workers": [], "owner": False}

    def _find_workers(self) -> None:
        """A copy: the pool's current workers, by name; SandboxUnavailable when there is none."""
        if self.owner:
            return
        workers = []
        while True:
            try:
                workers.append(ray.get_actor(f"{self.name_prefix}-{len(workers)}"))
            except ValueError:
                break
        if not workers:
            raise SandboxUnavailable(f"no sandbox worker named {self.name_prefix}-0 is running")
        self.workers = workers

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def resize(self, n: int) -> None:
        """Start or retire workers until there are n (retired ones are the highest-numbered)."""
        if n < 1:
            raise ValueError(f"a pool needs at least one worker, got {n}")
        if not self.owner:
            raise RuntimeError("a copy of a SandboxPool cannot start or stop its workers; its owner does")
        new = [self._start(i) for i in range(len(self.workers), n)]
        if new:
            try:
                ray.get([w.ready.remote() for w in new])
            except RayActorError as exc:
                for i, worker in enumerate(new, start=len(self.workers)):
                    self._stop(worker, i)
                raise SandboxUnavailable(f"sandbox workers could not start: {exc}") from None
            self.workers.extend(new)
        while len(self.workers) > n:
            self._stop(self.workers.pop(), len(self.workers))

    def shutdown(self) -> None:
        if not self.owner:
            raise RuntimeError("a copy of a SandboxPool cannot start or stop its workers; its owner does")
        while self.workers:
            self._stop(self.workers.pop(), len(self.workers))

    def statuses(self) -> list[dict]:
        self._find_workers()
        return ray.get([w.status.remote() for w in self.workers])

    def score(self, problems: list[dict], completions: list[str], progress=None) -> list[dict]:
        """One result per (problem, completion) pair, in order; progress(done, total) after each batch.

        A completion None stands for the problem's reference solution (`validate_problems`).

        Each completion is run at most twice. A run that ends in sandbox_error (the sandbox broke, or the
        worker actor died) is run once more, on another worker when the pool has more than one; nothing
        below retries a job (Ray does not retry tasks; a worker restarts a broken sandbox but does not rerun
        the job). A worker that Ray is restarting (its node was lost) is waited for, up to RESTART_WAIT_S, and
        the jobs it held run again once without counting as a run; they are reported retried, as Ray may
        answer for a worker killed mid-job either way, as died or as restarting. If the second run also
        ends in sandbox_error reported by the worker's sandbox (not a worker death), that worker runs the
        self-test's probe job: if its sandbox answers it correctly, the completion is what broke the sandbox
        twice and it is scored as failed (every test
        failed, the reward of its format alone), so that no completion can stop a run; if not, the result
        is returned as it is: status "sandbox_error", reward None, pass_rate None, retried True, error
        naming the failure; never a reward of 0. Callers should not score such a completion again: it has
        had its two runs. Retries go one completion per batch, so that a completion that breaks its worker
        cannot take others down with it.

        What a completion's data causes on the trusted side is that completion's failure, never an
        infrastructure error: a batch whose call raises is scored again one completion at a time, and a
        completion that still raises gets status "failed", every test failed, pass_rate 0.0, the reward of
        its format alone and an error naming the exception (`worker.unscorable_result`).
        """
        _validate(problems, completions)
        self._find_workers()
        results: list[dict | None] = [None] * len(problems)
        # (job index, attempt, worker to avoid, alone in its batch)
        queue = deque((i, 0, None, False) for i in range(len(problems)))
        in_flight: dict = {}
        waited: set[int] = set()  # jobs already run again after their worker restarted
        limit = self.max_concurrency or 2 * self.num_workers
        batch = max(1, min(self.batch_size, len(problems) // (2 * self.num_workers) or 1))
        load = [0] * self.num_workers
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                chunk = [queue.popleft()]
                while not chunk[0][3] and queue and len(chunk) < batch and not queue[0][3]:
                    chunk.append(queue.popleft())
                avoid = chunk[0][2]
                w = min((i for i in range(self.num_workers) if i != avoid or self.num_workers == 1),
                        key=lambda i: load[i])
                ref = self.workers[w].score_batch.remote([(problems[j[0]], completions[j[0]]) for j in chunk])
                in_flight[ref] = (w, chunk)
                load[w] += 1
            done, _ = ray.wait(list(in_flight), num_returns=1)
            w, chunk = in_flight.pop(done[0])
            load[w] -= 1
            from_worker = True  # the worker's own results (not a death or a restart seen here)
            try:
                replies = ray.get(done[0])
            except ActorUnavailableError as exc:  # restarting (e.g. its node was lost): the jobs did not finish
                if not waited.intersection(j[0] for j in chunk) and self._back(w):
                    waited.update(j[0] for j in chunk)  # once per job: a job cannot keep its worker restarting
                    queue.extendleft(reversed(chunk))  # run again, not counted as their run
                    continue
                replies = [_infra_error(problems[j[0]], f"worker {self.name_prefix}-{w} did not come back: {exc}")
                           for j in chunk]
                from_worker = False
            except RayActorError as exc:
                replies = [_infra_error(problems[j[0]], f"worker {self.name_prefix}-{w} died: {exc}") for j in chunk]
                from_worker = False
            except RayTaskError as exc:
                if len(chunk) > 1:
                    queue.extend((i, attempt, avoid, True) for i, attempt, avoid, _ in chunk)
                    continue
                i = chunk[0][0]
                log.error("scoring %s raised: %s", problems[i].get("task_id"), exc)
                replies = [unscorable_result(problems[i], completions[i], self.settings,
                                             _judge_error(exc.cause or exc), f"{self.name_prefix}-{w}")]
            for (i, attempt, _, _), reply in zip(chunk, replies):
                if reply["status"] == "sandbox_error" and attempt == 0:
                    queue.append((i, 1, w, True))
                    continue
                if reply["status"] == "sandbox_error" and from_worker and self._healthy(w):
                    reply = unscorable_result(problems[i], completions[i], self.settings,
                                              f"the completion broke the sandbox twice: {reply['error']}",
                                              f"{self.name_prefix}-{w}")
                reply["retried"] = attempt > 0 or i in waited  # its first run failed for infrastructure reasons
                results[i] = reply
            if progress is not None:
                progress(sum(r is not None for r in results), len(results))
        return results

    def outputs(self, jobs: list[dict], progress=None) -> list[dict]:
        """Data jobs (`SandboxWorker.output_batch`: dataset code that prints data, never a completion), one reply
        each, in order; progress(done, total) after each batch. A job's optional `worker` (an int) picks its
        worker (modulo the pool's size), so that a caller can run the same program twice on two different
        sandboxes; the others go round-robin. A job whose batch dies with its worker gets status sandbox_error
        (not retried: the caller drops what it cannot run)."""
        self._find_workers()
        queues = [deque() for _ in self.workers]
        for i, job in enumerate(jobs):
            queues[job.get("worker", i) % self.num_workers].append(i)
        results: list[dict | None] = [None] * len(jobs)
        in_flight: dict = {}
        done_count = 0
        while any(queues) or in_flight:
            for w, queue in enumerate(queues):
                while queue and sum(1 for v in in_flight.values() if v[0] == w) < 2:
                    chunk = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                    jobs_w = [{k: jobs[i][k] for k in ("program", "call", "entry_point", "max_bytes")} for i in chunk]
                    in_flight[self.workers[w].output_batch.remote(jobs_w)] = (w, chunk)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            w, chunk = in_flight.pop(ready[0])
            try:
                replies = ray.get(ready[0])
            except (ActorUnavailableError, RayActorError, RayTaskError) as exc:
                why = f"worker {self.name_prefix}-{w}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                replies = [{"status": "sandbox_error", "detail": why, "stdout": "", "stdout_full": False,
                            "stderr_tail": ""} for _ in chunk]
            for i, reply in zip(chunk, replies):
                results[i] = reply
            done_count += len(chunk)
            if progress is not None:
                progress(done_count, len(jobs))
        return results

    # --------------------------------------------------------------------------------------------

    def _healthy(self, w: int) -> bool:
        """Whether worker `w`'s sandbox runs the self-test's probe job correctly."""
        try:
            return bool(ray.get(self.workers[w].healthy.remote(), timeout=RESTART_WAIT_S))
        except (RayActorError, RayTaskError, GetTimeoutError):
            return False

    def _back(self, w: int) -> bool:
        """Wait for worker `w`, which Ray is restarting, to answer again."""
        try:
            ray.get(self.workers[w].ready.remote(), timeout=RESTART_WAIT_S)
            return True
        except (RayActorError, GetTimeoutError):
            return False

    def _start(self, i: int):
        name = f"{self.name_prefix}-{i}"
        actor_cls = ray.remote(SandboxWorker).options(name=name, num_cpus=self.num_cpus, max_restarts=3,
                                                      max_task_retries=0, max_concurrency=3)
        heartbeat = (self.heartbeat_key, f"sandbox-{i}") if self.heartbeat_key else None
        return actor_cls.remote(name, self.settings, heartbeat)

    def _stop(self, worker, i: int) -> None:
        try:
            ray.get(worker.close.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - a dead or hung actor is killed below either way
            pass
        ray.kill(worker, no_restart=True)
        name = f"{self.name_prefix}-{i}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                return
            time.sleep(0.05)


def _validate(problems: list[dict], completions: list[str]) -> None:
    """Fail here, with the task named, rather than inside a worker."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    seen = set()
    for problem, completion in zip(problems, completions):
        if completion is not None and not isinstance(completion, str):
            raise TypeError(f"completion for {problem.get('task_id')!r} must be a str, got {type(completion).__name__}")
        if id(problem) not in seen:
            seen.add(id(problem))
            try:
                compile_problem(problem)
            except ValueError as exc:
                raise ValueError(f"problem {problem.get('task_id')!r}: {exc}") from None


def validate_problems(problems: list[dict], *, num_workers: int = 2, test_timeout_s: float = 5.0,
                      memory_mb: int = 512, progress=None) -> dict[str, str]:
    """The unjudgeable problems among `problems`, task_id -> why: those whose reference solution does not pass
    every test through the same path a candidate takes (a callback or an object the tests pass to the entry
    point, an identity check, a module the sandbox lacks, a test that never calls the entry point and would
    pass any program). Problems without a reference are not checked. Needs ray.is_initialized().

    The references run on a pool of their own (`validate-sandbox-<i>`), shut down before this returns, so no
    slot that ran a problem's reference ever serves that problem's candidates."""
    _validate(problems, [None] * len(problems))  # a malformed row: a ValueError naming it
    checked = [p for p in problems if compile_problem(p).reference is not None]
    if not checked:
        return {}
    pool = SandboxPool(num_workers=max(1, min(num_workers, len(checked))), test_timeout_s=test_timeout_s,
                       memory_mb=memory_mb, require_format=False, name_prefix="validate-sandbox")
    try:
        results = pool.score(checked, [None] * len(checked), progress=progress)
    finally:
        pool.shutdown()
    reasons = {p["task_id"]: unjudgeable_reason(p, r) for p, r in zip(checked, results)}
    return {task_id: why for task_id, why in reasons.items() if why is not None}


def unjudgeable_reason(problem: dict, result: dict) -> str | None:
    """Why a problem cannot be judged, from its reference solution's result (None: it can)."""
    spec = compile_problem(problem)
    if result["status"] == "sandbox_error":
        return f"the sandbox failed on the reference solution: {result['error']}"
    for i, (case, status, detail, calls) in enumerate(zip(spec.cases, result["tests"], result["test_details"],
                                                           result["calls"])):
        where = f"test {i + 1} ({case.text[:60]!r})"
        if status != "passed":
            return f"the reference solution fails {where}: {detail or status}"
        if calls == 0:
            return f"{where} never calls {spec.entry_point}: it would pass any program"
    return None


def _judge_error(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"the judge could not score this completion: {type(exc).__name__}: {first}"


def _infra_error(problem: dict, message: str) -> dict:
    return {"task_id": problem.get("task_id"), "status": "sandbox_error", "tests": [], "test_details": [],
            "passed": 0, "total": 0, "pass_rate": None, "format": None, "reward": None, "mode": None,
            "worker": None, "wall_s": 0.0, "cpu_s": 0.0, "retried": False, "cached": False, "error": message}
