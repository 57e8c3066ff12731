"""The trusted side of one sandbox slot: start bubblewrap with the warm executor inside, send jobs, read
bounded replies under a watchdog, recycle.

A job sent here holds only code to run and probe sources; expected values stay with the caller. What each
test process wrote (its value record) comes back unparsed inside the executor's reply and is parsed here,
bounded and totally (`record_outcome`): a malformed record fails its test, it never raises.
"""

from __future__ import annotations

import base64
import ctypes
import itertools
import json
import math
import os
import re
import select
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox_workers.isolation import (Interpreter, Limits, SelfTest, Slot, SandboxUnavailable, bwrap_argv,
                                       bwrap_binary, data_fd, find_interpreter, kill_process_tree,
                                       probe_host_layers, seccomp_filters)

EXECUTOR_SOURCE = (Path(__file__).parent / "inside_executor.py").read_bytes()
MAX_REPLY_BYTES = 64 << 20
MAX_RECORD_CHARS = 4 << 20   # the executor's MAX_RECORD_BYTES
MAX_RECORD_DEPTH = 256       # JSON nesting of one record; the values in it stop at depth 32
RECORD_KINDS = ("value", "trace", "error", "unserialisable")
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


class WarmSandbox:
    """One bwrap sandbox running the warm forking executor, owned by one worker."""

    def __init__(self, name: str, limits: Limits, layers: Layers, recycle_every: int = 500):
        if os.geteuid() == 0 and not layers.slot_uid:
            raise SandboxUnavailable("as root the sandbox needs its slot uid (bwrap run by root cannot give jobs "
                                     "their own /proc)")
        become_subreaper()
        self.name, self.limits, self.layers, self.recycle_every = name, limits, layers, recycle_every
        self.interpreter: Interpreter = find_interpreter()
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
        executor_fd = data_fd(EXECUTOR_SOURCE)
        seccomp_fd = data_fd(self.seccomp[0]) if self.layers.seccomp else None
        fds = [fd for fd in (executor_fd, seccomp_fd) if fd is not None]
        argv = bwrap_argv(self.bwrap, self.interpreter, self.limits.tmpfs_mb, executor_fd, seccomp_fd)
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
            raise SandboxFault(f"executor did not start: {hello}")
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
        n = max(1, len(job["probes"]))
        watchdog = (n + 1) * (job["timeout"] + 1.0) + WATCHDOG_MARGIN_S
        try:
            self._send(job)
            reply = self._receive(watchdog)
            if "error" in reply:
                raise SandboxFault(f"executor error: {str(reply['error'])[:300]}")
            reply["tests"] = _test_results(reply, len(job["probes"]))
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
            reply = strict_json(self._read_exact(size, deadline))
        except SandboxFault:
            raise
        except Exception as exc:  # the executor wrote it: whatever is wrong with it, the sandbox is broken
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


def strict_json(text: str | bytes) -> object:
    """json.loads that refuses NaN, Infinity and numbers that overflow to them (what comes out is strict JSON
    again); errors propagate."""
    return _STRICT_DECODER.decode(text.decode() if isinstance(text, bytes) else text)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _test_results(reply: dict, n: int) -> list[dict]:
    """The reply's per-test entries as the judge reads them. The entries' shape is the executor's (a wrong
    one is a SandboxFault); the records inside them are the test processes' (never a fault)."""
    tests = reply.get("tests")
    numbers = [reply.get(k) for k in ("cpu_s", "peak_rss_kb", "executor_cpu_s")]
    if not isinstance(tests, list) or len(tests) != n or not all(type(x) in (int, float) for x in numbers):
        raise SandboxFault("malformed reply: tests or resource figures missing")
    results = []
    for index, entry in enumerate(tests):
        if isinstance(entry, dict) and type(entry.get("exit")) is int and isinstance(entry.get("record"), str):
            results.append(record_outcome(entry["exit"], entry["record"], index))
        elif isinstance(entry, dict) and isinstance(entry.get("status"), str) and isinstance(entry.get("detail"), str):
            results.append({"status": entry["status"], "detail": entry["detail"]})
        else:
            raise SandboxFault(f"malformed reply: test entry {index}")
    return results


def record_outcome(exit_code: int, record: str, index: int) -> dict:
    """One test's outcome from its exit code and the record its process wrote. Total: a record that is not
    exactly one well-formed value record for test `index` makes the test a runtime_error."""
    if not record:
        if exit_code == -signal.SIGXCPU:
            return {"status": "timeout", "detail": "cpu time limit"}
        if exit_code == -signal.SIGKILL:  # the trusted side tells the OOM killer from the program itself
            return {"status": "runtime_error", "detail": "killed by SIGKILL", "sigkill": True}
        return {"status": "runtime_error", "detail": f"no result (exit {exit_code})"}
    parsed = parse_record(record, index)
    if parsed is None:
        return {"status": "runtime_error", "detail": "corrupt result record"}
    kind, payload = parsed
    if kind in ("value", "trace"):
        return {"status": "ok", kind: payload}
    if kind == "unserialisable":
        return {"status": "runtime_error", "detail": "unserialisable result: " + payload}
    return {"status": "memory_limit" if payload == "MemoryError" else "runtime_error", "detail": "raised " + payload}


def parse_record(record: str, index: int) -> tuple[str, object] | None:
    """(kind, payload) of a value record {"t": index, kind: payload} written as one JSON line, or None for
    anything else: more or less than one line, over MAX_RECORD_CHARS, nested deeper than MAX_RECORD_DEPTH,
    not strict JSON, another schema. Never raises."""
    if len(record) > MAX_RECORD_CHARS or record.count("\n") != 1 or not record.endswith("\n"):
        return None
    if json_depth(record) > MAX_RECORD_DEPTH:
        return None
    try:
        parsed = strict_json(record)
    except Exception:  # ValueError, RecursionError, MemoryError: any failure is the record's
        return None
    if not isinstance(parsed, dict) or len(parsed) != 2 or type(parsed.get("t")) is not int or parsed["t"] != index:
        return None
    kind = next((k for k in RECORD_KINDS if k in parsed), None)
    payload = parsed.get(kind)
    if kind in ("value", "trace") and isinstance(payload, list):
        return kind, payload
    if kind in ("error", "unserialisable") and isinstance(payload, str):
        return kind, payload[:64]
    return None


_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """An upper bound on the nesting json.loads would recurse into, in linear time: the deepest bracket
    outside strings (escapes dropped first, so every string is a plain "...")."""
    opening = text.count("[") + text.count("{")
    if opening <= MAX_RECORD_DEPTH:
        return opening
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


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


def self_test() -> SelfTest:
    """Check every layer on this machine, ending with a real job through a full sandbox."""
    layers = probe_host_layers()
    if not all(layers[name][0] for name in ("interpreter", "bwrap")):
        layers["job_namespaces"] = (False, "needs the interpreter and bwrap")
        return SelfTest(layers)
    chosen = Layers(seccomp=layers["seccomp"][0], slot_uid=layers["slot_uid"][0],
                    cgroups=any(layers[k][0] for k in ("cgroup_memory", "cgroup_pids", "cgroup_kill")))
    sandbox = None
    try:
        sandbox = WarmSandbox("selftest", Limits(), chosen)
        sandbox.start()
        probe = ("def __diffurl_probe__(f):\n    import os, socket\n"
                 "    try:\n        socket.socket(socket.AF_INET, socket.SOCK_STREAM); net = 'socket allowed'\n"
                 "    except OSError:\n        net = 'no inet sockets'\n"
                 "    lines = open('/proc/net/dev').read().split()\n"
                 "    return [f(), os.getpid(), os.getuid(), net, [w for w in lines if w.endswith(':')]]")
        reply = sandbox.run({"program": "def f():\n    return 41 + 1\n", "preamble": "", "entry_point": "f",
                             "probes": [{"source": probe, "trace": False}], "timeout": 5.0})
        test = reply["tests"][0]
        if test.get("status") != "ok":
            raise SandboxFault(f"probe job failed: {test}")
        from sandbox_workers.judge import decode_value
        value, pid, uid, net, interfaces = decode_value(test["value"])
        ok = value == 42 and pid == 2 and interfaces == ["lo:"]
        layers["job_namespaces"] = (ok, f"job pid {pid}, uid {uid}, interfaces {interfaces}, {net}")
        if chosen.seccomp and net != "no inet sockets":
            layers["seccomp"] = (False, "filter did not block an AF_INET socket")
    except (SandboxFault, SandboxUnavailable, OSError, KeyError, ValueError) as exc:
        layers["job_namespaces"] = (False, f"{type(exc).__name__}: {exc}")
    finally:
        if sandbox is not None:
            sandbox.close()
    return SelfTest(layers)
