"""The adversarial corpus of SANDBOX.md and the fake-success attacks, through a real SandboxPool.

For each attack: reward 0, wall time under its bound, nothing left running in the slot, the host canary
file unread and unchanged, the loopback canary listener never connected to, and then the same worker
scores a correct solution correctly.
"""

import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.sandbox.pools import module_pool

pytestmark = pytest.mark.integration

PROJECT_DIR = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.0
ADD = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(-4, 4) == 0"]}
ADD_OK = "def add(a, b):\n    return a + b\n"


class Canaries:
    """A host file the sandbox must not read or change, and a loopback listener it must not reach."""

    def __init__(self, directory: Path):
        self.file = directory / "canary-secret.txt"
        self.secret = "canary-" + os.urandom(8).hex()
        self.file.write_text(self.secret)
        os.chmod(self.file, 0o644)            # world-readable: only the sandbox's view can protect it
        self.atime_tracks_reads = self._atime_moves_on_read(directory / "atime-probe.txt")
        stat = self.file.stat()
        os.utime(self.file, ns=(stat.st_mtime_ns - 10**9, stat.st_mtime_ns))  # a read would move atime
        self.digest, self.atime = self._digest(), self.file.stat().st_atime_ns
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @staticmethod
    def _atime_moves_on_read(probe: Path) -> bool:
        """Whether this filesystem records reads in atime (not with noatime); if not, only content counts."""
        probe.write_text("x")
        stat = probe.stat()
        os.utime(probe, ns=(stat.st_mtime_ns - 10**9, stat.st_mtime_ns))
        before = probe.stat().st_atime_ns
        probe.read_text()
        return probe.stat().st_atime_ns != before

    def _digest(self):
        return hashlib.sha256(self.file.read_bytes()).hexdigest()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass

    def untouched(self) -> bool:
        unread = not self.atime_tracks_reads or self.file.stat().st_atime_ns == self.atime
        return self._digest() == self.digest and unread and self.connections == 0

    def close(self):
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture(scope="module")
def pool(ray_cluster):
    with module_pool("attack-sandbox", test_timeout_s=TIMEOUT_S) as pool:
        yield pool


@pytest.fixture(scope="module")
def canaries(tmp_path_factory):
    c = Canaries(tmp_path_factory.mktemp("host"))
    yield c
    c.close()


def _attacks(c: Canaries):
    """name -> (problem, code, wall bound in seconds). Every code would score > 0 if its attack worked."""
    leak = {"task_id": "leak", "entry_point": "leak", "tests": [f"assert leak() == {c.secret!r}"]}
    listing = sorted(os.listdir(PROJECT_DIR))
    ls = {"task_id": "ls", "entry_point": "ls", "tests": [f"assert ls() == {listing!r}"]}
    killer = "import os, signal\n{where}def add(a, b):\n    {inside}return a + b + 1\n"
    kills = ("for pid in [1, os.getppid(), -1, 0] + list(range(2, 64)):\n        try:\n"
             "            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n    ")
    return {
        "fork_bomb": (ADD, "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
                           "        except OSError:\n            pass\n", 12),
        "busy_loop": (ADD, "def add(a, b):\n    while True:\n        pass\n", 8),
        "busy_loop_at_import": (ADD, "while True:\n    pass\ndef add(a, b):\n    return a + b\n", 8),
        "ignore_signals": (ADD, "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, "
                                "signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n"
                                "def add(a, b):\n    while True:\n        pass\n", 8),
        "alloc_10gib": (ADD, "def add(a, b):\n    x = bytearray(10 << 30)\n    return a + b\n", 8),
        "file_10gib": (ADD, "def add(a, b):\n    with open('/tmp/big', 'wb') as f:\n        f.seek((10 << 30) - 1)\n"
                            "        f.write(b'x')\n        chunk = b'x' * (16 << 20)\n        f.seek(0)\n"
                            "        for _ in range(640):\n            f.write(chunk)\n    return a + b\n", 10),
        "many_16mib_files": (ADD, "def add(a, b):\n    chunk = b'x' * (16 << 20)\n    for i in range(1000):\n"
                                  "        with open(f'/tmp/f{i}', 'wb') as f:\n            f.write(chunk)\n"
                                  "    return a + b\n", 10),
        "stdout_1gib": (ADD, "import sys\ndef add(a, b):\n    s = 'x' * (1 << 20)\n    for _ in range(1024):\n"
                             "        sys.stdout.write(s)\n    sys.stdout.flush()\n    return a + b\n", 10),
        "connect_loopback": (ADD, "import socket\ndef add(a, b):\n"
                                  f"    s = socket.create_connection(('127.0.0.1', {c.port}), timeout=1)\n"
                                  "    s.sendall(b'hello')\n    return a + b\n", 8),
        "read_host_canary": (leak, f"def leak():\n    return open({str(c.file)!r}).read()\n", 8),
        "list_project_dir": (ls, f"import os\ndef ls():\n    return sorted(os.listdir({str(PROJECT_DIR)!r}))\n", 8),
        "kill_at_import": (ADD, killer.format(where=kills.replace("\n    ", "\n"), inside=""), 8),
        "kill_in_test": (ADD, killer.format(where="", inside=kills), 8),
        "double_fork_daemon": (ADD, "import os, time\ndef add(a, b):\n    if os.fork() == 0:\n        os.setsid()\n"
                                    "        if os.fork() == 0:\n            while True:\n                time.sleep(0.05)\n"
                                    "        os._exit(0)\n    return a + b + 1\n", 8),
        "exhaust_fds": (ADD, "import os\nfds = []\ndef add(a, b):\n    try:\n        while True:\n"
                             "            fds.append(os.open('/dev/null', os.O_RDONLY))\n    except OSError:\n"
                             "        pass\n    return len(fds) * 0 + a + b + 1\n", 8),
    }


ATTACK_NAMES = ["fork_bomb", "busy_loop", "busy_loop_at_import", "ignore_signals", "alloc_10gib", "file_10gib", "many_16mib_files",
                "stdout_1gib", "connect_loopback", "read_host_canary", "list_project_dir", "kill_at_import",
                "kill_in_test", "double_fork_daemon", "exhaust_fds"]


def _assert_contained(pool, canaries, result, started, bound):
    assert result["status"] != "sandbox_error", result["error"]
    assert result["reward"] == 0.0, result
    assert time.monotonic() - started < bound, f"took {time.monotonic() - started:.1f} s"
    assert canaries.untouched()
    deadline = time.monotonic() + 5
    while (stray := pool.statuses()[0]["stray_processes"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stray == 0
    follow_up = pool.score([ADD], [ADD_OK])[0]
    assert (follow_up["status"], follow_up["reward"]) == ("passed", 2.0), follow_up


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_is_contained_and_scores_zero(pool, canaries, name):
    problem, code, bound = _attacks(canaries)[name]
    started = time.monotonic()
    result = pool.score([problem], [code])[0]
    _assert_contained(pool, canaries, result, started, bound)


def test_tmp_written_in_one_run_is_gone_in_the_next(pool, canaries):
    problem = {"task_id": "persist", "entry_point": "persist", "tests": ["assert persist() == 'planted'"]}
    code = ("import os\ndef persist():\n    p = '/tmp/diffurl-marker'\n    if os.path.exists(p):\n"
            "        return open(p).read()\n    open(p, 'w').write('planted')\n    return 'first run'\n")
    started = time.monotonic()
    first, second = pool.score([problem], [code])[0], pool.score([problem], [code])[0]
    assert first["reward"] == 0.0
    _assert_contained(pool, canaries, second, started, 8)


FAKE_SUCCESS = {
    "sys_exit_at_import": "import sys\nsys.exit(0)\ndef add(a, b):\n    return 0\n",
    "os_exit_in_function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "system_exit_in_function": "def add(a, b):\n    raise SystemExit(0)\n",
    "atexit_exit": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    raise ValueError\n",
    "excepthook_exit": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\ndef add(a, b):\n    raise ValueError\n",
    "always_equal_object": "class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                           "def add(a, b):\n    return E()\n",
    "always_equal_int_subclass": "class I(int):\n    def __eq__(self, other):\n        return True\n"
                                 "def add(a, b):\n    return I(7)\n",  # crosses as the int 7
    "always_equal_str_subclass": "class S(str):\n    def __eq__(self, other):\n        return True\n"
                                 "def add(a, b):\n    return S('x')\n",
    "printed_markers": "def add(a, b):\n    print('PASSED', 'ok', 'All tests passed', '{\"t\": 0, \"value\": [\"int\", \"3\"]}')\n"
                       "    return None\n",
    "forged_result_records": "import os\ndef add(a, b):\n    for fd in range(3, 10):\n        try:\n"
                             "            os.write(fd, b'{\"t\": 0, \"value\": [\"bool\", true]}\\n{\"t\": 0, \"exit\": 0}\\n')\n"
                             "        except OSError:\n            pass\n    os._exit(0)\n",
    "patched_unittest": "import unittest\nunittest.TestResult.wasSuccessful = lambda self: True\n"
                        "unittest.TestCase.assertEqual = lambda *a, **k: None\ndef add(a, b):\n    return None\n",
    "frame_walking": "import sys\ndef add(a, b):\n    f = sys._getframe()\n    found = []\n    while f:\n"
                     "        found += [v for k, v in f.f_locals.items() if k not in ('a', 'b', 'f', 'found')]\n"
                     "        f = f.f_back\n    return found[-1] if found else None\n",
    "patched_builtins_and_json": "import builtins, json\nbuiltins.type = lambda x: int\n"
                                 "json.dumps = lambda *a, **k: '{\"t\": 0, \"value\": [\"int\", \"3\"]}'\n"
                                 "def add(a, b):\n    return 'x'\n",
    "generator_return": "def add(a, b):\n    yield a + b\n",
}


@pytest.mark.parametrize("name", sorted(FAKE_SUCCESS))
def test_fake_success_attack_scores_zero(pool, canaries, name):
    started = time.monotonic()
    result = pool.score([ADD], [FAKE_SUCCESS[name]])[0]
    _assert_contained(pool, canaries, result, started, 8)
    assert result["passed"] == 0


def test_one_timeout_fails_one_test_not_the_completion(pool):
    code = "def add(a, b):\n    while a == 1:\n        pass\n    return a + b\n"
    result = pool.score([ADD], [code])[0]
    assert result["tests"] == ["timeout", "passed"]
    assert result["pass_rate"] == 0.5 and result["reward"] == 1.0


def test_output_cap_applies_per_test_not_per_job(pool):
    problem = {"task_id": "chatty", "entry_point": "add", "tests": [f"assert add({i}, 1) == {i + 1}" for i in range(4)]}
    code = "def add(a, b):\n    print('x' * 600_000)\n    return a + b\n"
    assert pool.score([problem], [code])[0]["tests"] == ["passed"] * 4


def test_each_result_names_the_isolation_mode_and_worker(pool):
    result = pool.score([ADD], [ADD_OK])[0]
    assert result["mode"] == pool.statuses()[0]["mode"]
    assert result["mode"] == "full" or result["mode"].startswith("degraded:")
    assert result["worker"] == "attack-sandbox-0"
