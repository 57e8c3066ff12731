"""The supervisor of one sandbox: runs INSIDE bubblewrap under a plain system python3 (stdlib only); the trusted
side hands this package to bwrap as data and never imports this module.

Processes, all inside the slot's bwrap sandbox:

    supervisor --fork, before any job is read--> template --fork per box--> holder --fork--> box (pid 1)

The template never reads a job: it only makes boxes, so no box is a fork of a process that has seen job data.
A holder makes fresh user, mount, pid and IPC namespaces; its child, pid 1 there, mounts its own /proc and
sized tmpfs /tmp and /dev/shm, sets rlimits, drops every capability, sets no_new_privs, installs the job
seccomp filter, and then waits for its payload (boxes.py says what a test box and a candidate box do). When
a box's pid 1 dies the kernel kills everything else in its pid namespace; the holder reaps it and exits with
its status, and the template reports the holder's rusage (the box and all it reaped), measured outside the
box. A box is used for one test (a candidate) or one run of tests (the test box) and then killed.

Per job the supervisor starts a test box with the tests, and per test a candidate box with the program; it
hands the candidate's two pipe ends to the test box, watches both boxes' output, enforces absolute
deadlines, and kills the candidate when the test reports its verdict. A test box that dies, hangs or floods
its output ends that test only: the next test gets a new test box. Nothing a box writes is parsed here
except the test box's fixed-size messages; the candidate's pipes are read by the test box alone.

Protocol with the trusted side on fds 0 / 1: frames of a 4-byte big-endian length + JSON: first a config,
answered {"ready": true}; then one job per frame, answered by one reply frame.
"""

import base64
import ctypes
import errno
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import stat
import struct
import time

from . import boxes, codec

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x8000000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 1, 24, 38, 22, 47
PR_SET_DUMPABLE, PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER, CAP_LAST = 4, 4, 2, 63
# a box's fds: 0 /dev/null, 1 stdout, 2 stderr, 3 its payload, 4 its socket to the supervisor; a candidate
# process's: 3 its calls, 4 its replies
IN_FD, OUT_FD = 3, 4
SPARES = {"test": 1, "host": 1}  # boxes kept ready
SCRATCH_DIRS = ("/tmp", "/dev/shm")  # a box's own tmpfs, emptied after each test
HOST_MSG = struct.Struct("<ciidq")  # T (start test i: + its two pipe ends), K (end it), X (ended: exit, cpu, rss)
GRACE_S = 0.5
BOX_WAIT_S = 10.0         # the longest a job waits for the template to make a box
REAP_WAIT_S = 2.0         # the longest a job waits for its killed boxes to be reaped
HEAD = 4096
MAX_PAYLOAD = 64 << 20
PRELOAD = ("typing", "math", "collections", "itertools", "functools", "re", "string", "heapq", "bisect")

libc = ctypes.CDLL(None, use_errno=True)


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


# ------------------------------------------------------------------------------------------------ a box

def write_id_map(uid, gid):
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write("1000 %d 1" % uid)
    with open("/proc/self/gid_map", "w") as f:
        f.write("1000 %d 1" % gid)


def mount(source, target, fstype, flags, data):
    check(libc.mount(source, target, fstype, ctypes.c_ulong(flags), data), "mount %s" % target.decode())


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


def holder(config, seccomp_bpf, ends, ready_w):
    """Forked from the template for a candidate host: make the box's namespaces, start its pid 1, report that
    pid, wait, exit with its status (128 + signal when killed)."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
    write_id_map(uid, gid)
    mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    pid = os.fork()
    if pid == 0:
        try:
            host_box_init(config, seccomp_bpf, ends)
        except BaseException as exc:  # noqa: B036 - setup failed: say so in the sandbox log
            os.write(2, ("box setup failed: %s\n" % exc).encode())
        os._exit(70)
    for fd in ends:
        os.close(fd)
    os.write(ready_w, str(pid).encode())
    os.close(ready_w)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    os._exit(128 - code if code < 0 else min(code, 127))


def host_box_init(config, seccomp_bpf, ends):
    """pid 1 of a candidate host box: its own /proc, /tmp and /dev/shm; locked down like everything in a box,
    but it never runs candidate code (nothing else of its uid may read or write its memory, and its children
    cannot signal it: it is their pid namespace's init). It takes the job's program, then forks one candidate
    process per test (`HOST_MSG` T, with the test's two pipe ends) and, told K, kills every other process of
    its pid namespace, empties /tmp and /dev/shm, removes any SysV IPC object, and reports the candidate's exit
    code and the CPU and memory its processes used. So each test's candidate is a fresh fork of a process that
    holds nothing but this job's program text, and finds nothing an earlier test left."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    flags = MS_NOSUID | MS_NODEV
    mount(b"proc", b"/proc", b"proc", flags | MS_NOEXEC, None)
    tmpfs = ("size=%dm,nr_inodes=4096,mode=1777" % config["tmpfs_mb"]).encode()
    for path in SCRATCH_DIRS:
        if os.path.isdir(path):
            mount(b"tmpfs", path.encode(), b"tmpfs", flags, tmpfs)
    os.chdir("/tmp")
    box_fds(ends)
    lock_down(config, seccomp_bpf)
    payload = codec.read_frame(IN_FD, MAX_PAYLOAD)
    os.close(IN_FD)
    sock = socket.socket(fileno=OUT_FD)
    child, index = None, None
    while True:
        data, fds = receive(sock, HOST_MSG.size, 2)
        if not data:
            os._exit(0)  # the supervisor is gone
        kind, test, _, _, _ = HOST_MSG.unpack(data) if len(data) == HOST_MSG.size else (b"", -1, 0, 0.0, 0)
        if kind == b"T" and child is None and len(fds) == 2:
            child, index = os.fork(), test
            if child == 0:
                try:
                    candidate_process(payload, fds, sock)
                finally:
                    os._exit(70)
        elif kind == b"K" and child is not None and test == index:
            code, cpu, rss = end_candidate(child)
            sock.send(HOST_MSG.pack(b"X", index, code, cpu, rss))
            child = None
        for fd in fds:
            os.close(fd)


def candidate_process(payload, fds, sock):
    """One test's candidate, forked from the host (locked down as it is): a session of its own, the test's
    pipes as fds 3 and 4 and nothing else, then the program and the test's calls."""
    os.setsid()
    sock.close()
    for dst, src in zip((IN_FD, OUT_FD), [fcntl.fcntl(fd, fcntl.F_DUPFD, OUT_FD + 1) for fd in fds]):
        os.dup2(src, dst)
    os.closerange(OUT_FD + 1, 1 << 16)
    boxes.serve_candidate(payload, IN_FD, OUT_FD)
    os._exit(0)


def end_candidate(child):
    """From pid 1: kill every other process of the pid namespace and reap them all, then remove what they left
    (files in /tmp and /dev/shm, SysV IPC objects); (the candidate's exit code, CPU seconds and peak RSS KiB of
    everything reaped)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code, rss = -signal.SIGKILL, 0
    while True:
        try:
            os.kill(-1, signal.SIGKILL)  # from pid 1: every other process of its pid namespace
        except ProcessLookupError:
            pass
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        rss = max(rss, usage.ru_maxrss)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for path in SCRATCH_DIRS:
        empty_dir(path)
    remove_ipc_objects()
    return code, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, rss


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
        while True:
            names = os.listdir(top)
            if not names:
                return
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
                                os.rename(inner, ".%d" % moved, src_dir_fd=sub, dst_dir_fd=top)
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


IPC_RMID = 0


def remove_ipc_objects():
    """Remove every SysV shared memory segment, semaphore set and message queue of the box's IPC namespace."""
    for table in ("shm", "sem", "msg"):
        try:
            with open("/proc/sysvipc/" + table) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            ident = int(line.split()[1])
            if table == "sem":
                libc.semctl(ident, 0, IPC_RMID, None)
            else:
                getattr(libc, table + "ctl")(ident, IPC_RMID, None)


def receive(sock, size, max_fds):
    """(data, fds) of one message on a SOCK_SEQPACKET socket; fds beyond `max_fds` are closed."""
    data, ancillary, _, _ = sock.recvmsg(size + 1, socket.CMSG_LEN(4 * max_fds))
    fds = []
    for level, kind, payload in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds += struct.unpack("%di" % (len(payload) // 4), payload[:len(payload) // 4 * 4])
    for fd in fds[max_fds:]:
        os.close(fd)
    return data, fds[:max_fds]


def test_box_init(config, seccomp_bpf, ends):
    """A test box: forked from the template with no namespaces of its own (it runs only the problem's tests,
    and candidate boxes, each in a pid namespace of its own, cannot see it); nothing else of its uid may read
    or write its memory. Locked down like a candidate, then its tests."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    box_fds(ends)
    lock_down(config, seccomp_bpf)
    boxes.run_tests(codec.read_frame(IN_FD, MAX_PAYLOAD), OUT_FD)
    os._exit(0)


def box_fds(ends):
    """A new session; fds 0-4 as the box expects them, nothing else open."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    # moved above 0-4 first, so that no source is overwritten before its turn
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in (null, *ends)]
    for dst, src in enumerate(moved):
        os.dup2(src, dst)
    os.closerange(OUT_FD + 1, 1 << 16)


# ------------------------------------------------------------------------------------------------ the template

def send_message(sock, message, fds=()):
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else []
    sock.sendmsg([json.dumps(message).encode()], rights)


def template_main(sock, config, seccomp_bpf):
    """Make boxes on request ({"make": role, "id": n}) and report each holder's end; never reads a job."""
    gc.freeze()  # boxes never walk (and so copy) the template's objects
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    roles = {}
    while True:
        readable = select.select([sock, wake_r], [], [])[0]
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            reap(sock, roles)
        if sock in readable:
            data = sock.recv(256)
            if not data:
                os._exit(0)  # the supervisor is gone: PDEATHSIG takes the holders, and they their boxes
            request = json.loads(data)
            make_box(sock, config, seccomp_bpf, request["make"], request["id"], roles)


def reap(sock, roles):
    """Report each box that ended: its exit code (killed by signal s: -s) and its rusage with all it reaped."""
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        if roles.pop(pid, None) == "host" and code > 127:  # the holder passes on its box's death by signal
            code = 128 - code
        send_message(sock, {"reaped": pid, "exit": code,
                            "cpu_s": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss,
                            "template_cpu_s": process_cpu_s()})


def make_box(sock, config, seccomp_bpf, role, box_id, roles):
    """Fork a box of `role` (a candidate: through a holder); send the supervisor its pids and its ends of the
    box's fds. `roles` maps the pids this template reaps to their role."""
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    box_ends, ours = [out_w, err_w, in_r, theirs.detach()], [out_r, err_r, in_w, mine.detach()]
    try:
        pid = os.fork()
    except OSError as exc:
        pid, failure = None, str(exc)
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()
            os.close(ready_r)
            for fd in ours:
                os.close(fd)
            if role == "host":
                holder(config, seccomp_bpf, box_ends, ready_w)
            else:
                os.close(ready_w)
                test_box_init(config, seccomp_bpf, box_ends)
        finally:
            os._exit(70)
    os.close(ready_w)
    for fd in box_ends:
        os.close(fd)
    if pid is None:
        box_pid = b""
    elif role == "host":
        box_pid = os.read(ready_r, 32)
        failure = "the holder did not start"
    else:
        box_pid = str(pid).encode()
    os.close(ready_r)
    if box_pid:
        roles[pid] = role
        send_message(sock, {"made": box_id, "holder": pid, "pid": int(box_pid)}, ours)
    else:
        send_message(sock, {"failed": box_id, "why": failure})
    for fd in ours:
        os.close(fd)


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
    """The supervisor's side of the template: spare boxes, and the usage of every box reaped."""

    def __init__(self, config, seccomp_bpf):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.sock.close()
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                template_main(theirs, config, seccomp_bpf)
            finally:
                os._exit(70)
        theirs.close()
        self.spares = {role: [] for role in SPARES}
        self.pending = {}           # box id -> role
        self.next_id = 0
        self.live = {}              # reaped pid -> Box, until reaped
        self.reaped = []            # (cpu_s, rss_kb) of boxes reaped since the last `usage()`
        self.failures = 0
        self.template_cpu_s = 0.0   # the template's and every box's it reaped, as of its last report

    def request(self, role):
        self.next_id += 1
        self.pending[self.next_id] = role
        self.sock.send(json.dumps({"make": role, "id": self.next_id}).encode())

    def replenish(self):
        for role, want in SPARES.items():
            have = len(self.spares[role]) + sum(r == role for r in self.pending.values())
            for _ in range(want - have):
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
            if select.select([self.sock], [], [], wait)[0]:
                self.handle()

    def handle(self):
        """One message from the template."""
        data, fds = receive(self.sock, 1024, 4)
        if not data:
            raise RuntimeError("the template is gone")
        message = json.loads(data)
        if "made" in message and len(fds) == 4:
            box = Box(self.pending.pop(message["made"]), message["holder"], message["pid"], fds)
            self.live[box.holder] = box
            self.spares[box.role].append(box)
            return
        for fd in fds:
            os.close(fd)
        if "failed" in message:
            self.pending.pop(message["failed"], None)
            self.failures += 1
            time.sleep(0.01)  # a box that could not be made now (processes of a killed box still exiting)
        elif "reaped" in message:
            box = self.live.pop(message["reaped"], None)
            if box is not None:
                box.exit = message["exit"]
            self.reaped.append((message["cpu_s"], message["rss_kb"]))
            self.template_cpu_s = message["template_cpu_s"]
        else:
            raise RuntimeError("unexpected message from the template: %r" % data[:100])

    def settle(self, boxes, deadline):
        """Wait until `boxes` are reaped and the spares are ready (the slot's process count is then steady)."""
        self.replenish()
        while (any(b.exit is None for b in boxes) or self.pending) and time.monotonic() < deadline:
            if select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                self.handle()
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
                "executor_cpu_s": round(process_cpu_s() + self.supply.template_cpu_s, 4)}

    def _box(self, role, payload):
        box = self.supply.take(role, min(self.deadline, time.monotonic() + BOX_WAIT_S))
        if box is None:
            raise RuntimeError("the template made no %s box (%d failures)" % (role, self.supply.failures))
        self.used.append(box)
        if not write_all(box.input, payload, self.deadline):
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
                watched = [sock, self.supply.sock] + [fd for fd, _ in outputs]
                if self.host_sock is not None:
                    watched.append(self.host_sock)
                readable = select.select(watched, [], [], test_deadline - now)[0]
                for fd, name in outputs:
                    if fd in readable and stop is None and self._output(fd, name):
                        stop = "output_limit"
                if self.supply.sock in readable:
                    self.supply.handle()
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
                elif message[0] == b"X" and message[1] == current and started:
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
            self.io["stdout"] = (self.io["stdout"] + data)[:HEAD]
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


def process_cpu_s():
    """CPU seconds used so far by this process and every process it has reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
        try:
            reply = Job(supply, config, job).run()
        except Exception as exc:  # noqa: BLE001 - reported to the trusted side, which restarts the sandbox
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        codec.write_frame(9, reply)
