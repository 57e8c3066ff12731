"""One scoring slot: compiles problems, runs programs in its warm sandbox, judges outside, caches.

`Scorer` is plain Python (testable without Ray); pool.py wraps it in the `SandboxWorker` Ray actor, which
also keeps a `Heartbeat` in the run's Redis for `diffurl status`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import redis
from redis.exceptions import RedisError

from sandbox_workers.executor import Layers, SandboxFault, WarmSandbox, self_test
from sandbox_workers.isolation import Limits, SandboxUnavailable, SelfTest
from sandbox_workers.judge import (MAX_COMPLETION_CHARS, JudgeSpec, Program, build_program, compile_problem,
                                   compute_reward, format_score)

log = logging.getLogger(__name__)
CACHEABLE = {"passed", "failed", "runtime_error"}
_SELF_TEST: SelfTest | None = None
_SHUFFLE = random.SystemRandom()


@dataclass(frozen=True)
class ScoreSettings:
    pass_weight: float = 2.0
    format_weight: float = 0.5
    test_timeout_s: float = 5.0
    memory_mb: int = 512
    require_format: bool = True
    recycle_every: int = 500
    redis_url: str | None = None
    cache_ttl_s: int = 7 * 24 * 3600

    def limits(self) -> Limits:
        return Limits(memory_mb=self.memory_mb, cpu_s=self.test_timeout_s)


def process_self_test() -> SelfTest:
    """The self-test, run once per process."""
    global _SELF_TEST
    if _SELF_TEST is None:
        _SELF_TEST = self_test()
    return _SELF_TEST


class Scorer:
    def __init__(self, worker_id: str, settings: ScoreSettings):
        self.worker_id, self.settings = worker_id, settings
        test = process_self_test()
        if not test.usable:
            raise SandboxUnavailable("no safe sandbox on this machine\n" + test.report())
        self.mode = test.mode
        layers = test.layers
        self.sandbox = WarmSandbox(worker_id, settings.limits(), Layers(
            seccomp=layers["seccomp"][0], slot_uid=layers["slot_uid"][0],
            cgroups=any(layers[k][0] for k in ("cgroup_memory", "cgroup_pids", "cgroup_kill")),
            tmpfs_interpreter=layers["tmpfs_interpreter"][0]), recycle_every=settings.recycle_every)
        self.sandbox.start()
        self.specs: OrderedDict[str, JudgeSpec] = OrderedDict()
        self.cache = _redis(settings.redis_url)
        log.warning("%s: sandbox isolation mode %s", worker_id, self.mode)

    def close(self) -> None:
        self.sandbox.close()

    # ------------------------------------------------------------------------------------------------

    def score(self, problem: dict, completion: str | None) -> dict:
        """The result for one completion; `completion` None: for the problem's reference solution itself."""
        started = time.monotonic()
        spec = self._spec(problem)
        program = (Program(spec.reference, 1.0, "reference") if completion is None
                   else build_program(spec, completion, require_format=self.settings.require_format))
        result = {"task_id": spec.task_id, "format": program.format, "format_how": program.how,
                  "mode": self.mode, "worker": self.worker_id, "retried": False, "cached": False, "error": None}
        if program.code is None:
            return self._finish(result, [], spec, started, error="not run: format is not 1")
        if len(program.code) > MAX_COMPLETION_CHARS:
            return self._finish(result, [], spec, started, error=f"not run: a program of {len(program.code)} "
                                                                 f"characters (the cap is {MAX_COMPLETION_CHARS})")
        cache_key = self._cache_key(spec, program)
        cached = self._cache_get(cache_key)
        if cached is not None:
            cached.update(worker=self.worker_id, cached=True, wall_s=round(time.monotonic() - started, 4))
            return cached
        try:
            reply = self._run(spec, program.code)
        except SandboxFault as fault:
            result.update(status="sandbox_error", tests=[], test_details=[], calls=[], passed=0,
                          total=len(spec.cases), pass_rate=None, reward=None, error=str(fault),
                          wall_s=round(time.monotonic() - started, 4), cpu_s=0.0)
            return result
        result.update(cpu_s=reply["cpu_s"], peak_memory_kb=reply["peak_memory_kb"], stdout_head=reply["stdout"][:1000],
                      stderr_tail=reply["stderr"][-1000:], stdout_truncated=reply["stdout_truncated"],
                      stderr_truncated=reply["stderr_truncated"])
        if "recycled" in reply:
            result["recycled"] = reply["recycled"]
        result = self._finish(result, reply["tests"], spec, started)
        if set(result["tests"]) <= CACHEABLE:
            self._cache_put(cache_key, result)
        return result

    def output(self, program: str, call: str, entry_point: str, max_bytes: int) -> dict:
        """Run a data job: `program` (dataset code that makes data, e.g. a CodeI/O task's input generator and
        reference solution: orchestrator/codeio.py; never a model's completion) in a candidate box, and `call`,
        a trusted statement calling `entry_point`, in the test box, once; what the program printed comes back.

        This is the one job whose reply carries a value the program computed: up to `max_bytes` (at most the
        supervisor's MAX_HEAD, 1 MiB) of its stdout, as text, which the caller parses as untrusted data. Returns
        {status (the call's verdict, or sandbox_error), detail, stdout, stdout_full (the program printed more
        than was kept), stderr_tail}."""
        job = {"program": program, "entry_point": entry_point, "preamble": "",
               "tests": [{"source": call, "check": False}], "timeout": self.settings.test_timeout_s,
               "stdout_head": max_bytes}
        oom_kills = self.sandbox.slot.oom_kills()
        try:
            reply = self.sandbox.run(job)
        except SandboxFault as fault:
            return {"status": "sandbox_error", "detail": str(fault), "stdout": "", "stdout_full": False,
                    "stderr_tail": ""}
        verdict = reply["tests"][0]
        status = verdict["status"]
        if status == "runtime_error" and verdict.get("sigkill") and self.sandbox.slot.oom_kills() > oom_kills:
            status = "memory_limit"
        stdout = reply.get("stdout") if isinstance(reply.get("stdout"), str) else ""
        return {"status": status, "detail": verdict["detail"], "stdout": stdout,
                "stdout_full": len(stdout.encode()) >= max_bytes or bool(reply.get("stdout_truncated")),
                "stderr_tail": str(reply.get("stderr", ""))[-1000:]}

    def healthy(self) -> bool:
        """Whether this slot's sandbox runs the self-test's probe job correctly now (after a sandbox_error, this
        tells a broken sandbox from a completion that broke it)."""
        from sandbox_workers.executor import SELF_TEST_EXPECTED, SELF_TEST_PROGRAM

        test = f"assert probe()[:3] == {SELF_TEST_EXPECTED[:3]!r}\n"
        try:
            reply = self.sandbox.run({"program": SELF_TEST_PROGRAM, "preamble": "", "entry_point": "probe",
                                      "tests": [{"source": test, "check": False}], "timeout": 5.0})
        except SandboxFault:
            return False
        return reply["tests"][0]["status"] == "passed"

    def _run(self, spec: JudgeSpec, code: str) -> dict:
        """The sandbox's reply for `code` against the problem's tests, in the problem's order; SandboxFault if
        the sandbox broke. The tests run in an order drawn here, so that a candidate cannot tell which test it
        is in by anything that counts up from job to test (its pid, a namespace's inode number, the time):
        contradicting tests (a canary's) stay contradicting. A candidate killed by SIGKILL while the slot's
        OOM counter rose is the memory limit."""
        order = list(range(len(spec.cases)))
        _SHUFFLE.shuffle(order)
        oom_kills = self.sandbox.slot.oom_kills()
        try:
            reply = self.sandbox.run(spec.job(code, self.settings.test_timeout_s, order))
        except SandboxFault:
            raise
        except Exception:
            self.sandbox.restart()  # the reply stream may be out of step; whatever raised is reported above us
            raise
        if self.sandbox.slot.oom_kills() > oom_kills:
            for test in reply["tests"]:
                if test.get("sigkill"):
                    test.update(status="memory_limit", detail="killed by the out-of-memory killer")
        verdicts = [None] * len(order)
        for position, index in enumerate(order):
            verdicts[index] = reply["tests"][position]
        reply["tests"] = verdicts
        return reply

    def _finish(self, result: dict, verdicts: list[dict], spec: JudgeSpec, started: float,
                error: str | None = None) -> dict:
        total = len(spec.cases)
        statuses = [v["status"] for v in verdicts]
        passed = statuses.count("passed")
        pass_rate = passed / total if statuses else 0.0
        status = "passed" if statuses and passed == total else next((s for s in statuses if s != "passed"), "failed")
        s = self.settings
        result.update(status=status, tests=statuses, test_details=[v["detail"] or None for v in verdicts],
                      calls=[v["calls"] for v in verdicts], passed=passed, total=total, pass_rate=pass_rate,
                      reward=compute_reward(pass_rate, result["format"], pass_weight=s.pass_weight,
                                            format_weight=s.format_weight, require_format=s.require_format),
                      wall_s=round(time.monotonic() - started, 4))
        result.setdefault("cpu_s", 0.0)
        if error:
            result["error"] = error
        return result

    def status(self) -> dict:
        """What is running in this slot, and the CPU it has used."""
        return {"worker": self.worker_id, "mode": self.mode, "jobs_run": self.sandbox.jobs_run,
                "restarts": self.sandbox.restarts, "stray_processes": self.sandbox.stray_processes(),
                "slot_pids": self.sandbox.slot.pids(), "slot_uid": self.sandbox.slot.uid,
                "slot_cgroups": [str(p) for p in self.sandbox.slot.cgroups.values()],
                "oom_kills": self.sandbox.slot.oom_kills(), "sandbox_cpu_s": round(self.sandbox.cpu_s, 4),
                "worker_cpu_s": round(sum(os.times()[:2]), 4)}

    # ------------------------------------------------------------------------------------------------

    def _spec(self, problem: dict) -> JudgeSpec:
        key = hashlib.sha256(json.dumps(problem, sort_keys=True, default=str).encode()).hexdigest()
        spec = self.specs.get(key)
        if spec is None:
            spec = compile_problem(problem)
            self.specs[key] = spec
            if len(self.specs) > 4096:
                self.specs.popitem(last=False)
        return spec

    def _cache_key(self, spec: JudgeSpec, program: Program) -> str:
        """Everything the result depends on: the code decides the tests, the whole text's format the reward."""
        s = self.settings
        parts = json.dumps([spec.key, program.code, program.format, program.how, s.pass_weight, s.format_weight,
                            s.test_timeout_s, s.memory_mb, s.require_format])
        return "diffurl:sandbox:reward:" + hashlib.sha256(parts.encode()).hexdigest()

    def _cache_get(self, key: str) -> dict | None:
        """A cached result, or None; an unreachable Redis only costs the cache (logged), never a score."""
        if self.cache is None:
            return None
        try:
            raw = self.cache.get(key)
        except RedisError as exc:
            log.warning("%s: reward cache unavailable: %s", self.worker_id, exc)
            return None
        return json.loads(raw) if raw else None

    def _cache_put(self, key: str, result: dict) -> None:
        if self.cache is not None:
            try:
                self.cache.set(key, json.dumps(result), ex=self.settings.cache_ttl_s)
            except RedisError as exc:
                log.warning("%s: reward cache unavailable: %s", self.worker_id, exc)


class Heartbeat:
    """`worker_id -> unix time` in the Redis hash `key` (the run's heartbeat hash, which `diffurl status` reads).

    `beat()` only flags a beat as due: a background thread writes it, at most once per `interval_s`, so that
    scoring never waits on Redis. A failed write is logged once (until a write succeeds again) and never raised.
    """

    def __init__(self, redis_url: str, key: str, worker_id: str, interval_s: float = 5.0):
        self.key, self.worker_id, self.interval_s = key, worker_id, interval_s
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._due, self._closed = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._write_when_due, name=f"heartbeat-{worker_id}", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self._due.set()

    def close(self) -> None:
        self._closed.set()
        self._due.set()
        self._thread.join(timeout=5)
        self.client.close()

    def _write_when_due(self) -> None:
        failing = False
        while True:
            self._due.wait()
            if self._closed.is_set():
                return
            self._due.clear()
            try:
                self.client.hset(self.key, self.worker_id, repr(time.time()))
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("%s: heartbeat to Redis failed, scoring goes on without it: %s", self.worker_id, exc)
                failing = True
            if self._closed.wait(self.interval_s):
                return


def unscorable_result(problem: dict, completion: str | None, settings: ScoreSettings, error: str,
                      worker: str | None = None) -> dict:
    """The result for a completion whose data the judge could not handle (it raised while scoring it): every
    test failed, the format part of the reward kept. Never sandbox_error: the candidate caused it."""
    try:
        total = len(compile_problem(problem).cases)
    except ValueError:
        total = 0
    fmt = format_score(completion) if completion is not None else 1.0  # None: the reference solution
    return {"task_id": problem.get("task_id"), "status": "failed", "tests": ["failed"] * total,
            "test_details": [error] * total, "calls": [0] * total, "passed": 0, "total": total, "pass_rate": 0.0, "format": fmt,
            "format_how": None, "reward": compute_reward(0.0, fmt, pass_weight=settings.pass_weight,
                                                         format_weight=settings.format_weight,
                                                         require_format=settings.require_format),
            "mode": None, "worker": worker, "wall_s": 0.0, "cpu_s": 0.0, "retried": False, "cached": False,
            "error": error}


def _redis(url: str | None):
    return redis.Redis.from_url(url, socket_timeout=5) if url else None


def status_histogram(results: list[dict]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in results).most_common())
