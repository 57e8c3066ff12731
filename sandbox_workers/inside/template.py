"""The template of one sandbox and the boxes it makes (stdlib only; runs INSIDE bubblewrap, never imported by
the trusted side, which hands this package to bwrap as data).

    supervisor --fork, before any job is read--> template --fork--> test box
                                                          --fork--> holder --fork--> candidate host (pid 1)
                                                                                      --fork per test--> candidate

The template never reads a job, and holds nothing that depends on what came before (template_main says how):
every box starts from the same memory. Whatever runs job data is locked down (rlimits, no capabilities,
no_new_privs, the job seccomp filter) first:
  * a test box is a plain fork (it runs only the problem's tests, and no candidate can see it: candidates
    live in pid namespaces of their own); nothing else of its uid may read or write its memory;
  * a candidate host is pid 1 of fresh user, mount, pid and IPC namespaces (made by its holder), with its own
    /proc, /tmp and /dev/shm. It holds the job's program as text and never runs it: per test it forks a fresh
    candidate process (in an IPC namespace of its own, locked down before the program runs), and after the
    test it kills every other process of its namespace, empties /tmp and /dev/shm, and reports the
    candidate's exit code and the rusage of all it reaped. When pid 1 dies, the kernel kills everything else
    in its pid namespace.
Boxes are reparented to the supervisor (a subreaper), which reaps each with the rusage of the box and
everything it reaped: CPU and memory are measured outside the candidate, never reported by it.
"""

import ctypes
import errno
import fcntl
import gc
import json
import os
import resource
import signal
import socket
import stat
import struct

from . import boxes, codec

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x8000000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 1, 24, 38, 22, 47
PR_SET_DUMPABLE, PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER, CAP_LAST = 4, 4, 2, 63
# a box's fds: 0 /dev/null, 1 stdout, 2 stderr, 3 its payload, 4 its socket to the supervisor; a candidate
# process's: 3 its calls, 4 its replies
IN_FD, OUT_FD = 3, 4
SCRATCH_DIRS = ("/tmp", "/dev/shm")  # a host's own tmpfs, emptied after each test
HOST_MSG = struct.Struct("<ciidq")  # T (start test i: + its two pipe ends), K (end it), X (ended: exit, cpu, rss)
TEST_BOX_CPU_S = 3600               # a test box's CPU adds up over a job's tests: the wall deadlines bound it
MAX_PAYLOAD = 64 << 20

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


def lock_down(config, seccomp_bpf, cpu_s=None):
    """rlimits, no capabilities, no_new_privs, seccomp. After this the process can only compute. `cpu_s`: the
    CPU limit (default: a test's), which the candidate processes forked from this one each get afresh."""
    mb = 1 << 20
    limits = [(resource.RLIMIT_AS, config["memory_mb"] * mb), (resource.RLIMIT_FSIZE, config["fsize_mb"] * mb),
              (resource.RLIMIT_NOFILE, config["nofile"]), (resource.RLIMIT_NPROC, config["nproc"]),
              (resource.RLIMIT_CORE, 0)]
    for what, value in limits:
        resource.setrlimit(what, (value, value))
    cpu = int(config["cpu_s"] if cpu_s is None else cpu_s)
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


def holder(config, seccomp_bpf, ends, ours, report):
    """A candidate host's holder: make the box's namespaces, start its pid 1, report both pids and the
    supervisor's ends of the box's fds on `report`, wait, exit with pid 1's status (128 + signal when
    killed)."""
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
    write_id_map(uid, gid)
    mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    pid = os.fork()
    if pid == 0:
        try:
            report.close()
            for fd in ours:
                os.close(fd)
            host_box_init(config, seccomp_bpf, ends)
        except BaseException as exc:  # noqa: B036 - setup failed: say so in the sandbox log
            os.write(2, ("box setup failed: %s\n" % exc).encode())
        os._exit(70)
    for fd in ends:
        os.close(fd)
    send_message(report, {"made": "host", "holder": os.getpid(), "pid": pid}, ours)
    for fd in ours:
        os.close(fd)
    report.close()
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    os._exit(128 - code if code < 0 else min(code, 127))


def host_box_init(config, seccomp_bpf, ends):
    """pid 1 of a candidate host box: its own /proc, /tmp and /dev/shm. It never runs candidate code and keeps
    the capabilities of its own user namespace (nothing else of its uid may read or write its memory, and its
    children cannot signal it: it is their pid namespace's init). It takes the job's program, then forks one
    candidate process per test (`HOST_MSG` T, with the test's two pipe ends) and, told K, kills every other
    process of its pid namespace, empties /tmp and /dev/shm, and reports the candidate's exit code and the CPU
    and memory its processes used. So each test's candidate is a fresh fork of a process that holds nothing
    but this job's program text, and finds nothing an earlier test left."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as init, only signals with a handler reach it from inside
    flags = MS_NOSUID | MS_NODEV
    mount(b"proc", b"/proc", b"proc", flags | MS_NOEXEC, None)
    tmpfs = ("size=%dm,nr_inodes=4096,mode=1777" % config["tmpfs_mb"]).encode()
    for path in SCRATCH_DIRS:
        if os.path.isdir(path):
            mount(b"tmpfs", path.encode(), b"tmpfs", flags, tmpfs)
    os.chdir("/tmp")
    box_fds(ends)
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
                    candidate_process(config, seccomp_bpf, payload, fds, sock)
                finally:
                    os._exit(70)
        elif kind == b"K" and child is not None and test == index:
            code, cpu, rss = end_candidate(child)
            sock.send(HOST_MSG.pack(b"X", index, code, cpu, rss))
            child = None
        for fd in fds:
            os.close(fd)


def candidate_process(config, seccomp_bpf, payload, fds, sock):
    """One test's candidate, forked from the host: an IPC namespace of its own (no SysV object or POSIX message
    queue of an earlier test), a session of its own, the test's pipes as fds 3 and 4 and nothing else, the
    out-of-memory killer's first choice in the slot, locked down, then the program and the test's calls."""
    check(libc.unshare(CLONE_NEWIPC), "unshare")
    os.setsid()
    sock.close()
    for dst, src in zip((IN_FD, OUT_FD), [fcntl.fcntl(fd, fcntl.F_DUPFD, OUT_FD + 1) for fd in fds]):
        os.dup2(src, dst)
    os.closerange(OUT_FD + 1, 1 << 16)
    lock_down(config, seccomp_bpf)
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # its own /proc files are its again (the host's stay closed to it)
    with open("/proc/self/oom_score_adj", "w") as handle:
        handle.write("1000")
    boxes.serve_candidate(payload, IN_FD, OUT_FD)
    os._exit(0)


def end_candidate(child):
    """From pid 1: kill every other process of the pid namespace and reap them all, then empty /tmp and
    /dev/shm; (the candidate's exit code, CPU seconds and peak RSS KiB of everything reaped)."""
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
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    box_fds(ends)
    lock_down(config, seccomp_bpf, cpu_s=TEST_BOX_CPU_S)
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


def template_main(requests, report, config, seccomp_bpf):
    """Make a box for each byte read from `requests` (b"t": a test box, b"h": a candidate host), and do nothing
    else. It holds nothing that depends on what came before: requests are one constant byte, it forks through
    libc so that no child's pid enters it, and it never reaps (its children, one-shot makers, are reaped by
    the kernel; each box is reparented to the supervisor, which reaps it). So every box starts from the same
    memory, and no box can read in it anything of an earlier box, job or sample."""
    gc.freeze()  # boxes never walk (and so copy) the template's objects
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    fork = libc.fork
    fork.restype = None  # the parent never holds the value
    me = os.getpid()
    while True:
        role = os.read(requests, 1)
        if not role:
            os._exit(0)  # the supervisor is gone
        fork()
        if os.getpid() != me:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                make_box(role, report, config, seccomp_bpf)
            finally:
                os._exit(70)


def make_box(role, report, config, seccomp_bpf):
    """In a one-shot child of the template: the box's pipes and socket, then the box itself in a child of
    this process, which exits at once (the box is reparented to the supervisor). The box reports its pids
    and the supervisor's ends of its fds on `report`."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    box_ends, ours = [out_w, err_w, in_r, theirs.detach()], [out_r, err_r, in_w, mine.detach()]
    try:
        if os.fork():
            os._exit(0)
    except OSError as exc:
        send_message(report, {"failed": role.decode(), "why": str(exc)})
        os._exit(0)
    if role == b"h":
        holder(config, seccomp_bpf, box_ends, ours, report)
    send_message(report, {"made": "test", "holder": os.getpid(), "pid": os.getpid()}, ours)
    for fd in ours:
        os.close(fd)
    report.close()
    test_box_init(config, seccomp_bpf, box_ends)


def process_cpu_s():
    """CPU seconds used so far by this process and every process it has reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
