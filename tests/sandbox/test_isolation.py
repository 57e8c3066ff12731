"""The isolation layers themselves, through a WarmSandbox (no Ray): the self-test, what a job can see and
call, and the degraded modes."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_workers.executor import Layers, WarmSandbox, self_test
from sandbox_workers.isolation import Limits, SelfTest
pytestmark = pytest.mark.integration


def _run(sandbox: WarmSandbox, body: str):
    """Run `body` as the candidate's function `f` in a job; the value it returned (the test prints its repr,
    the only way a value leaves the sandbox) or (status, detail) when the test did not pass."""
    program = "def f():\n" + "".join(f"    {line}\n" for line in body.splitlines())
    reply = sandbox.run({"program": program, "preamble": "", "entry_point": "f", "timeout": 5.0,
                         "tests": [{"source": "print('VALUE ' + repr(f()))", "check": False}]})
    test = reply["tests"][0]
    if test["status"] != "passed":
        return test["status"], test["detail"]
    return ast.literal_eval(next(line[6:] for line in reply["stdout"].splitlines() if line.startswith("VALUE ")))


@pytest.fixture(scope="module")
def full_sandbox():
    sandbox = WarmSandbox("iso-full", Limits(), Layers(seccomp=True, slot_uid=True, cgroups=True))
    sandbox.start()
    yield sandbox
    sandbox.close()


def test_self_test_names_every_layer_and_a_mode():
    report = self_test()
    names = set(report.layers)
    assert {"interpreter", "bwrap", "job_namespaces", "seccomp", "slot_uid", "cgroup_memory", "cgroup_pids",
            "cgroup_cpu", "cgroup_kill", "tmpfs_interpreter"} <= names
    assert report.usable
    assert report.mode in report.report()


def test_diffurl_sandbox_check_prints_each_layer_and_the_mode():
    run = subprocess.run([str(Path(sys.executable).with_name("diffurl")), "sandbox", "check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "sandbox isolation layers:"
    assert lines[-1] == "mode: full" or lines[-1].startswith("mode: degraded:")
    assert sum(line.startswith(("  ok ", "  NO ")) for line in lines) == 10


def test_missing_layers_name_a_degraded_or_unavailable_mode():
    ok = {name: (True, "") for name in ("interpreter", "bwrap", "job_namespaces", "seccomp", "slot_uid",
                                        "cgroup_memory", "cgroup_pids", "cgroup_cpu", "cgroup_kill",
                                        "tmpfs_interpreter")}
    assert SelfTest(ok).mode == "full"
    no_root = {**ok, "slot_uid": (False, ""), "cgroup_memory": (False, ""), "cgroup_pids": (False, ""),
               "cgroup_cpu": (False, ""), "cgroup_kill": (False, "")}
    assert SelfTest(no_root).mode == "degraded:no-slot_uid,no-cgroup_memory,no-cgroup_pids,no-cgroup_cpu,no-cgroup_kill"
    assert SelfTest({**ok, "bwrap": (False, "")}).mode == "unavailable"


def test_job_sees_its_own_pid_namespace_uid_and_loopback_only(full_sandbox):
    pid, uid, interfaces, procs = _run(full_sandbox, "import os\nlines = open('/proc/net/dev').read().split()\n"
                                       "return [os.getpid(), os.getuid(), [w for w in lines if w.endswith(':')], "
                                       "sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]")
    assert (pid, uid, interfaces, procs) == (2, 1000, ["lo:"], [1, 2])  # pid 1 is the candidate host


def test_a_candidate_cannot_read_its_hosts_memory_and_is_the_oom_killers_first_choice(full_sandbox):
    """pid 1 of its namespace is the candidate host: its memory (the job's program only, but still) and fds are
    closed to the candidate, which the out-of-memory killer takes before any process of the sandbox."""
    seen = _run(full_sandbox, "import errno\nout = []\nfor path in ('/proc/1/mem', '/proc/1/environ', '/proc/1/fd'):\n"
                              "    try:\n        open(path, 'rb').read(1) if 'fd' not in path else __import__('os').listdir(path)\n"
                              "        out.append('read')\n    except OSError as exc:\n"
                              "        out.append(errno.errorcode[exc.errno])\n"
                              "return out + [open('/proc/self/oom_score_adj').read().strip()]")
    assert seen == ["EACCES", "EACCES", "EACCES", "1000"]


def test_no_file_a_job_can_read_is_on_disk(full_sandbox):
    """Every mount a candidate sees is memory-backed: the interpreter and its libraries come from a tmpfs copy,
    so the host page cache (shared by every sandbox) holds no page a candidate could evict or probe."""
    mounts = _run(full_sandbox, "return sorted({(m.split(' - ')[1].split()[0], m.split()[4]) for m in "
                                "open('/proc/self/mountinfo').read().splitlines()})")
    assert {fstype for fstype, _ in mounts} <= {"tmpfs", "proc", "devpts", "devtmpfs"}, mounts  # devices: /dev/null...
    assert ("tmpfs", "/usr") in mounts


def test_job_sees_no_host_files(full_sandbox):
    assert _run(full_sandbox, "import os\nreturn sorted(os.listdir('/'))") == \
        sorted(["bin", "dev", "lib", "lib64", "proc", "sandbox", "tmp", "usr"])
    assert _run(full_sandbox, "import os\nreturn [os.path.exists(p) for p in ('/etc/passwd', '/root', '/work')]") == \
        [False, False, False]


@pytest.mark.parametrize("call, errno_name", [
    ("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)", "EAFNOSUPPORT"),
    ("import ctypes\nctypes.CDLL(None, use_errno=True).unshare(0x10000000) or None\n"
     "raise OSError(ctypes.get_errno(), '')", "EPERM"),
    ("import ctypes\nr = ctypes.CDLL(None, use_errno=True).syscall(435, 0, 0)\n"
     "raise OSError(ctypes.get_errno(), '')", "ENOSYS"),
    ("import ctypes\nctypes.CDLL(None, use_errno=True).ptrace(16, 1, 0, 0)\n"
     "raise OSError(ctypes.get_errno(), '')", "EPERM"),
])
def test_seccomp_refuses_sockets_namespaces_clone3_and_ptrace(full_sandbox, call, errno_name):
    body = "import errno\ntry:\n" + "".join(f"    {line}\n" for line in call.splitlines()) + \
        "except OSError as exc:\n    return errno.errorcode.get(exc.errno)\nreturn 'allowed'"
    assert _run(full_sandbox, body) == errno_name


def test_threads_still_work_with_clone3_refused(full_sandbox):
    body = ("import threading\nout = []\nt = threading.Thread(target=lambda: out.append(7))\nt.start()\n"
            "t.join()\nreturn out")
    assert _run(full_sandbox, body) == [7]


def test_degraded_sandbox_without_cgroups_or_seccomp_still_isolates():
    sandbox = WarmSandbox("iso-degraded", Limits(), Layers(seccomp=False, slot_uid=True, cgroups=False))
    sandbox.start()
    try:
        assert sandbox.slot.cgroups == {}
        assert _run(sandbox, "import os\nreturn [os.getpid(), os.path.exists('/work')]") == [2, False]
        assert _run(sandbox, "x = bytearray(10 << 30)\nreturn 1")[0] == "memory_limit"
    finally:
        sandbox.close()


def test_root_and_dev_are_read_only_inside_a_job(full_sandbox):
    refused = _run(full_sandbox, "import errno, os\nout = []\n"
                   "for path in ['/x', '/sandbox/x', '/usr/x', '/usr/bin/x', '/lib64/x', '/dev/x']:\n"
                   "    for make in (lambda p: open(p, 'w'), os.mkdir):\n"
                   "        try:\n            make(path)\n            out.append(path)\n"
                   "        except OSError as exc:\n            out.append(errno.errorcode[exc.errno])\n"
                   "return out")
    assert refused == ["EROFS"] * 12
    mounts = _run(full_sandbox, "return [(m.split()[4], m.split()[5].split(',')[0]) for m in "
                                "open('/proc/self/mountinfo').read().splitlines()]")
    writable = {point for point, mode in mounts if mode == "rw"}
    assert ("/", "ro") in mounts and ("/dev", "ro") in mounts
    devices = {f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom", "tty", "pts")}
    assert writable <= {"/tmp", "/dev/shm", "/proc"} | devices, writable   # the job's own mounts, device nodes


def test_a_slot_whose_memory_stays_above_its_baseline_after_a_job_is_recycled(tmp_path):
    """Memory that outlives a job (here: a file in the sandbox's own /tmp, charged to the slot by a process
    put into its memory cgroup from outside) recycles the sandbox, which frees it."""
    sandbox = WarmSandbox("iso-memory", Limits(), Layers(seccomp=True, slot_uid=True, cgroups=True))
    sandbox.start()
    try:
        executor = next(pid for pid in sandbox.slot.pids() if _program(pid) == sandbox.interpreter.path
                        and _program(_parent(pid)).endswith("bwrap"))
        ballast = (f"import os\nopen({str(sandbox.slot.cgroups['memory'] / 'cgroup.procs')!r}, 'w')"
                   f".write(str(os.getpid()))\nos.setgroups([])\nos.setresgid(*[{sandbox.slot.uid}] * 3)\n"
                   f"os.setresuid(*[{sandbox.slot.uid}] * 3)\n"
                   f"open('/proc/{executor}/root/tmp/ballast', 'wb')"
                   ".write(b'x' * (48 << 20))\n")
        subprocess.run([sys.executable, "-c", ballast], check=True, timeout=60)
        assert sandbox.slot.resident_bytes() - sandbox.baseline_memory > 40 << 20
        assert _run(sandbox, "return 1") == 1
        assert sandbox.restarts == 1
        assert sandbox.slot.resident_bytes() - sandbox.baseline_memory < 16 << 20
        assert _run(sandbox, "import os\nreturn os.path.exists('/tmp/ballast')") is False
    finally:
        sandbox.close()


def _program(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
