"""Attacks on the channels around the isolation, as candidate programs through a real SandboxPool: verdicts or
reports forged on any fd a candidate can find, malformed, oversized and stalled replies on its own pipes,
floods of output, state that one test leaves for the next (files, processes, SysV IPC, abstract sockets), and
files or memory that one sample leaves for the next on the same warm sandbox.

Whatever a candidate does here, its own tests fail (never `sandbox_error`), its result is strict JSON with
figures measured outside it, and the next job is scored correctly.
"""

import json
import struct
import time

import pytest

from sandbox_workers.inside.boxes import TEST_MSG
from sandbox_workers.inside.template import HOST_MSG
from tests.sandbox.pools import module_pool

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
ADD = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}
ADD3 = {"task_id": "add3", "entry_point": "add",
        "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(3, 3) == 6"]}
ADD_OK = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def pool(ray_cluster):
    with module_pool("channel-sandbox", test_timeout_s=TIMEOUT_S) as pool:
        yield pool


def _score(pool, problem, code):
    """(result, wall seconds); the result is never a sandbox_error and always strict JSON."""
    started = time.monotonic()
    result = pool.score([problem], [code])[0]
    wall = time.monotonic() - started
    assert result["status"] != "sandbox_error", result["error"]
    json.dumps(result, allow_nan=False)
    return result, wall


def _next_job_is_scored_correctly(pool):
    follow_up = pool.score([ADD], [ADD_OK])[0]
    assert (follow_up["status"], follow_up["reward"]) == ("passed", 2.0), follow_up


# ------------------------------------------------------------------------------- forged verdicts and reports

FORGE_EVERYWHERE = f"""
import glob, os, struct
PASSED = [struct.pack({TEST_MSG.format!r}, b"X", i, 1, b"passed", b"") for i in range(3)]
ENDED = [struct.pack({HOST_MSG.format!r}, b"X", i, 0, 0.0, 0) for i in range(3)]
FRAMES = [struct.pack(">I", 2) + b"{{}}", b'{{"tests": []}}']

def forge(fd):
    for record in PASSED + ENDED + FRAMES:
        try:
            os.write(fd, record)
        except OSError:
            pass

def add(a, b):
    if a != 1:
        return a + b
    for fd in range(0, 64):
        forge(fd)
    for path in glob.glob('/proc/[0-9]*/fd/*'):   # reopen the host's or anyone's pipes and sockets
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        forge(fd)
    os._exit(0)
"""


def test_a_candidate_cannot_forge_a_verdict_or_a_hosts_report(pool):
    """A candidate holds no fd of the test box's socket, the host's socket or the supervisor's frames."""
    result, _ = _score(pool, ADD3, FORGE_EVERYWHERE)
    assert result["tests"] == ["runtime_error", "passed", "passed"], result["test_details"]
    _next_job_is_scored_correctly(pool)


# ------------------------------------------------------------------------------- its own pipes

# Each replaces the reply to the first call (add(1, 2)) with its own bytes on fd 4 and then goes on serving.
REPLIES = {
    "header_claims_2_gib": "struct.pack('>I', 2 ** 31)",
    "not_json": "struct.pack('>I', 5) + b'\\x01\\x02\\x03\\x04\\x05'",
    "wrong_shape": "frame(['ok'])",
    "unknown_tag": "frame(['ok', ['pickle', 'gASV'], [None, None], []])",
    "changed_args_of_the_wrong_length": "frame(['ok', ['i', '3'], [None], []])",
    "ending_exception_name": "frame(['raise', 'SystemExit', None, '0', [None, None], []])",
    "control_bytes": "frame(['ok', ['s', '\\x01' * (8 << 20)], [None, None], []])",
    "truncated": "struct.pack('>I', 100) + b'[\"ok\"'",
}
REPLY_ATTACK = """
import json, os, struct, sys
def frame(obj):
    data = json.dumps(obj).encode()
    return struct.pack('>I', len(data)) + data
def add(a, b):
    if a == 1:
        os.write(4, {reply})
        if {stall}:
            import time
            time.sleep(60)
    return a + b
"""


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_a_malformed_reply_fails_its_test_not_the_sandbox(pool, name):
    result, wall = _score(pool, ADD3, REPLY_ATTACK.format(reply=REPLIES[name], stall=False))
    assert result["tests"][0] != "passed" and result["tests"][1:] == ["passed", "passed"], result["test_details"]
    assert wall < 3 * TIMEOUT_S + 4


def test_a_reply_header_then_silence_is_a_timeout_of_that_test_only(pool):
    result, wall = _score(pool, ADD3, REPLY_ATTACK.format(reply="struct.pack('>I', 100)", stall=True))
    assert result["tests"] == ["timeout", "passed", "passed"], result["test_details"]
    assert wall < 4 * TIMEOUT_S + 4


FD_GAMES = """
import fcntl, os, time
def add(a, b):
    if a == 1:
        for fd in range(0, 8):
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags ^ os.O_NONBLOCK)
            except OSError:
                pass
        os.dup2(3, 4)
        os.close(3)
        time.sleep(60)
    return a + b
"""


def test_a_candidate_that_plays_with_its_fds_fails_alone_within_its_deadline(pool):
    result, wall = _score(pool, ADD3, FD_GAMES)
    assert result["tests"][0] != "passed" and result["tests"][1:] == ["passed", "passed"], result["test_details"]
    assert wall < 4 * TIMEOUT_S + 4
    _next_job_is_scored_correctly(pool)


FLOOD = """
import os, sys
def add(a, b):
    chunk = b'\\x01' * (1 << 20)
    for _ in range({mib}):
        os.write(1, chunk)
        os.write(2, chunk)
    return a + b if a != 1 else -1
"""


def test_a_flood_of_control_bytes_is_an_output_limit_of_one_test_and_debug_prints_are_not(pool):
    """Past 256 MiB a stream the test ends (output_limit); below, output is discarded past a head and a tail,
    as the official harness swallows it: 24 MiB of prints in each test cost nothing but their time."""
    result, _ = _score(pool, ADD3, FLOOD.format(mib="1 << 20 if a == 1 else 0"))
    assert result["tests"] == ["output_limit", "passed", "passed"], result["test_details"]
    assert result["stdout_truncated"] and len(result["stdout_head"]) <= 1000
    chatty, _ = _score(pool, ADD3, FLOOD.format(mib=12))
    assert chatty["tests"] == ["failed", "passed", "passed"], chatty["test_details"]


BURN = """
import os, time
def add(a, b):
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    return a + b
"""


def test_cpu_and_memory_figures_are_measured_outside_the_candidate(pool):
    """Nothing a candidate writes reaches cpu_s or peak_memory_kb: 0.3 s of CPU in each of three tests shows."""
    forged, _ = _score(pool, ADD3, FORGE_EVERYWHERE)
    burned, _ = _score(pool, ADD3, BURN)
    assert burned["tests"] == ["passed"] * 3, burned["test_details"]
    assert burned["cpu_s"] >= 0.85 and forged["cpu_s"] < 0.5, (burned["cpu_s"], forged["cpu_s"])
    assert 0 < burned["peak_memory_kb"] < 1 << 21


# ------------------------------------------------------------------------------- per-test state

LEAVE_FILES = """
import os
def add(a, b):
    left = os.listdir('/tmp') + os.listdir('/dev/shm')
    if left or os.stat('/tmp').st_mode & 0o7777 != 0o1777:
        return a + b                       # not the first test: pass
    os.makedirs('/tmp/d/e/f')
    for path in ('/tmp/mark', '/tmp/d/e/f/mark', '/dev/shm/mark'):
        open(path, 'w').write('x')
    os.chmod('/tmp/d/e', 0)                # a directory the cleaner cannot enter as it is
    os.mkdir('/tmp/deep')
    os.chdir('/tmp/deep')
    for _ in range(2000):                  # deeper than any recursion or fd budget of the cleaner
        os.mkdir('x')
        os.chdir('x')
    os.chmod('/tmp', 0o1700)
    return -1
"""
LEAVE_PROCESS = """
import os, time
def add(a, b):
    if [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]:
        return a + b                       # a process of an earlier test is still there: pass
    if os.fork() == 0:
        os.setsid()
        while True:
            time.sleep(0.05)
    return -1
"""
LEAVE_IPC = """
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def add(a, b):
    key = 0x5eed
    if libc.shmget(key, 4096, 0) >= 0:
        return a + b                       # a segment of an earlier test is still there: pass
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(b'\\0diffurl-left')
        return a + b                       # a listener of an earlier test answers: pass
    except OSError:
        pass
    libc.shmget(key, 4096, 0o1600)         # IPC_CREAT | 0600
    if os.fork() == 0:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(b'\\0diffurl-left')
        listener.listen()
        while True:
            listener.accept()
    return -1
"""


@pytest.mark.parametrize("code", [LEAVE_FILES, LEAVE_PROCESS, LEAVE_IPC], ids=["files", "process", "ipc_and_socket"])
def test_what_one_test_leaves_is_gone_for_the_next(pool, code):
    result, _ = _score(pool, ADD3, code)
    assert result["tests"] == ["failed"] * 3, result["test_details"]


# ------------------------------------------------------------------------------- between samples

PLANT_EVERYWHERE = """
import os
PLACES = ['/', '/sandbox', '/usr', '/usr/bin', '/dev', '/dev/pts', '/tmp', '/dev/shm', '/proc']
FOUND = sorted(p for p in PLACES if os.path.exists(os.path.join(p, 'diffurl-marker')))
for place in PLACES:
    try:
        open(os.path.join(place, 'diffurl-marker'), 'w').write('planted')
    except OSError:
        pass
def planted():
    return FOUND
"""


def test_files_written_anywhere_by_one_sample_are_gone_for_the_next(pool):
    problem = {"task_id": "planted", "entry_point": "planted", "tests": ["assert planted() == []"]}
    first, _ = _score(pool, problem, PLANT_EVERYWHERE)
    second, _ = _score(pool, problem, PLANT_EVERYWHERE)
    assert (first["status"], second["status"]) == ("passed", "passed"), second["test_details"]


FILL_TMPFS = """
import os
chunk = b'x' * (16 << 20)
for place in ['/', '/sandbox', '/usr', '/dev', '/tmp', '/dev/shm']:
    for i in range(64):
        try:
            with open(f'{place}/ballast{i}', 'wb') as f:
                f.write(chunk)
        except OSError:
            break
def add(a, b):
    return 0
"""
NEEDS_MEMORY = ("def add(a, b):\n    x = bytearray(150 << 20)\n    for i in range(0, len(x), 4096):\n"
                "        x[i] = 1\n    return a + b\n")


def test_a_sample_that_fills_tmpfs_memory_does_not_fail_the_next_job(pool):
    honest, _ = _score(pool, ADD, NEEDS_MEMORY)
    assert honest["status"] == "passed", honest["test_details"]   # fits on a clean slot
    attack, _ = _score(pool, ADD, FILL_TMPFS)
    assert attack["reward"] == 0.0
    after, _ = _score(pool, ADD, NEEDS_MEMORY)
    assert (after["status"], after["reward"]) == ("passed", 2.0), after["test_details"]


def test_the_reply_frame_format_is_what_the_attacks_above_forge():
    """Guard for the forgeries above: they use the real message layouts."""
    assert TEST_MSG.size == struct.calcsize(TEST_MSG.format) and HOST_MSG.format == "<ciidq"
