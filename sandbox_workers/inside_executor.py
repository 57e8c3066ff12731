"""The warm forking executor. Runs INSIDE bubblewrap under a plain system python (stdlib only); never
imported by the trusted side, which hands this file to bwrap as data.

Per job:   executor --fork--> holder (new user+mount+pid+ipc namespaces) --fork--> zygote (pid 1 there)
The zygote mounts a fresh /proc and a sized tmpfs /tmp, sets rlimits, drops every capability, sets
no_new_privs, installs the job seccomp filter, then imports the candidate program once and forks one
fresh process per test. Everything the zygote and its children write is untrusted: the executor only
relays it, with caps on size and time, and the trusted side decides. When the zygote (pid 1) dies the
kernel kills everything left in the job's pid namespace.

Control protocol on fds 0/1: frames of a 4-byte big-endian length + UTF-8 JSON.
Job results on the zygote's fd 3: JSON lines {"ready"}, {"import_error"}, {"t", "value"|"trace"|"error"|
"unserialisable"}, {"t", "exit"}.
"""

import base64
import builtins
import ctypes
import gc
import json
import os
import random
import resource
import select
import signal
import struct
import time

PROBE_NAME = "__diffurl_probe__"
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x8000000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 1, 24, 38, 22, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER, CAP_LAST = 4, 2, 63
RESULT_FD, JOB_FD = 3, 4
GRACE_S = 0.5
MAX_VALUE_CHARS = 1 << 20
MAX_TRACE_CALLS = 10_000
HEAD = 4096
# Imported once by the warm executor, so that forked jobs find them loaded (typing alone costs ~9 ms of
# CPU per import). Kept small: every fork copies the page tables of whatever is loaded here.
PRELOAD = ("typing", "math", "collections", "itertools", "functools")

libc = ctypes.CDLL(None, use_errno=True)


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# ----------------------------------------------------------------------------------- control frames

def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("control channel closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd):
    (size,) = struct.unpack(">I", read_exact(fd, 4))
    return json.loads(read_exact(fd, size))


def write_frame(fd, obj):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


# ----------------------------------------------------------------------------------- values out

class Unserialisable(Exception):
    pass


def encode(value, budget):
    """Plain values -> tagged JSON; exact types only, so no user __eq__/__repr__ ever runs."""
    budget[0] -= 1
    if budget[0] < 0:
        raise Unserialisable("too large")
    kind = type(value)
    if value is None:
        return ["none"]
    if kind is bool:
        return ["bool", value]
    if kind is int:
        try:
            return ["int", int.__repr__(value)]
        except ValueError:
            raise Unserialisable("int too large") from None
    if kind is float:
        return ["float", float.__repr__(value)]
    if kind is complex:
        return ["complex", float.__repr__(value.real), float.__repr__(value.imag)]
    if kind is str:
        budget[0] -= len(value) // 64
        if len(value) > MAX_VALUE_CHARS:
            raise Unserialisable("str too large")
        return ["str", value]
    if kind is bytes:
        if len(value) > MAX_VALUE_CHARS // 2:
            raise Unserialisable("bytes too large")
        return ["bytes", value.hex()]
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [encode(x, budget) for x in list.__iter__(list(value))]]
    if kind is dict:
        return ["dict", [[encode(k, budget), encode(v, budget)] for k, v in dict.items(value)]]
    raise Unserialisable(kind.__name__)


class Recorder:
    """Stands in for the candidate in trace probes: records every call's outcome as it happens."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        try:
            result = self.fn(*args, **kwargs)
        except BaseException as exc:
            self._add(["raise", type(exc).__name__])
            raise
        try:
            self._add(["ok", encode(result, [200_000])])
        except Unserialisable as exc:
            self._add(["unserialisable", str(exc)])
        return result

    def _add(self, outcome):
        if len(self.calls) < MAX_TRACE_CALLS:
            self.calls.append(outcome)


# ----------------------------------------------------------------------------------- inside the job

def emit(record):
    data = (json.dumps(record) + "\n").encode()
    while data:
        data = data[os.write(RESULT_FD, data):]


def run_test(globals_, code, trace, entry_point, index):
    """In the per-test process: call the probe, send the serialised result."""
    random.seed(0)  # tests that draw random inputs draw the same ones for reference and candidate
    if entry_point not in globals_:
        emit({"t": index, "error": "NameError"})
        return
    try:
        exec(code, globals_)
        fn, probe_fn = globals_[entry_point], globals_[PROBE_NAME]
        if trace:
            recorder = Recorder(fn)
            try:
                probe_fn(recorder)
            except BaseException as exc:
                recorder.calls.append(["abort", type(exc).__name__])
            emit({"t": index, "trace": recorder.calls})
            return
        value = probe_fn(fn)
        try:
            emit({"t": index, "value": encode(value, [200_000])})
        except Unserialisable as exc:
            emit({"t": index, "unserialisable": str(exc)})
    except BaseException as exc:
        emit({"t": index, "error": type(exc).__name__})


def zygote(job, start):
    """pid 1 of the job namespace, after lock-down: import the program once, fork per test."""
    probes = job["probes"]
    codes = {i: compile(probes[i]["source"], "<test>", "exec") for i in range(start, len(probes))}
    globals_ = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(job["program"], "solution.py", "exec"), globals_)
        if job["preamble"]:
            exec(compile(job["preamble"], "<tests>", "exec"), globals_)
    except BaseException as exc:
        emit({"import_error": type(exc).__name__})
        os._exit(0)
    emit({"ready": True})
    gc.freeze()  # forked tests then never walk (and copy) the zygote's objects
    for index in range(start, len(probes)):
        pid = os.fork()
        if pid == 0:
            try:
                run_test(globals_, codes[index], probes[index]["trace"], job["entry_point"], index)
            finally:
                os._exit(0)
        _, status, usage = os.wait4(pid, 0)
        emit({"t": index, "exit": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime,
              "rss": usage.ru_maxrss})
    os._exit(0)


def write_id_map(uid, gid):
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"1000 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"1000 {gid} 1")


def mount(source, target, fstype, flags, data):
    check(libc.mount(source, target, fstype, ctypes.c_ulong(flags), data), f"mount {target.decode()}")


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def lock_down(config, seccomp_bpf):
    """rlimits, no capabilities, no_new_privs, seccomp. After this the process can only compute."""
    mb = 1 << 20
    limits = [(resource.RLIMIT_AS, config["memory_mb"] * mb), (resource.RLIMIT_FSIZE, config["fsize_mb"] * mb),
              (resource.RLIMIT_NOFILE, config["nofile"]), (resource.RLIMIT_NPROC, config["nproc"]),
              (resource.RLIMIT_CORE, 0)]
    for what, value in limits:
        resource.setrlimit(what, (value, value))
    cpu = int(config["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for cap in range(CAP_LAST + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = CapHeader(0x20080522, 0), (CapData * 2)()
    check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if seccomp_bpf:
        buffer = ctypes.create_string_buffer(seccomp_bpf, len(seccomp_bpf))
        prog = SockFprog(len(seccomp_bpf) // 8, ctypes.cast(buffer, ctypes.c_void_p))
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def holder(config, seccomp_bpf, pipes):
    """Forked from the executor: make the job's namespaces, start the zygote, report its pid, wait."""
    ctl_w, job_r, res_w, out_w, err_w = pipes
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
    write_id_map(uid, gid)
    mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            flags = MS_NOSUID | MS_NODEV
            mount(b"proc", b"/proc", b"proc", flags | MS_NOEXEC, None)
            tmpfs = f"size={config['tmpfs_mb']}m,nr_inodes=4096,mode=1777".encode()
            mount(b"tmpfs", b"/tmp", b"tmpfs", flags, tmpfs)
            if os.path.isdir("/dev/shm"):
                mount(b"tmpfs", b"/dev/shm", b"tmpfs", flags, tmpfs)
            os.chdir("/tmp")
            os.setsid()  # kill(0, ...) and killpg then reach only the job's own processes
            null = os.open("/dev/null", os.O_RDONLY)
            for src, dst in ((null, 0), (out_w, 1), (err_w, 2), (res_w, RESULT_FD), (job_r, JOB_FD)):
                os.dup2(src, dst)
            os.closerange(JOB_FD + 1, 1 << 16)
            lock_down(config, seccomp_bpf)
            message = read_frame(JOB_FD)
            os.close(JOB_FD)
        except BaseException as exc:
            os.write(2, f"sandbox setup failed: {exc}\n".encode())
            os._exit(70)
        zygote(message["job"], message["start"])
    for fd in (job_r, res_w, out_w, err_w):
        os.close(fd)
    os.write(ctl_w, str(pid).encode())
    os.close(ctl_w)
    os.waitpid(pid, 0)
    os._exit(0)


class JobNamespace:
    """A holder + locked-down zygote made ahead of time; the zygote waits for its job on a pipe."""

    def __init__(self, config, seccomp_bpf):
        ctl_r, ctl_w = os.pipe()
        job_r, self.job_w = os.pipe()
        self.fds = {}
        child_ends = [ctl_w, job_r]
        for name in ("res", "out", "err"):
            r, w = os.pipe()
            os.set_blocking(r, False)
            self.fds[r] = name
            child_ends.append(w)
        self.holder_pid = os.fork()
        if self.holder_pid == 0:
            try:
                for fd in [0, 1, ctl_r, self.job_w, *self.fds]:
                    os.close(fd)
                holder(config, seccomp_bpf, child_ends)
            except BaseException as exc:
                os.write(2, f"job namespace setup failed: {exc}\n".encode())
            finally:
                os._exit(70)
        for fd in child_ends:
            os.close(fd)
        self.ctl_r, self.zygote_pid = ctl_r, None

    def wait_ready(self):
        """The zygote's pid, once the holder has made it (it was made while the executor was idle)."""
        if self.zygote_pid is None:
            pid = os.read(self.ctl_r, 32)
            os.close(self.ctl_r)
            if not pid:
                self.kill()
                raise RuntimeError("job namespace setup failed (see the sandbox log)")
            self.zygote_pid = int(pid)
        return self.zygote_pid

    def start(self, job, start):
        self.wait_ready()
        try:
            write_frame(self.job_w, {"job": job, "start": start})
        except OSError as exc:
            raise RuntimeError(f"job zygote is gone: {exc}") from None
        finally:
            os.close(self.job_w)

    def kill(self):
        for pid in (self.zygote_pid, self.holder_pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Segment:
    """One zygote's run over tests[start:], supervised from outside the job."""

    def __init__(self, namespace, job, start, results, io):
        self.ns, self.job, self.results, self.io, self.current = namespace, job, results, io, start
        self.fds = dict(namespace.fds)
        self.timeout = float(job["timeout"]) + GRACE_S
        self.buffer, self.pending, self.res_bytes, self.ready = b"", None, 0, False
        namespace.start(job, start)

    def run(self):
        """Returns the index to restart from, or None when this job is done. The namespace is killed
        either way; the caller reaps its holder later (teardown overlaps with the reply)."""
        deadline = time.monotonic() + self.timeout
        stop_reason = None
        while self.fds and self.current < len(self.results):
            wait = deadline - time.monotonic()
            if wait <= 0:
                stop_reason = "timeout"
                break
            readable, _, _ = select.select(list(self.fds), [], [], wait)
            for fd in readable:
                progressed, violation = self._read(fd)
                if progressed:
                    deadline = time.monotonic() + self.timeout
                if violation:
                    stop_reason = violation
                    break
            if stop_reason:
                break
        self.ns.kill()
        self._drain()
        return self._close_out(stop_reason)

    def _read(self, fd):
        name = self.fds[fd]
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False, None
        if not data:
            os.close(fd)
            del self.fds[fd]
            return False, None
        if name != "res":
            return False, self._output(name, data)
        self.res_bytes += len(data)
        if self.res_bytes > 4 * MAX_VALUE_CHARS * max(1, len(self.job["probes"])):
            return False, "output_limit"
        self.buffer += data
        progressed = False
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                record = json.loads(line)
            except ValueError:
                return progressed, "corrupt"
            step = self._record(record)
            if step == "corrupt":
                return progressed, "corrupt"
            progressed = progressed or step
        if len(self.buffer) > 4 * MAX_VALUE_CHARS:
            return progressed, "output_limit"
        return progressed, None

    def _output(self, name, data):
        key = "stdout" if name == "out" else "stderr"
        self.io[key + "_bytes"] += len(data)
        if key == "stdout":
            self.io["stdout"] = (self.io["stdout"] + data)[:HEAD]
        else:
            self.io["stderr"] = (self.io["stderr"] + data)[-HEAD:]
        if self.io[key + "_bytes"] > self.io["cap"]:
            self.io[key + "_truncated"] = True
            return "output_limit"
        return None

    def _record(self, record):
        if not isinstance(record, dict):
            return "corrupt"
        if "ready" in record:
            self.ready = True
            return True
        if "import_error" in record:
            name = str(record["import_error"])[:64]
            status = "memory_limit" if name == "MemoryError" else "runtime_error"
            for i in range(self.current, len(self.results)):
                self.results[i] = {"status": status, "detail": f"program raised {name} at import"}
            self.current = len(self.results)
            return True
        index = record.get("t")
        if index != self.current:
            return "corrupt"
        if "exit" in record:
            self.results[index] = self._verdict(self.pending, record["exit"])
            self.pending, self.current = None, index + 1
            self.io["stdout_bytes"] = self.io["stderr_bytes"] = 0  # the output cap is per test
            for key, name in (("cpu", "cpu_s"), ("rss", "peak_rss_kb")):
                value = record.get(key)
                if isinstance(value, (int, float)) and value >= 0:
                    self.io[name] = self.io[name] + value if key == "cpu" else max(self.io[name], int(value))
            return True
        if self.pending is None:
            self.pending = record
        return False

    def _verdict(self, record, exit_code):
        if record is None:
            if exit_code == -signal.SIGXCPU:
                return {"status": "timeout", "detail": "cpu time limit"}
            if exit_code == -signal.SIGKILL:  # the trusted side tells the OOM killer from the program itself
                return {"status": "runtime_error", "detail": "killed by SIGKILL", "sigkill": True}
            return {"status": "runtime_error", "detail": f"no result (exit {exit_code})"}
        if "value" in record:
            return {"status": "ok", "value": record["value"]}
        if "trace" in record:
            return {"status": "ok", "trace": record["trace"]}
        if "unserialisable" in record:
            return {"status": "runtime_error", "detail": "unserialisable result: " + str(record["unserialisable"])[:64]}
        name = str(record.get("error"))[:64]
        return {"status": "memory_limit" if name == "MemoryError" else "runtime_error", "detail": "raised " + name}

    def _drain(self):
        """Keep what is already in the output pipes (test output was written before its exit record)."""
        for fd in list(self.fds):
            if self.fds[fd] != "res":
                try:
                    while data := os.read(fd, 1 << 16):
                        self._output(self.fds[fd], data)
                except BlockingIOError:
                    pass
            os.close(fd)
        self.fds.clear()

    def _close_out(self, stop_reason):
        n = len(self.results)
        if self.current >= n:
            return None
        if stop_reason is None:
            for i in range(self.current, n):
                self.results[i] = {"status": "runtime_error", "detail": "no result (the program ended the run)"}
            return None
        if stop_reason == "timeout" and not self.ready:
            for i in range(self.current, n):
                self.results[i] = {"status": "timeout", "detail": "program import did not finish"}
            return None
        detail = {"timeout": "wall time limit", "output_limit": "output limit", "corrupt": "corrupt result stream"}
        status = {"corrupt": "runtime_error"}.get(stop_reason, stop_reason)
        self.results[self.current] = {"status": status, "detail": detail[stop_reason]}
        return self.current + 1


def executor_cpu_s():
    """CPU seconds used so far by the executor and every job process it has reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 4)


class Executor:
    """Keeps one job namespace ready ahead of time and reaps finished ones after replying."""

    def __init__(self, config, seccomp_bpf):
        self.config, self.seccomp_bpf = config, seccomp_bpf
        self.spare, self.finished = None, []

    def namespace(self):
        namespace, self.spare = self.spare or JobNamespace(self.config, self.seccomp_bpf), None
        self.finished.append(namespace)
        return namespace

    def prepare(self):
        """Between jobs: reap the last job's processes, then make the next namespace."""
        for namespace in self.finished:
            os.waitpid(namespace.holder_pid, 0)
        self.finished = []
        if self.spare is None:
            self.spare = JobNamespace(self.config, self.seccomp_bpf)

    def run_job(self, job):
        results = [None] * len(job["probes"])
        io = {"stdout": b"", "stderr": b"", "stdout_bytes": 0, "stderr_bytes": 0, "stdout_truncated": False,
              "stderr_truncated": False, "cap": self.config["output_cap"], "cpu_s": 0.0, "peak_rss_kb": 0}
        start = 0
        while start is not None:
            io["stdout_bytes"] = io["stderr_bytes"] = 0
            start = Segment(self.namespace(), job, start, results, io).run()
        return {"tests": results, "stdout": io["stdout"].decode(errors="replace"),
                "stderr": io["stderr"].decode(errors="replace"), "stdout_truncated": io["stdout_truncated"],
                "stderr_truncated": io["stderr_truncated"], "cpu_s": round(io["cpu_s"], 4),
                "peak_rss_kb": io["peak_rss_kb"], "executor_cpu_s": executor_cpu_s()}


def main():
    os.dup2(1, 9)  # control out; fd 1 becomes /dev/null so stray prints cannot corrupt frames
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    config = read_frame(0)
    seccomp_bpf = base64.b64decode(config.pop("seccomp_b64")) if config.get("seccomp_b64") else b""
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    executor = Executor(config, seccomp_bpf)
    executor.prepare()
    executor.spare.wait_ready()  # the slot's process count is steady from here on
    write_frame(9, {"ready": True})
    while True:
        try:
            job = read_frame(0)
        except EOFError:
            return
        try:
            reply = executor.run_job(job)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        write_frame(9, reply)
        executor.prepare()


if __name__ == "__main__":
    main()
