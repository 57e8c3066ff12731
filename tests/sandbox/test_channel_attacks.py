"""Attacks on the channels around the isolation, as candidate programs through a real SandboxPool: control
records written by a test or by the program's import, malformed value records, state that one test leaves
for the next, and files or memory that one sample leaves for the next sample on the same warm sandbox.

Also the trusted side's record parser on its own: total and bounded whatever a test process writes.
"""

import json
import math
import sys
import time

import pytest

from sandbox_workers.executor import MAX_RECORD_DEPTH, parse_record, record_outcome
from tests.sandbox.pools import module_pool

TIMEOUT_S = 1.0
ADD = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}
ADD3 = {"task_id": "add3", "entry_point": "add",
        "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(3, 3) == 6"]}
ADD_OK = "def add(a, b):\n    return a + b\n"
CONTROL_FORMAT = "<ciidq64s"  # the executor's CONTROL struct: known to a white-box attacker


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


def _restarts(pool) -> int:
    return pool.statuses()[0]["restarts"]


def _next_job_is_scored_correctly(pool):
    follow_up = pool.score([ADD], [ADD_OK])[0]
    assert (follow_up["status"], follow_up["reward"]) == ("passed", 2.0), follow_up


# ------------------------------------------------------------------------------- control records (class 4)

FORGE_FROM_TEST = f"""
import glob, os, struct
FORGED = [b'{{"ready": true}}\\n', b'{{"t": 0, "value": ["int", "3"]}}\\n{{"t": 0, "exit": 0}}\\n',
          b'{{"t": 1, "value": ["int", "4"]}}\\n{{"t": 1, "exit": 0}}\\n']
FORGED += [struct.pack({CONTROL_FORMAT!r}, kind, i, 0, 0.0, 0, b"") for i in range(3) for kind in (b"R", b"T", b"X")]

def forge(fd):
    for record in FORGED:
        try:
            os.write(fd, record)
        except OSError:
            pass

def add(a, b):
    if a != 1:
        return a + b
    for fd in range(3, 64):
        forge(fd)
    for path in glob.glob('/proc/[0-9]*/fd/*'):   # reopen the zygote's or anyone's pipes and sockets
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        forge(fd)
    os._exit(0)
"""


def test_a_test_cannot_write_control_records_for_the_executor(pool):
    result, _ = _score(pool, ADD3, FORGE_FROM_TEST)
    assert result["tests"] == ["runtime_error", "passed", "passed"], result["test_details"]


READY_LOOP = """
import os, struct, time
def add(a, b):
    while a == 1:
        for fd in range(3, 16):
            try:
                os.write(fd, {record})
            except OSError:
                pass
        time.sleep(0.05)
    return a + b
"""
READY_RECORDS = {"json_line": repr(b'{"ready": true}\n'),
                 "control_struct": f"struct.pack({CONTROL_FORMAT!r}, b'R', 0, 0, 0.0, 0, b'')"}


@pytest.mark.parametrize("form", sorted(READY_RECORDS))
def test_a_ready_record_written_by_a_test_does_not_extend_its_deadline(pool, form):
    result, wall = _score(pool, ADD, READY_LOOP.format(record=READY_RECORDS[form]))
    assert result["tests"] == ["timeout", "passed"], result["test_details"]
    assert wall < 4 * TIMEOUT_S + 2, f"took {wall:.1f} s: the deadline moved"


READY_THREAD_AT_IMPORT = f"""
import os, struct, threading, time
def spam():   # runs in the zygote itself, where fd 3 is the control socket
    while True:
        for record in (struct.pack({CONTROL_FORMAT!r}, b"R", 0, 0, 0.0, 0, b""), b'{{"ready": true}}\\n'):
            try:
                os.write(3, record)
            except OSError:
                pass
        time.sleep(0.05)
threading.Thread(target=spam, daemon=True).start()
def add(a, b):
    while True:
        pass
"""


def test_ready_records_forged_by_the_program_at_import_cannot_extend_the_job(pool):
    result, wall = _score(pool, ADD3, READY_THREAD_AT_IMPORT)
    assert result["reward"] == 0.0 and result["passed"] == 0
    assert wall < (len(ADD3["tests"]) + 1) * (TIMEOUT_S + 0.5) + 2, f"took {wall:.1f} s"
    _next_job_is_scored_correctly(pool)


FORGED_USAGE_AT_IMPORT = """
import os
real_wait4 = os.wait4
class Usage:
    ru_utime, ru_stime, ru_maxrss = float('inf'), 0.0, 2 ** 62
os.wait4 = lambda pid, options: real_wait4(pid, options)[:2] + (Usage(),)   # the zygote reports this
def add(a, b):
    return a + b
"""
FORGED_USAGE_FROM_TEST = """
import os
def add(a, b):
    os.write(3, b'{"t": 0, "exit": 0, "cpu": Infinity, "rss": 1e999}\\n{"ready": true, "cpu": NaN}\\n')
    return a + b
"""


@pytest.mark.parametrize("code", [FORGED_USAGE_AT_IMPORT, FORGED_USAGE_FROM_TEST], ids=["at_import", "from_test"])
def test_forged_cpu_or_rss_cannot_make_results_non_json(pool, code):
    result, _ = _score(pool, ADD, code)
    assert math.isfinite(result["cpu_s"]) and 0 <= result["peak_rss_kb"] < 1 << 40
    assert result["passed"] == 0, result["test_details"]
    _next_job_is_scored_correctly(pool)


# ------------------------------------------------------------------------------- value records (class 5)

WRITE_RECORD = "import os\ndef add(a, b):\n    os.write(3, {record!r})\n    os._exit(0)\n"
MALFORMED_RECORDS = {
    "nested_980_deep": (b'{"t": 0, "value": ' + b'["list", [' * 980 + b'["int", "3"]' + b"]]" * 980 + b"}\n",
                        "runtime_error"),
    "nested_a_million_deep": (b"[" * 1_000_000 + b"\n", "runtime_error"),
    "nan": (b'{"t": 0, "value": ["float", NaN]}\n', "runtime_error"),
    "overflowing_number": (b'{"t": 0, "value": ["int", 1e999]}\n', "runtime_error"),
    "not_ascii": (b'{"t": 0, "value": ["str", "\xff"]}\n', "runtime_error"),
    "two_records": (b'{"t": 0, "value": ["int", "3"]}\n{"t": 0, "value": ["int", "3"]}\n', "runtime_error"),
    "no_newline": (b'{"t": 0, "value": ["int", "3"]}', "runtime_error"),
    "another_test_index": (b'{"t": 1, "value": ["int", "3"]}\n', "runtime_error"),
    "bool_index": (b'{"t": true, "value": ["int", "3"]}\n', "runtime_error"),
    "extra_key": (b'{"t": 0, "value": ["int", "3"], "exit": 0}\n', "runtime_error"),
    "not_an_object": (b'[["int", "3"]]\n', "runtime_error"),
    "over_the_size_cap": (b'{"t": 0, "value": ["str", "' + b"x" * (5 << 20) + b'"]}\n', "output_limit"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_RECORDS))
def test_a_malformed_value_record_fails_its_test_not_the_sandbox(pool, name):
    record, status = MALFORMED_RECORDS[name]
    restarts = _restarts(pool)
    one_test = {"task_id": "add1", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]}
    result, _ = _score(pool, one_test, WRITE_RECORD.format(record=record))
    assert result["tests"] == [status], result["test_details"]
    assert _restarts(pool) == restarts, "a test's record restarted the sandbox"
    _next_job_is_scored_correctly(pool)


@pytest.mark.parametrize("record", [
    "[" * 1_000_000 + "\n",
    '{"t": 0, "value": ' + '["list", [' * 5000 + "]]" * 5000 + "}\n",
    "[" * 300 + '"' + '\\"' * 1_000_000 + "\n",       # an unterminated string: the depth scan stays linear
    '{"t": 0, "value": ["float", Infinity]}\n',
    '{"t": 0, "value": ["int", "3"]}\n' * 2,
    '{"t": 0, "value": "' + "\ud800" + '"}\n',
    '{"t": 0, "error": 7}\n',
    "\n",
    "",
])
def test_record_parsing_is_total_and_bounded_even_with_a_high_recursion_limit(record):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10**6)   # json.loads alone would then overflow the C stack on the deep ones
    try:
        outcome = record_outcome(0, record, 0)
    finally:
        sys.setrecursionlimit(limit)
    assert outcome["status"] == "runtime_error", outcome


def test_a_value_record_within_the_depth_bound_parses():
    depth = MAX_RECORD_DEPTH // 2 - 2
    value = '["list", [' * depth + '["none"]' + "]]" * depth
    assert parse_record('{"t": 3, "value": ' + value + "}\n", 3) == ("value", json.loads(value))
    assert record_outcome(0, '{"t": 0, "error": "MemoryError"}\n', 0)["status"] == "memory_limit"


# ------------------------------------------------------------------------------- per-test state (class 3)

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


def test_files_written_by_one_test_are_gone_for_the_next(pool):
    result, _ = _score(pool, ADD3, LEAVE_FILES)
    assert result["tests"] == ["failed"] * 3, result["test_details"]


def test_a_process_left_running_by_one_test_is_gone_for_the_next(pool):
    result, _ = _score(pool, ADD3, LEAVE_PROCESS)
    assert result["tests"] == ["failed"] * 3, result["test_details"]


# ------------------------------------------------------------------------------- between samples (class 7)

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
