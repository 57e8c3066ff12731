"""The warm forking executor. Runs INSIDE bubblewrap under a plain system python (stdlib only); never
imported by the trusted side, which hands this file to bwrap as data.

Per job:   executor --fork--> holder (new user+mount+pid+ipc namespaces) --fork--> zygote (pid 1 there)
bwrap made / and /dev read-only, so nothing a job writes outside its own mounts can reach the next job.
The zygote mounts a fresh /proc and sized tmpfs /tmp and /dev/shm, sets rlimits, drops
every capability, sets no_new_privs, installs the job seccomp filter, then imports the candidate program
once and forks one fresh process per test. Between tests it kills whatever the test left running and
empties /tmp and /dev/shm. Everything the zygote and its children write is untrusted: the executor only
relays it, with caps on size and time, and the trusted side decides. When the zygote (pid 1) dies the
kernel kills everything left in the job's pid namespace.

Control protocol on fds 0/1: frames of a 4-byte big-endian length + UTF-8 JSON.
Zygote -> executor: fixed-size CONTROL messages on a SOCK_SEQPACKET socket at the zygote's fd 3: ready,
import error, test started (carrying the read end of that test's own pipe), test exited. A test process
gets its own fresh pipe as fd 3 in place of that socket, so it cannot write control records; on it, it
writes its one value record, a JSON line {"t", "value"|"trace"|"error"|"unserialisable"}, which the
executor relays unparsed (size-capped) for the trusted side to parse.
"""

import base64
import builtins
import ctypes
import errno
import fcntl
import gc
import json
import math
import os
import random
import resource
import select
import signal
import socket
import stat
import struct
import time

PROBE_NAME = "__diffurl_probe__"
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x8000000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 1, 24, 38, 22, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER, CAP_LAST = 4, 2, 63
# fd 3 is the control socket in the zygote; in a test process the test's own value pipe replaces it there
CONTROL_FD = RESULT_FD = 3
JOB_FD = 4
# kind (R ready, I import error, T test started + its pipe's read end, X test exited), test index, exit code,
# CPU seconds, peak RSS in KiB, exception name
CONTROL = struct.Struct("<ciidq64s")
GRACE_S = 0.5
MAX_VALUE_CHARS = 1 << 20
MAX_RECORD_BYTES = 4 * MAX_VALUE_CHARS    # one test's value record
MAX_JOB_RECORD_BYTES = 24 << 20           # all of a job's records: the reply frame stays under its cap
MAX_CPU_S, MAX_RSS_KB = 1e6, 1 << 40      # a control record's numbers outside [0, these] are corrupt
SCRATCH_DIRS = ("/tmp", "/dev/shm")       # per-job tmpfs, emptied between tests
# A test's pipe is read while the test runs only once it has run this long (always at its exit): a fast
# test's record costs no extra wakeup, a record over the pipe's buffer waits this long at most.
VALUE_WATCH_DELAY_S = 0.005
MAX_TRACE_CALLS = 10_000
MAX_VALUE_ITEMS = 200_000
MAX_VALUE_DEPTH = 32  # the trusted side's decoder stops at the same depth
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
    data = json.dumps(obj, allow_nan=False).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


# ----------------------------------------------------------------------------------- values out

class Unserialisable(Exception):
    pass


def encode(value, budget, depth=0):
    """Plain values -> tagged JSON; exact types only, so no user __eq__/__repr__ ever runs. Bounded in items
    (budget[0]) and in depth, so that the trusted side never meets a value it cannot parse."""
    budget[0] -= 1
    if budget[0] < 0:
        raise Unserialisable("too large")
    if depth > MAX_VALUE_DEPTH:
        raise Unserialisable("too deep")
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
        return [kind.__name__, [encode(x, budget, depth + 1) for x in list.__iter__(list(value))]]
    if kind is dict:
        return ["dict", [[encode(k, budget, depth + 1), encode(v, budget, depth + 1)] for k, v in dict.items(value)]]
    raise Unserialisable(kind.__name__)


def decode(tree):
    """Tagged JSON made by `encode` (here, or by the reference's run) -> fresh plain values."""
    tag = tree[0]
    if tag == "none":
        return None
    if tag in ("bool", "str"):
        return tree[1]
    if tag == "int":
        return int(tree[1])
    if tag == "float":
        return float(tree[1])
    if tag == "complex":
        return complex(float(tree[1]), float(tree[2]))
    if tag == "bytes":
        return bytes.fromhex(tree[1])
    if tag == "dict":
        return {decode(k): decode(v) for k, v in tree[1]}
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag]([decode(x) for x in tree[1]])


def encode_call(args, kwargs):
    """A call's arguments as one tree, or None when they are not plain values."""
    try:
        return encode((args, kwargs), [MAX_VALUE_ITEMS])
    except Unserialisable:
        return None


# Snapshot taken before any program runs: a program cannot pass as ValueError by naming its own class so.
BUILTIN_EXCEPTIONS = {id(c): c for c in vars(builtins).values() if isinstance(c, type) and issubclass(c, BaseException)}


def builtin_class(exc):
    """The nearest builtin class of an exception (its own class for builtin exceptions)."""
    for cls in type.__dict__["__mro__"].__get__(type(exc)):
        if id(cls) in BUILTIN_EXCEPTIONS:
            return BUILTIN_EXCEPTIONS[id(cls)]
    return BaseException


def plain_exception(cls):
    try:
        return cls()
    except Exception:
        return Exception()


class Recorder:
    """Stands in for the candidate in trace probes that run the test's statement here: the reference's run,
    and statements whose calls cannot be replayed. Per call it records the arguments before and after and the
    outcome, and hands the statement a plain decoded copy of the result (or a fresh builtin exception), so no
    object of the program's ever meets the test's own expressions (`==`, `-`, `iter`, `str`). Past
    MAX_TRACE_CALLS calls only their count and a digest of their entries are kept (`finish`)."""

    def __init__(self, fn):
        self.fn, self.calls, self.extra, self.digest = fn, [], 0, None

    def __call__(self, *args, **kwargs):
        before = encode_call(args, kwargs)
        failure = None
        try:
            result = self.fn(*args, **kwargs)
        except MemoryError:
            raise
        except BaseException as exc:
            failure = builtin_class(exc)
        if failure is not None:
            self.add(["raise", failure.__name__, before, encode_call(args, kwargs)])
            raise plain_exception(failure)
        after = encode_call(args, kwargs)
        try:
            tree = encode(result, [MAX_VALUE_ITEMS])
        except Unserialisable as exc:
            failure = str(exc)
        if failure is not None:
            self.add(["unserialisable", failure, before, after])
            raise Unserialisable(failure)  # the statement stops: the program's object never reaches it
        self.add(["ok", tree, before, after])
        return decode(tree)

    def add(self, entry):
        if len(self.calls) < MAX_TRACE_CALLS:
            self.calls.append(entry)
            return
        if self.digest is None:
            import hashlib
            self.digest = hashlib.sha256()
        self.extra += 1
        self.digest.update(json.dumps(entry).encode() + b"\n")

    def finish(self, abort=None):
        """The trace as sent: the entries, an ["overflow", count, digest] entry if any were folded, the abort."""
        trace = list(self.calls)
        if self.digest is not None:
            trace.append(["overflow", self.extra, self.digest.hexdigest()])
        if abort is not None:
            trace.append(["abort", abort])
        return trace


class Replay:
    """A trace test judged as pairs: the calls the reference's run made (encoded arguments only; the results
    stay with the trusted side), made one after another on the candidate. Per call: outcome, arguments after."""

    def __init__(self, calls):
        self.calls = calls

    def run(self, fn):
        outcomes = []
        for tree in self.calls:
            args, kwargs = decode(tree)
            failure = None
            try:
                result = fn(*args, **kwargs)
            except MemoryError:
                raise
            except BaseException as exc:
                failure = builtin_class(exc).__name__
            after = encode_call(args, kwargs)
            if failure is not None:
                outcomes.append(["raise", failure, after])
                continue
            try:
                outcomes.append(["ok", encode(result, [MAX_VALUE_ITEMS]), after])
            except Unserialisable as exc:
                outcomes.append(["unserialisable", str(exc), after])
        return outcomes


def build_probe(probe):
    """What a test process runs: a replay of recorded calls, or the compiled source of the probe function."""
    if "calls" in probe:
        return Replay(probe["calls"])
    return compile(probe["source"], "<test>", "exec")


# ----------------------------------------------------------------------------------- inside the job

def emit(record):
    data = (json.dumps(record) + "\n").encode()
    while data:
        data = data[os.write(RESULT_FD, data):]


def run_test(globals_, code, trace, entry_point, index):
    """In the per-test process: call the probe (or replay the recorded calls), send the serialised result."""
    random.seed(0)  # tests that draw random inputs draw the same ones for reference and candidate
    if entry_point not in globals_:
        emit({"t": index, "error": "NameError"})
        return
    try:
        if isinstance(code, Replay):
            emit({"t": index, "trace": code.run(globals_[entry_point])})
            return
        exec(code, globals_)
        fn, probe_fn = globals_[entry_point], globals_[PROBE_NAME]
        if trace:
            recorder, abort = Recorder(fn), None
            try:
                probe_fn(recorder)
            except BaseException as exc:
                abort = builtin_class(exc).__name__
            emit({"t": index, "trace": recorder.finish(abort)})
            return
        value = probe_fn(fn)
        try:
            emit({"t": index, "value": encode(value, [MAX_VALUE_ITEMS])})
        except Unserialisable as exc:
            emit({"t": index, "unserialisable": str(exc)})
    except BaseException as exc:
        emit({"t": index, "error": builtin_class(exc).__name__})


def zygote(job, start):
    """pid 1 of the job namespace, after lock-down: import the program once, fork per test."""
    channel = socket.socket(fileno=CONTROL_FD)
    probes = job["probes"]
    codes = {i: build_probe(probes[i]) for i in range(start, len(probes))}
    globals_ = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(job["program"], "solution.py", "exec"), globals_)
        if job["preamble"]:
            exec(compile(job["preamble"], "<tests>", "exec"), globals_)
    except BaseException as exc:
        send_control(channel, b"I", name=type(exc).__name__)
        os._exit(0)
    send_control(channel, b"R")
    gc.freeze()  # forked tests then never walk (and copy) the zygote's objects
    for index in range(start, len(probes)):
        value_r, value_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(value_w, RESULT_FD)  # the test's own pipe takes the control socket's place
                os.close(value_w)
                os.close(value_r)
                run_test(globals_, codes[index], probes[index]["trace"], job["entry_point"], index)
            finally:
                os._exit(0)
        os.close(value_w)
        send_control(channel, b"T", index, fd=value_r)
        os.close(value_r)
        _, status, usage = os.wait4(pid, 0)
        end_test()
        send_control(channel, b"X", index, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime,
                     usage.ru_maxrss)
    os._exit(0)


def send_control(channel, kind, index=0, exit_code=0, cpu_s=0.0, rss_kb=0, name="", fd=None):
    """One CONTROL message to the executor; `fd` travels with it (SCM_RIGHTS)."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))] if fd is not None else []
    channel.sendmsg([CONTROL.pack(kind, index, exit_code, cpu_s, rss_kb, name.encode()[:64])], rights)


def end_test():
    """Between tests: kill whatever the last test left running, then empty /tmp and /dev/shm."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pass  # the common case: the test left no process behind
    else:
        while True:
            try:
                os.kill(-1, signal.SIGKILL)  # from pid 1: every other process of the job's pid namespace
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    for path in SCRATCH_DIRS:
        empty_dir(path)


def empty_dir(path):
    """Remove everything in `path` without recursion: a directory's entries move up into `path` (depth
    costs neither stack nor fds), then it goes. Also restores the mode a test may have changed."""
    try:
        os.chmod(path, 0o1777)
    except FileNotFoundError:
        return
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    moved = 0
    try:
        while names := os.listdir(top):
            for name in names:
                try:
                    os.unlink(name, dir_fd=top)
                    continue
                except IsADirectoryError:
                    pass
                os.chmod(name, 0o700, dir_fd=top)
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                try:
                    for inner in os.listdir(sub):
                        if stat.S_ISDIR(os.stat(inner, dir_fd=sub, follow_symlinks=False).st_mode):
                            os.chmod(inner, 0o700, dir_fd=sub)  # moving a directory writes its ".."
                        while True:
                            moved += 1
                            try:
                                os.rename(inner, f".{moved}", src_dir_fd=sub, dst_dir_fd=top)
                                break
                            except (FileExistsError, IsADirectoryError, NotADirectoryError):
                                pass
                            except OSError as exc:
                                if exc.errno != errno.ENOTEMPTY:  # that name is taken by a directory
                                    raise
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)


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
    ctl_w, job_r, control, out_w, err_w = pipes
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
            # fds 0-4 in this order; moved above them first, so that no source is overwritten before its turn
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in (null, out_w, err_w, control, job_r)]
            for dst, src in enumerate(moved):
                os.dup2(src, dst)
            os.closerange(JOB_FD + 1, 1 << 16)
            lock_down(config, seccomp_bpf)
            message = read_frame(JOB_FD)
            os.close(JOB_FD)
        except BaseException as exc:
            os.write(2, f"sandbox setup failed: {exc}\n".encode())
            os._exit(70)
        zygote(message["job"], message["start"])
    for fd in (job_r, control, out_w, err_w):
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
        self.control, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.setblocking(False)
        self.fds = {}
        child_ends = [ctl_w, job_r, zygote_end.detach()]
        for name in ("out", "err"):
            r, w = os.pipe()
            os.set_blocking(r, False)
            self.fds[r] = name
            child_ends.append(w)
        self.holder_pid = os.fork()
        if self.holder_pid == 0:
            try:
                self.control.close()
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
    """One zygote's run over tests[start:], supervised from outside the job.

    The zygote's control stream must be R (or I), then T X for each test in order, nothing else: anything
    out of order, malformed or out of range stops the segment as corrupt. Deadlines are absolute: the
    import, then each test, gets the timeout from the moment it begins (R, the previous X), and no segment
    runs past the job's deadline. Each test's value record comes on its own pipe (the fd sent with T).
    """

    def __init__(self, namespace, job, start, results, io, job_deadline):
        self.ns, self.job, self.results, self.io, self.current = namespace, job, results, io, start
        self.fds = dict(namespace.fds)  # stdout and stderr of the whole job
        self.timeout, self.job_deadline = float(job["timeout"]) + GRACE_S, job_deadline
        self.ready, self.started, self.value_fd, self.value_watch_at = False, False, None, 0.0
        self.record, self.record_problem = bytearray(), None
        namespace.start(job, start)
        self.deadline = self._deadline()

    def _deadline(self):
        return min(time.monotonic() + self.timeout, self.job_deadline)

    def run(self):
        """Returns the index to restart from, or None when this job is done. The namespace is killed
        either way; the caller reaps its holder later (teardown overlaps with the reply)."""
        stop_reason = None
        while stop_reason is None and self.current < len(self.results):
            now = time.monotonic()
            if now >= self.deadline:
                stop_reason = "timeout"
                break
            watched, wake = [*self.fds, self.ns.control], self.deadline
            if self.value_fd is not None and now >= self.value_watch_at:
                watched.append(self.value_fd)
            elif self.value_fd is not None:
                wake = min(wake, self.value_watch_at)
            readable = select.select(watched, [], [], wake - now)[0]
            if self.value_fd in readable:
                self._read_value()
            for fd in readable:
                if fd in self.fds and stop_reason is None:
                    stop_reason = self._read_output(fd)
            if self.ns.control in readable and stop_reason is None:
                stop_reason = self._control()  # last: it may close the value pipe that was selected above
        self.ns.kill()
        self._drain()
        return self._close_out(stop_reason)

    # ------------------------------------------------------------------------------- the control stream

    def _control(self):
        """Take one CONTROL message; a stop reason, or None."""
        try:
            data, ancillary, flags, _ = self.ns.control.recvmsg(CONTROL.size + 1, socket.CMSG_LEN(4))
        except BlockingIOError:
            return None
        except OSError:
            return "corrupt"
        fds = []
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds += struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4])
        try:
            if not data and not fds:
                return "ended"  # the zygote is gone
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) != CONTROL.size:
                return "corrupt"
            return self._step(*CONTROL.unpack(data), fds)
        finally:
            for fd in fds:  # any fd _step did not take
                os.close(fd)

    def _step(self, kind, index, exit_code, cpu_s, rss_kb, name, fds):
        if fds and kind != b"T":
            return "corrupt"
        if kind == b"R" and not self.ready:
            self.ready, self.deadline = True, self._deadline()
            return None
        if kind == b"I" and not self.ready:
            name = name.rstrip(b"\0").decode("ascii", "replace")
            status = "memory_limit" if name == "MemoryError" else "runtime_error"
            for i in range(self.current, len(self.results)):
                self.results[i] = {"status": status, "detail": f"program raised {name} at import"}
            self.current = len(self.results)
            return None
        if not self.ready or index != self.current:
            return "corrupt"
        if kind == b"T" and not self.started and len(fds) == 1 and stat.S_ISFIFO(os.fstat(fds[0]).st_mode):
            self.started, self.value_fd = True, fds.pop()
            self.value_watch_at = time.monotonic() + VALUE_WATCH_DELAY_S
            os.set_blocking(self.value_fd, False)
            return None
        if kind == b"X" and self.started and math.isfinite(cpu_s) and 0 <= cpu_s <= MAX_CPU_S \
                and 0 <= rss_kb <= MAX_RSS_KB:
            self._read_value(drain=True)  # all the test wrote is in the pipe: it has exited
            self.results[index] = self._outcome(exit_code)
            self.io["cpu_s"] += cpu_s
            self.io["peak_rss_kb"] = max(self.io["peak_rss_kb"], rss_kb)
            self.io["stdout_bytes"] = self.io["stderr_bytes"] = 0  # the output cap is per test
            self._close_value()
            self.current, self.started, self.record, self.record_problem = index + 1, False, bytearray(), None
            self.deadline = self._deadline()
            return None
        return "corrupt"

    # ------------------------------------------------------------------------------- the test's value pipe

    def _read_value(self, drain=False):
        """Read the current test's pipe: one chunk, or (`drain`) all that is in it now; at most MAX_RECORD_BYTES."""
        while self.value_fd is not None:
            if drain and not select.select([self.value_fd], [], [], 0)[0]:
                return
            try:
                data = os.read(self.value_fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data, self.record_problem = b"", "unreadable"
            if not data:
                self._close_value()  # end of file: no writer is left
                return
            self.record += data
            if len(self.record) > MAX_RECORD_BYTES:
                self.record, self.record_problem = bytearray(), "too large"
                self._close_value()  # the test's further writes fail (EPIPE)
                return
            if not drain:
                return

    def _close_value(self):
        if self.value_fd is not None:
            os.close(self.value_fd)
            self.value_fd = None

    def _outcome(self, exit_code):
        """The test's exit code and its record, unparsed (the trusted side parses and judges it)."""
        if self.record_problem == "too large":
            return {"status": "output_limit", "detail": f"result record over {MAX_RECORD_BYTES >> 20} MiB"}
        if self.io["record_bytes"] + len(self.record) > MAX_JOB_RECORD_BYTES:
            return {"status": "output_limit", "detail": f"results of the job over {MAX_JOB_RECORD_BYTES >> 20} MiB"}
        try:
            text = self.record.decode("ascii")  # a record from run_test is ASCII JSON
        except UnicodeDecodeError:
            text = None
        if text is None or self.record_problem:
            return {"status": "runtime_error", "detail": "corrupt result record"}
        self.io["record_bytes"] += len(text)
        return {"exit": exit_code, "record": text}

    # ------------------------------------------------------------------------------- stdout, stderr, the end

    def _read_output(self, fd):
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return None
        if not data:
            os.close(fd)
            del self.fds[fd]
            return None
        return self._output(self.fds[fd], data)

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

    def _drain(self):
        """Keep what is already in the output pipes (test output was written before its exit record)."""
        for fd, name in self.fds.items():
            try:
                while data := os.read(fd, 1 << 16):
                    self._output(name, data)
            except BlockingIOError:
                pass
            os.close(fd)
        self.fds.clear()
        self._close_value()
        self.ns.control.close()

    def _close_out(self, stop_reason):
        n = len(self.results)
        if self.current >= n:
            return None
        remaining = range(self.current, n)
        if stop_reason == "ended":
            for i in remaining:
                self.results[i] = {"status": "runtime_error", "detail": "no result (the program ended the run)"}
            return None
        if stop_reason == "timeout" and self.deadline >= self.job_deadline:
            for i in remaining:
                self.results[i] = {"status": "timeout", "detail": "job wall time limit"}
            return None
        status = {"corrupt": "runtime_error"}.get(stop_reason, stop_reason)
        if not self.ready:  # the import itself did it: the same again for every later test
            detail = {"timeout": "program import did not finish", "output_limit": "output limit at import",
                      "corrupt": "corrupt control stream at import"}[stop_reason]
            for i in remaining:
                self.results[i] = {"status": status, "detail": detail}
            return None
        detail = {"timeout": "wall time limit", "output_limit": "output limit", "corrupt": "corrupt control stream"}
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
              "stderr_truncated": False, "cap": self.config["output_cap"], "cpu_s": 0.0, "peak_rss_kb": 0,
              "record_bytes": 0}
        # the import and each test once, at most: the trusted side's watchdog allows more than this
        job_deadline = time.monotonic() + (len(job["probes"]) + 1) * (float(job["timeout"]) + GRACE_S)
        start = 0
        while start is not None:
            io["stdout_bytes"] = io["stderr_bytes"] = 0
            start = Segment(self.namespace(), job, start, results, io, job_deadline).run()
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
