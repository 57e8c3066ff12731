"""The supervisor of one sandbox (stdlib only; runs INSIDE bubblewrap, never imported by the trusted side).

It reads jobs from the trusted side and answers each with one verdict per test. Before it reads any job it
forks the template (template.py), which makes every box; it keeps one test box and one candidate host ready,
and, as a subreaper, reaps every box (its CPU and memory then come from the kernel's rusage).
Per job: the test box gets the tests, the host gets the program; when the test box begins test i, the host
forks test i's candidate and the supervisor hands the test box the candidate's two pipe ends; when the test
box reports the verdict, the host ends the candidate. It watches the boxes' output and enforces absolute
deadlines (per test and per job). A test box that dies, hangs or floods its output ends that test only: the
next test gets a new test box; a host that dies is replaced for the next test. Nothing a box writes is
parsed here except the fixed-size messages of the test box and the host; the candidate's pipes are read by
the test box alone, and no value a candidate computes is in the reply.

Protocol with the trusted side on fds 0 / 1: frames of a 4-byte big-endian length + JSON: first a config,
answered {"ready": true}; then one job per frame, answered by one reply frame.
"""

import base64
import json
import os
import select
import signal
import socket
import struct
import time

from . import boxes, codec
from .template import HOST_MSG, MAX_PAYLOAD, PR_SET_PDEATHSIG, libc, process_cpu_s, receive, template_main

PR_SET_CHILD_SUBREAPER = 36

SPARES = {"test": 1, "host": 1}  # boxes kept ready
GRACE_S = 0.5
BOX_WAIT_S = 10.0         # the longest a job waits for the template to make a box
REAP_WAIT_S = 2.0         # the longest a job waits for its killed boxes to be reaped
HEAD = 4096
MAX_HEAD = 1 << 20        # the most of stdout a job may ask to keep (`stdout_head`: a data job's output, never a
# candidate's: sandbox_workers/worker.py Scorer.output)
PRELOAD = ("typing", "math", "collections", "itertools", "functools", "re", "string", "heapq", "bisect")


# ------------------------------------------------------------------------------------------------ boxes, from outside

class Box:
    """A box as the supervisor holds it: pids and its ends of the box's fds."""

    def __init__(self, role, holder_pid, pid, fds):
        self.role, self.holder, self.pid = role, holder_pid, pid
        out, err, self.input, self.channel = fds
        self.outputs = {out: "stdout", err: "stderr"}  # until each reads as closed
        for fd in self.outputs:
            os.set_blocking(fd, False)
        self.exit = None  # the exit code once reaped (killed by signal s: -s)

    def close_input(self):
        if self.input is not None:
            os.close(self.input)
            self.input = None

    def kill(self):
        """SIGKILL the box: a host's pid 1 (its pid namespace goes with it; the holder reaps it and exits), a
        test box's process group. The template reports the end, usage included."""
        if self.exit is None:
            try:
                if self.role == "test":
                    os.killpg(self.pid, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.close_input()

    def close(self):
        self.kill()
        for fd in [*self.outputs, self.channel]:
            os.close(fd)
        self.outputs, self.channel = {}, None


class Supply:
    """The supervisor's side of the template: spare boxes, and the usage of every box reaped. The supervisor is
    a subreaper: each box, orphaned by the template's one-shot maker, becomes its child and is reaped here."""

    def __init__(self, config, seccomp_bpf):
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        requests_r, self.requests = os.pipe()
        self.wake, wake_w = os.pipe()
        for fd in (self.wake, wake_w):
            os.set_blocking(fd, False)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.sock.close()
                os.close(self.requests)
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                template_main(requests_r, theirs, config, seccomp_bpf)
            finally:
                os._exit(70)
        theirs.close()
        os.close(requests_r)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.spares = {role: [] for role in SPARES}
        self.pending = {role: 0 for role in SPARES}
        self.live = {}              # reaped pid (the holder, or the test box) -> Box, until reaped
        self.reaped = []            # (cpu_s, rss_kb) of boxes reaped since the last `usage()`
        self.failures = 0

    @property
    def watched(self):
        return [self.sock, self.wake]

    def request(self, role):
        self.pending[role] += 1
        os.write(self.requests, role[0].encode())

    def replenish(self):
        for role, want in SPARES.items():
            for _ in range(want - len(self.spares[role]) - self.pending[role]):
                self.request(role)

    def take(self, role, deadline):
        """A ready box of `role` (None if the template cannot make one by `deadline`); a spare is ordered."""
        while True:
            while self.spares[role]:
                box = self.spares[role].pop(0)
                if box.exit is None:
                    self.replenish()
                    return box
                box.close()  # it died waiting (its setup failed)
            self.replenish()
            wait = deadline - time.monotonic()
            if wait <= 0:
                return None
            self.handle(select.select(self.watched, [], [], wait)[0])

    def handle(self, readable):
        """What the boxes reported and what ended, among `readable` (from a select on `watched`)."""
        if self.sock in readable:
            self._report()
        if self.wake in readable:
            try:
                while os.read(self.wake, 512):
                    pass
            except BlockingIOError:
                pass
            self._reap()

    def _report(self):
        data, fds = receive(self.sock, 1024, 4)
        if not data:
            raise RuntimeError("the template is gone")
        message = json.loads(data)
        if message.get("made") in SPARES and len(fds) == 4:
            role = message["made"]
            box = Box(role, message["holder"], message["pid"], fds)
            self.pending[role] = max(0, self.pending[role] - 1)
            self.live[box.holder] = box
            self.spares[role].append(box)
            return
        for fd in fds:
            os.close(fd)
        if message.get("failed") in SPARES:
            self.pending[message["failed"]] = max(0, self.pending[message["failed"]] - 1)
            self.failures += 1
            time.sleep(0.01)  # a box that could not be made now (processes of a killed box still exiting)
        else:
            raise RuntimeError("unexpected report from a box: %r" % data[:100])

    def _reap(self):
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            box = self.live.pop(pid, None)
            if box is not None:
                code = os.waitstatus_to_exitcode(status)
                box.exit = 128 - code if box.role == "host" and code > 127 else code  # a holder passes on a signal
            self.reaped.append((usage.ru_utime + usage.ru_stime, usage.ru_maxrss))

    def settle(self, boxes, deadline):
        """Wait until `boxes` are reaped and the spares are ready (the slot's process count is then steady)."""
        self.replenish()
        while (any(b.exit is None for b in boxes) or any(self.pending.values())) and time.monotonic() < deadline:
            self.handle(select.select(self.watched, [], [], max(0.0, deadline - time.monotonic()))[0])
            self.replenish()

    def usage(self):
        """(CPU seconds, peak RSS KiB) of the boxes reaped since the last call."""
        reaped, self.reaped = self.reaped, []
        return sum(c for c, _ in reaped), max((r for _, r in reaped), default=0)


# ------------------------------------------------------------------------------------------------ a job

def write_all(fd, data, deadline):
    """Write a frame to a box's pipe without ever blocking past `deadline` (False if not taken in time)."""
    os.set_blocking(fd, False)
    view = memoryview(codec.HEADER.pack(len(data)) + data)
    while view:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([], [fd], [], wait)[1]:
            return False
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue
        except OSError:  # the box is gone
            return False
    return True


class Job:
    """One job: tests[start:] on a test box, each test's candidate a fresh process of the job's candidate host,
    under absolute deadlines."""

    def __init__(self, supply, config, job):
        self.supply, self.cap, self.job = supply, config["output_cap"], job
        self.n = len(job["tests"])
        head = job.get("stdout_head", HEAD)
        self.head = head if type(head) is int and 0 <= head <= MAX_HEAD else HEAD
        self.timeout = float(job["timeout"]) + GRACE_S
        self.deadline = time.monotonic() + (self.n + 1) * self.timeout
        self.results = [None] * self.n
        self.io = {"stdout": b"", "stderr": b"", "stdout_bytes": 0, "stderr_bytes": 0, "stdout_truncated": False,
                   "stderr_truncated": False}
        self.used = []
        self.program = codec.dumps({"program": job["program"], "entry_point": job["entry_point"]})
        self.host = self.host_sock = None
        self.owed = set()   # tests whose candidate the host started and has not yet reported ended
        self.ended = {}     # test -> the candidate's exit code (None: the host died first)
        self.rss_kb = 0    # the largest of the candidates' peak RSS (their CPU comes with the host's rusage)

    def run(self):
        start = 0
        while start is not None and start < self.n:
            if time.monotonic() >= self.deadline:  # no new test box once the job is out of time
                start = self._stopped(start, "timeout")
                continue
            start = self.segment(start)
        self._await_host(time.monotonic() + REAP_WAIT_S)
        for box in self.used:
            box.kill()
        self.supply.settle(self.used, time.monotonic() + REAP_WAIT_S)
        for box in self.used:
            box.close()
        if self.host_sock is not None:
            self.host_sock.close()
        cpu_s, rss_kb = self.supply.usage()
        return {"tests": self.results, "stdout": self.io["stdout"].decode(errors="replace"),
                "stderr": self.io["stderr"].decode(errors="replace"), "stdout_truncated": self.io["stdout_truncated"],
                "stderr_truncated": self.io["stderr_truncated"], "cpu_s": round(cpu_s, 4),
                "peak_rss_kb": max(rss_kb, self.rss_kb),
                "executor_cpu_s": round(process_cpu_s(), 4)}

    def _box(self, role, payload):
        box = self.supply.take(role, min(self.deadline, time.monotonic() + BOX_WAIT_S))
        if box is None:
            raise RuntimeError("the template made no %s box (%d failures)" % (role, self.supply.failures))
        self.used.append(box)
        if not write_all(box.input, payload, time.monotonic() + BOX_WAIT_S):  # a fresh box takes it at once
            raise RuntimeError("a new %s box did not take its payload" % role)
        box.close_input()
        return box

    def segment(self, start):
        """Run tests from `start` on one test box; the index to go on from, or None when all have verdicts."""
        payload = {k: self.job[k] for k in ("preamble", "entry_point", "tests")}
        payload["start"] = start
        test = self._box("test", codec.dumps(payload))
        current, started, stop = start, False, None
        self.io["stdout_bytes"] = self.io["stderr_bytes"] = 0  # the output cap is per test
        test_deadline = min(self.deadline, time.monotonic() + self.timeout)
        sock = socket.socket(fileno=os.dup(test.channel))
        sock.setblocking(False)
        try:
            while stop is None:
                now = time.monotonic()
                if now >= test_deadline:
                    stop = "timeout"
                    break
                outputs = [(fd, name) for box in (test, self.host) if box is not None
                           for fd, name in box.outputs.items()]
                watched = [sock, *self.supply.watched] + [fd for fd, _ in outputs]
                if self.host_sock is not None:
                    watched.append(self.host_sock)
                readable = select.select(watched, [], [], test_deadline - now)[0]
                for fd, name in outputs:
                    if fd in readable and stop is None and self._output(fd, name):
                        stop = "output_limit"
                self.supply.handle(readable)
                if self.host_sock is not None and self.host_sock in readable:
                    self._host_message()
                if sock not in readable or stop is not None:
                    continue
                message = self._message(sock)
                if message is None:
                    stop = "ended" if current < self.n else "done"
                elif message[0] == b"B" and message[1] == current and not started:
                    self._hand_over(sock, current, self._start_candidate(current))
                    started, test_deadline = True, min(self.deadline, time.monotonic() + self.timeout)
                elif message[0] == b"X" and message[1] == current:  # with no B: the test never called it
                    if started:
                        self._end_candidate(current)
                    self.results[current] = self._verdict(current, message)
                    started, current = False, current + 1
                    self.io["stdout_bytes"] = self.io["stderr_bytes"] = 0  # the output cap is per test
                    test_deadline = min(self.deadline, time.monotonic() + self.timeout)
                elif message[0] != b"":
                    stop = "corrupt"
        finally:
            sock.close()
            test.kill()
            if started:
                self._end_candidate(current)
        if stop == "done" or current >= self.n:
            return None
        return self._stopped(current, stop)

    # ------------------------------------------------------------------------------------ the candidate host

    def _start_candidate(self, index):
        """The host forks test `index`'s candidate; (its call pipe's write end, its reply pipe's read end)."""
        if self.host is None:
            self.host = self._box("host", self.program)
            self.host_sock = socket.socket(fileno=os.dup(self.host.channel))
            self.host_sock.settimeout(REAP_WAIT_S)
        call_r, call_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            self.host_sock.sendmsg([HOST_MSG.pack(b"T", index, 0, 0.0, 0)],
                                   [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", call_r, reply_w))])
            self.owed.add(index)
        except OSError:
            self._host_gone()  # the candidate never starts: the test reads its reply pipe as closed
        os.close(call_r)
        os.close(reply_w)
        return call_w, reply_r

    def _end_candidate(self, index):
        if index in self.owed and self.host_sock is not None:
            try:
                self.host_sock.send(HOST_MSG.pack(b"K", index, 0, 0.0, 0))
            except OSError:
                self._host_gone()

    def _host_message(self):
        try:
            data, fds = receive(self.host_sock, HOST_MSG.size, 0)
        except OSError:
            data = b""
        if len(data) != HOST_MSG.size:
            self._host_gone()
            return
        kind, index, code, cpu_s, rss_kb = HOST_MSG.unpack(data)
        if kind == b"X" and index in self.owed:
            self.owed.discard(index)
            self.ended[index] = code
            self.rss_kb = max(self.rss_kb, rss_kb)

    def _host_gone(self):
        """The host died (or stopped answering): its candidates ended with it; a later test gets a new host."""
        for index in self.owed:
            self.ended[index] = None
        self.owed.clear()
        if self.host is not None:
            self.host.kill()
            self.host_sock.close()
        self.host = self.host_sock = None

    def _await_host(self, deadline, index=None):
        """Wait for the host's report on test `index` (None: on every test it owes one)."""
        while self.host_sock is not None and (index in self.owed if index is not None else self.owed):
            wait = deadline - time.monotonic()
            if wait <= 0:
                self._host_gone()
            elif select.select([self.host_sock], [], [], wait)[0]:
                self._host_message()

    # ------------------------------------------------------------------------------------ the test box

    def _hand_over(self, sock, index, ends):
        try:
            sock.setblocking(True)
            sock.sendmsg([boxes.FDS_MSG.pack(b"C", index)],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", *ends))])
        except OSError:
            pass  # the test box is gone: its end of the socket reads as closed next
        finally:
            sock.setblocking(False)
            for fd in ends:  # the test box holds the only ends now: its close is the candidate's EOF
                os.close(fd)

    @staticmethod
    def _message(sock):
        """(kind, index, calls, status, detail) of the test box's next message; kind b"" when there was none
        after all; None when the box is gone or the message is not one."""
        try:
            data, fds = receive(sock, boxes.TEST_MSG.size, 0)
        except BlockingIOError:
            return (b"", -1, 0, "", "")
        except OSError:
            return None
        if len(data) != boxes.TEST_MSG.size:
            return None
        kind, index, calls, status, detail = boxes.TEST_MSG.unpack(data)
        return kind, index, calls, status.rstrip(b"\0").decode("ascii", "replace"), \
            detail.rstrip(b"\0").decode("ascii", "replace")

    def _verdict(self, index, message):
        _, _, calls, status, detail = message
        if status not in boxes.VERDICTS:
            return {"status": "runtime_error", "detail": "corrupt verdict", "calls": calls}
        if status != "ended":
            return {"status": status, "detail": detail, "calls": calls}
        # the candidate's process ended mid-call: what ended it decides the status
        self._await_host(time.monotonic() + REAP_WAIT_S, index)
        code = self.ended.get(index)
        if code == -signal.SIGXCPU:
            return {"status": "timeout", "detail": "cpu time limit", "calls": calls}
        if code == -signal.SIGKILL:  # the trusted side tells the OOM killer from the program itself
            return {"status": "runtime_error", "detail": "killed by SIGKILL", "sigkill": True, "calls": calls}
        return {"status": "runtime_error", "detail": "%s (exit %s)" % (detail, code), "calls": calls}

    def _output(self, fd, name):
        """Take what a box wrote to stdout or stderr; True when over the cap."""
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not data:  # every writer is gone: stop watching it
            for box in (self.host, *self.used):
                if box is not None and fd in box.outputs:
                    del box.outputs[fd]
                    os.close(fd)
                    break
            return False
        self.io[name + "_bytes"] += len(data)
        if name == "stdout":
            if len(self.io["stdout"]) < self.head:
                self.io["stdout"] = (self.io["stdout"] + data)[:self.head]
        else:
            self.io["stderr"] = (self.io["stderr"] + data)[-HEAD:]
        if self.io[name + "_bytes"] > self.cap:
            self.io[name + "_truncated"] = True
            return True
        return False

    def _stopped(self, current, stop):
        """Verdicts for a segment that stopped at test `current`: that test only, unless the job is out of time."""
        if stop == "timeout" and time.monotonic() >= self.deadline:
            for i in range(current, self.n):
                self.results[i] = {"status": "timeout", "detail": "job wall time limit", "calls": 0}
            return None
        detail = {"timeout": "wall time limit", "output_limit": "output limit",
                  "ended": "the test process ended", "corrupt": "corrupt message from the test process"}[stop]
        status = {"corrupt": "runtime_error", "ended": "runtime_error"}.get(stop, stop)
        self.results[current] = {"status": status, "detail": detail, "calls": 0}
        return current + 1


def main():
    os.dup2(1, 9)  # control out; fd 1 becomes /dev/null so stray prints cannot corrupt frames
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    config = codec.read_frame(0, MAX_PAYLOAD)
    seccomp_bpf = base64.b64decode(config.pop("seccomp_b64")) if config.get("seccomp_b64") else b""
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    import random
    random.seed(0)  # every box starts from the same random state
    supply = Supply(config, seccomp_bpf)
    supply.settle([], time.monotonic() + BOX_WAIT_S)
    codec.write_frame(9, {"ready": True})
    while True:
        try:
            job = codec.read_frame(0, MAX_PAYLOAD)
        except EOFError:
            return
        except codec.FrameError as exc:  # the trusted side caps what it sends: this is a bug there, say so
            codec.write_frame(9, {"error": "job frame refused: %s" % exc})
            return
        try:
            reply = Job(supply, config, job).run()
        except Exception as exc:  # noqa: BLE001 - reported to the trusted side, which restarts the sandbox
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        codec.write_frame(9, reply)
