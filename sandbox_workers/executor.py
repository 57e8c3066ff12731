"""The trusted side of one sandbox slot: start bubblewrap with the supervisor inside, send jobs, read bounded
replies under a watchdog, recycle.

A job holds the program, the problem's tests and the entry point; the supervisor (inside/supervisor.py) runs
the tests in a test box against the program in candidate boxes and replies with one verdict per test. No
value the program computes leaves the sandbox: the reply is statuses, short details, call counts, resource
figures measured by the supervisor's template (outside the boxes) and the heads of stdout and stderr.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import select
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox_workers.isolation import (Interpreter, Limits, SelfTest, Slot, SandboxUnavailable, bwrap_argv,
                                       bwrap_binary, data_fd, find_interpreter, interpreter_root, kill_process_tree,
                                       probe_host_layers, seccomp_filters)

INSIDE = Path(__file__).parent / "inside"
INSIDE_FILES = {f"/sandbox/inside/{name}": (INSIDE / name).read_bytes()
                for name in ("__init__.py", "codec.py", "boxes.py", "template.py", "supervisor.py")}
MAX_REPLY_BYTES = 16 << 20
MAX_DETAIL = 300
TEST_STATUSES = ("passed", "failed", "runtime_error", "timeout", "memory_limit", "output_limit")
START_TIMEOUT_S = 20.0
WATCHDOG_MARGIN_S = 10.0
MEMORY_SLACK_BYTES = 32 << 20  # the slot's resident memory may exceed its baseline by this after a job
MEMORY_SETTLE_S = 0.5
PR_SET_CHILD_SUBREAPER = 36


class SandboxFault(RuntimeError):
    """The sandbox itself failed (not the candidate): the job's result is sandbox_error (the pool retries it)."""


@dataclass(frozen=True)
class Layers:
    """Which optional layers this slot uses (from the self-test)."""
    seccomp: bool
    slot_uid: bool
    cgroups: bool
    tmpfs_interpreter: bool = True


class WarmSandbox:
    """One bwrap sandbox running the warm forking executor, owned by one worker."""

    def __init__(self, name: str, limits: Limits, layers: Layers, recycle_every: int = 500):
        if os.geteuid() == 0 and not layers.slot_uid:
            raise SandboxUnavailable("as root the sandbox needs its slot uid (bwrap run by root cannot give jobs "
                                     "their own /proc)")
        become_subreaper()
        self.name, self.limits, self.layers, self.recycle_every = name, limits, layers, recycle_every
        self.interpreter: Interpreter = find_interpreter()
        self.root = interpreter_root() if layers.tmpfs_interpreter else None
        self.bwrap = bwrap_binary(layers.slot_uid)
        self.seccomp = seccomp_filters() if layers.seccomp else (b"", b"")
        self.slot = Slot(name, limits, use_uid=layers.slot_uid, use_cgroups=layers.cgroups)
        self.proc: subprocess.Popen | None = None
        self.jobs_run = 0
        self.restarts = 0
        self.log = tempfile.TemporaryFile()
        self.baseline_pids, self.baseline_memory = 0, None
        self.cpu_s_earlier, self.cpu_s_current = 0.0, 0.0  # sandbox CPU: sandboxes before this one, this one

    # -------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        files = [(data_fd(content), path) for path, content in INSIDE_FILES.items()]
        seccomp_fd = data_fd(self.seccomp[0]) if self.layers.seccomp else None
        fds = [fd for fd, _ in files] + ([seccomp_fd] if seccomp_fd is not None else [])
        argv = bwrap_argv(self.bwrap, self.interpreter, self.root, self.limits.tmpfs_mb, files, seccomp_fd)
        try:
            self.proc = subprocess.Popen(self.slot.launcher_argv(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.log, pass_fds=fds, close_fds=True, start_new_session=True,
                                         cwd="/")
        finally:
            for fd in fds:
                os.close(fd)
        config = self.limits.executor_config()
        config["seccomp_b64"] = base64.b64encode(self.seccomp[1]).decode() if self.layers.seccomp else ""
        self._send(config)
        hello = self._receive(START_TIMEOUT_S)
        if not hello.get("ready"):
            raise SandboxFault(f"supervisor did not start: {hello}")
        self.jobs_run = 0
        self.baseline_pids, self.baseline_memory = len(self.slot.pids()), self.slot.resident_bytes()

    def stop(self) -> None:
        """Close the executor's input (it exits, bwrap follows); kill whatever is left; reap everything."""
        if self.proc is None:
            return
        pids = self.slot.pids()
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.slot.kill_all()
        kill_process_tree(self.proc)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc = None
        reap_orphans(pids)

    def close(self) -> None:
        self.stop()
        self.slot.remove()

    @property
    def cpu_s(self) -> float:
        """CPU seconds used by this slot's executors and their reaped job processes, over all restarts."""
        return self.cpu_s_earlier + self.cpu_s_current

    def restart(self) -> None:
        self.cpu_s_earlier, self.cpu_s_current = self.cpu_s, 0.0
        self.stop()
        self.restarts += 1
        self.start()

    # -------------------------------------------------------------------------------- jobs

    def run(self, job: dict) -> dict:
        """Run one job; SandboxFault if the sandbox broke (it is restarted before raising)."""
        if self.proc is None:
            self.start()
        elif self.jobs_run >= self.recycle_every:
            self.restart()
        n = max(1, len(job["tests"]))
        watchdog = (n + 1) * (job["timeout"] + 1.0) + WATCHDOG_MARGIN_S
        try:
            peak = self.slot.start_peak()
            self._send(job)
            reply = self._receive(watchdog)
            reply["peak_memory_kb"] = max(reply.pop("peak_rss_kb", 0), self.slot.peak_growth(peak) >> 10)
            if "error" in reply:
                raise SandboxFault(f"supervisor error: {str(reply['error'])[:300]}")
            reply["tests"] = _test_results(reply, len(job["tests"]))
        except SandboxFault as fault:
            self.restart()
            raise SandboxFault(f"{fault}; sandbox restarted") from None
        self.jobs_run += 1
        self.cpu_s_current = reply["executor_cpu_s"]
        stray = self._settled_stray()
        grown = 0 if stray else self._settled_memory_growth()
        if stray or grown > MEMORY_SLACK_BYTES:
            self.restart()
            reply["recycled"] = (f"{stray} stray processes after the job" if stray else
                                 f"slot memory {grown >> 20} MiB above its baseline after the job")
        return reply

    def _settled_stray(self, settle_s: float = 2.0) -> int:
        """Stray processes once the finished job's namespace has been torn down (that takes a moment)."""
        deadline = time.monotonic() + settle_s
        while (stray := self.stray_processes()) and time.monotonic() < deadline:
            time.sleep(0.005)
        return stray

    def _settled_memory_growth(self, settle_s: float = MEMORY_SETTLE_S) -> int:
        """Bytes of resident memory (anonymous + tmpfs) the slot holds beyond its baseline once the finished
        job's memory is freed: above the slack, something outlives jobs in this sandbox (0 without a memory
        cgroup)."""
        if self.baseline_memory is None:
            return 0
        deadline = time.monotonic() + settle_s
        while (grown := self.slot.resident_bytes() - self.baseline_memory) > MEMORY_SLACK_BYTES \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        return grown

    def stray_processes(self) -> int:
        """Processes in the slot beyond bwrap + executor (0 between jobs when nothing is left running)."""
        if not self.slot.cgroups:
            return 0
        return max(0, len(self.slot.pids()) - self.baseline_pids)

    def stderr_tail(self, n: int = 2000) -> str:
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - n))
        return self.log.read().decode(errors="replace")

    # -------------------------------------------------------------------------------- frames

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise SandboxFault(f"sandbox {self.name} is gone ({exc}): {self.stderr_tail(300)}") from None

    def _receive(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        header = self._read_exact(4, deadline)
        (size,) = struct.unpack(">I", header)
        if size > MAX_REPLY_BYTES:
            raise SandboxFault(f"reply of {size} bytes is over the cap")
        try:
            reply = json.loads(self._read_exact(size, deadline))
        except SandboxFault:
            raise
        except Exception as exc:  # the supervisor wrote it: whatever is wrong with it, the sandbox is broken
            raise SandboxFault(f"malformed reply: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(reply, dict):
            raise SandboxFault("malformed reply: not an object")
        return reply

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        chunks = []
        while n:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise SandboxFault(f"watchdog: sandbox {self.name} did not answer in time")
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise SandboxFault(f"sandbox {self.name} exited: {self.stderr_tail(300)}")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)


def _test_results(reply: dict, n: int) -> list[dict]:
    """The reply's per-test verdicts, checked against the supervisor's schema (anything else is a SandboxFault:
    the supervisor writes them, and nothing a box sends reaches them unchecked)."""
    tests = reply.get("tests")
    numbers = [reply.get(k) for k in ("cpu_s", "peak_memory_kb", "executor_cpu_s")]
    if not isinstance(tests, list) or len(tests) != n or not all(type(x) in (int, float) for x in numbers):
        raise SandboxFault("malformed reply: tests or resource figures missing")
    for index, entry in enumerate(tests):
        if not (isinstance(entry, dict) and entry.get("status") in TEST_STATUSES and isinstance(entry.get("detail"), str)
                and type(entry.get("calls")) is int):
            raise SandboxFault(f"malformed reply: test entry {index}")
        entry["detail"] = entry["detail"][:MAX_DETAIL]
    return tests


def become_subreaper() -> None:
    """Orphans of a killed sandbox (bwrap's own pid 1) come back to this process to be reaped; where the
    machine's init does not reap, they would otherwise stay zombies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


SELF_TEST_PROGRAM = """def probe():
    import os, socket
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        net = 'socket allowed'
    except OSError:
        net = 'no inet sockets'
    lines = open('/proc/net/dev').read().split()
    return [41 + 1, os.getpid(), os.getuid(), net, [w for w in lines if w.endswith(':')]]
"""
SELF_TEST_EXPECTED = [42, 2, 1000, "no inet sockets", ["lo:"]]


def self_test() -> SelfTest:
    """Check every layer on this machine, ending with a real job through a full sandbox."""
    layers = probe_host_layers()
    if not all(layers[name][0] for name in ("interpreter", "bwrap")):
        layers["job_namespaces"] = (False, "needs the interpreter and bwrap")
        return SelfTest(layers)
    chosen = Layers(seccomp=layers["seccomp"][0], slot_uid=layers["slot_uid"][0],
                    cgroups=any(layers[k][0] for k in ("cgroup_memory", "cgroup_pids", "cgroup_kill")),
                    tmpfs_interpreter=layers["tmpfs_interpreter"][0])
    expected = SELF_TEST_EXPECTED if chosen.seccomp else [*SELF_TEST_EXPECTED[:3], "socket allowed", ["lo:"]]
    sandbox = None
    try:
        sandbox = WarmSandbox("selftest", Limits(), chosen)
        sandbox.start()
        test = f"seen = probe()\nassert seen == {expected!r}, seen\n"
        reply = sandbox.run({"program": SELF_TEST_PROGRAM, "preamble": "", "entry_point": "probe",
                             "tests": [{"source": test, "check": False}], "timeout": 5.0})
        verdict = reply["tests"][0]
        ok = verdict["status"] == "passed"
        layers["job_namespaces"] = (ok, "candidate pid 2, uid 1000, interfaces ['lo:'], "
                                        + ("no inet sockets" if chosen.seccomp else "(no seccomp)") if ok
                                    else f"probe job {verdict['status']}: {verdict['detail']}")
    except (SandboxFault, SandboxUnavailable, OSError, KeyError, ValueError) as exc:
        layers["job_namespaces"] = (False, f"{type(exc).__name__}: {exc}")
    finally:
        if sandbox is not None:
            sandbox.close()
    return SelfTest(layers)
