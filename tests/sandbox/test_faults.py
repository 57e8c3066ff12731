"""Infrastructure faults are retried, never scored 0; the reward cache in a real Redis; pool resizing."""

import os
import signal
import socket
import threading
import time

import pytest
import ray
import redis

from orchestrator.redis_server import EmbeddedRedis
from sandbox_workers import SandboxPool
from tests.sandbox.pools import module_pool

pytestmark = pytest.mark.integration

SLOW = {"task_id": "slow", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}
SLOW_OK = "import time\ndef add(a, b):\n    time.sleep(2.0)\n    return a + b\n"
ADD_OK = "def add(a, b):\n    return a + b\n"



@pytest.fixture(scope="module")
def pool(ray_cluster):
    with module_pool("fault-sandbox", num_workers=2, test_timeout_s=5.0) as pool:
        yield pool


def _score_in_background(pool, problem, completion):
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=pool.score([problem], [completion])[0]))
    thread.start()
    return thread, box


def _busy_worker(pool, deadline_s=10.0) -> int:
    """Index of the worker whose slot is running a job (more processes than its idle baseline)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for i, status in enumerate(pool.statuses()):
            if status["stray_processes"] > 0:
                return i
        time.sleep(0.02)
    raise AssertionError("no worker picked up the job")


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _supervisor_pid(slot_pids: list[int]) -> int:
    """The sandbox's supervisor: the python process whose parent is bubblewrap."""
    def cmdline(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()

    for pid in slot_pids:
        if b"supervisor" in cmdline(pid) and b"bwrap" in cmdline(_parent(pid)):
            return pid
    raise AssertionError(f"no supervisor among {slot_pids}")


def _worker_pid(slot_pids: list[int]) -> int:
    """The worker actor's process: the one parent of the slot's processes that is outside the slot (it
    launched bubblewrap)."""
    outside = {_parent(pid) for pid in slot_pids} - set(slot_pids)
    assert len(outside) == 1, (slot_pids, outside)
    return outside.pop()


def _kill_mid_job(pool, pid_of) -> None:
    """Score a slow correct job, SIGKILL `pid_of(slot pids)` of the busy worker while it runs, and check the
    retried result is the correct one."""
    thread, box = _score_in_background(pool, SLOW, SLOW_OK)
    victim = _busy_worker(pool)
    os.kill(pid_of(pool.statuses()[victim]["slot_pids"]), signal.SIGKILL)
    assert thread.is_alive(), "the job ended before the kill: the test proved nothing"
    thread.join(60)
    result = box["result"]
    assert (result["status"], result["reward"], result["retried"]) == ("passed", 2.0, True), result


def test_killing_a_worker_mid_job_gives_a_retried_correct_result(pool):
    _kill_mid_job(pool, _worker_pid)
    assert pool.score([SLOW], [ADD_OK])[0]["status"] == "passed"   # the killed worker was restarted by Ray


def test_killing_the_sandbox_mid_job_gives_a_retried_correct_result(pool):
    _kill_mid_job(pool, _supervisor_pid)
    assert sum(s["restarts"] for s in pool.statuses()) >= 1


@pytest.mark.parametrize("unavailable_calls, want", [(1, ("passed", 2.0, True)), (99, ("sandbox_error", None, True))])
def test_a_restarting_worker_is_waited_for_and_its_jobs_run_again_once_uncounted(pool, monkeypatch, unavailable_calls,
                                                                                 want):
    """Ray answers a call to a worker it is restarting (its node was lost) with ActorUnavailableError: the
    job runs again without it counting as a run, but only once, so a job cannot keep a worker restarting."""
    import sandbox_workers.pool as pool_module

    real_get, seen = ray.get, []

    def get(ref, **kw):
        if not isinstance(ref, list) and "timeout" not in kw and len(seen) < unavailable_calls:  # a score call
            seen.append(ref)
            raise ray.exceptions.ActorUnavailableError("The actor is restarting", None)
        return real_get(ref, **kw)

    monkeypatch.setattr(pool_module.ray, "get", get)
    (result,) = pool.score([SLOW], [ADD_OK])
    assert (result["status"], result["reward"], result["retried"]) == want, result
    assert len(seen) == min(unavailable_calls, 3)  # run, run again uncounted, the retry: never more


@ray.remote(num_cpus=0)
class BrokenWorker:
    """Stands in for a SandboxWorker whose sandbox breaks on every job (and then answers the self-test's probe
    job correctly or not, as `healthy` says); records the completions it was given."""

    def __init__(self, healthy: bool):
        self.completions, self.is_healthy = [], healthy

    def score_batch(self, jobs):
        self.completions += [completion for _, completion in jobs]
        return [{"task_id": problem["task_id"], "status": "sandbox_error", "reward": None, "pass_rate": None,
                 "error": "sandbox broke"} for problem, _ in jobs]

    def healthy(self):
        return self.is_healthy

    def seen(self):
        return self.completions


@pytest.mark.parametrize("healthy, want", [(False, ("sandbox_error", None, True)), (True, ("failed", 0.0, True))])
def test_a_completion_that_always_breaks_the_sandbox_is_run_twice_once_on_each_worker(pool, healthy, want):
    """Twice sandbox_error: an infrastructure failure (reward None) while the sandbox also fails the self-test's
    probe job; the completion's own failure (every test failed, its format's reward) when the sandbox is
    healthy, so that no completion can stop a run."""
    broken = [BrokenWorker.remote(healthy) for _ in range(2)]
    completions = [f"# {i}\n{ADD_OK}" for i in range(18)]
    real, pool.workers = pool.workers, broken
    try:
        results = pool.score([SLOW] * 18, completions)
    finally:
        pool.workers = real
    seen = ray.get([w.seen.remote() for w in broken])
    assert [(seen[0].count(c), seen[1].count(c)) for c in completions] == [(1, 1)] * 18
    assert [(r["status"], r["reward"], r["retried"]) for r in results] == [want] * 18
    if healthy:
        assert all(r["error"].startswith("the completion broke the sandbox twice") for r in results)


def test_reward_cache_in_redis_answers_repeated_code(ray_cluster, tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        cached_pool = SandboxPool(num_workers=1, redis_url=server.url, require_format=False, name_prefix="cache-sandbox")
        try:
            first, second = (cached_pool.score([SLOW], [ADD_OK])[0] for _ in range(2))
        finally:
            cached_pool.shutdown()
        keys = redis.Redis.from_url(server.url).keys("diffurl:sandbox:reward:*")
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["reward"] == first["reward"] == 2.0 and second["tests"] == first["tests"]
    assert len(keys) == 1


def test_unreachable_redis_costs_the_cache_not_the_score(ray_cluster):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"redis://:pw@127.0.0.1:{closed.getsockname()[1]}/0"    # bound, never listening: refused
    uncached = SandboxPool(num_workers=1, redis_url=url, require_format=False, name_prefix="nocache-sandbox")
    try:
        result = uncached.score([SLOW], [ADD_OK])[0]
    finally:
        uncached.shutdown()
        closed.close()
    assert (result["status"], result["cached"]) == ("passed", False)


def test_pool_resizes_and_scores_with_every_size(pool):
    pool.resize(3)
    assert pool.num_workers == 3
    assert ray.get_actor("fault-sandbox-2") is not None
    results = pool.score([SLOW] * 6, [ADD_OK] * 6)
    assert {r["worker"] for r in results} == {"fault-sandbox-0", "fault-sandbox-1", "fault-sandbox-2"}
    pool.resize(2)
    with pytest.raises(ValueError):
        ray.get_actor("fault-sandbox-2")
    assert [r["status"] for r in pool.score([SLOW] * 2, [ADD_OK] * 2)] == ["passed", "passed"]


def test_pool_passes_to_another_actor_and_scores_there(pool):
    @ray.remote(num_cpus=0)
    def score_remotely(p):
        return p.score([SLOW], [ADD_OK])[0]["status"]

    assert ray.get(score_remotely.remote(pool)) == "passed"


def _processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if str(uid) in uids:
            found.append(int(entry))
    return found


def test_shutdown_leaves_no_slot_cgroup_and_no_slot_process(ray_cluster):
    short_lived = SandboxPool(num_workers=1, require_format=False, name_prefix="cleanup-sandbox")
    status = short_lived.statuses()[0]
    assert short_lived.score([SLOW], [ADD_OK])[0]["status"] == "passed"
    assert status["slot_cgroups"] and _processes_of_uid(status["slot_uid"])
    short_lived.shutdown()
    assert [p for p in status["slot_cgroups"] if os.path.exists(p)] == []
    assert _processes_of_uid(status["slot_uid"]) == []


def test_score_rejects_a_bad_problem_naming_its_task_before_running_anything(pool):
    with pytest.raises(ValueError, match="problem 'broken': field 'entry_point'"):
        pool.score([SLOW, {"task_id": "broken", "entry_point": "1x", "tests": ["assert f() == 1"]}], [ADD_OK] * 2)
    with pytest.raises(ValueError, match="2 problems but 1 completions"):
        pool.score([SLOW, SLOW], [ADD_OK])


def test_a_copy_in_an_actor_finds_the_workers_by_name_and_follows_the_owner_s_resize(pool):
    """A rollout worker gets the pool as a constructor argument: the copy holds no actor handles (Ray would
    keep them in the object store, with an ERROR line at every run) and scores on the workers the owner has
    now, not those it had when the copy was made."""
    @ray.remote(num_cpus=0, max_restarts=1)
    class Holder:
        def __init__(self, pool):
            self.pool = pool

        def workers(self):
            return sorted({r["worker"] for r in self.pool.score([SLOW] * 6, [ADD_OK] * 6)})

        def resize(self):
            try:
                self.pool.resize(1)
            except RuntimeError as e:
                return str(e)

    holder = Holder.remote(pool)
    try:
        assert ray.get(holder.workers.remote()) == ["fault-sandbox-0", "fault-sandbox-1"]
        pool.resize(3)
        try:
            assert ray.get(holder.workers.remote()) == [f"fault-sandbox-{i}" for i in range(3)]
        finally:
            pool.resize(2)
        assert ray.get(holder.workers.remote()) == ["fault-sandbox-0", "fault-sandbox-1"]
        assert "cannot start or stop its workers" in ray.get(holder.resize.remote())
        assert pool.num_workers == 2
    finally:
        ray.kill(holder)
