"""Unit tests of how the trusted side judges what comes out of the sandbox: trace tests planned from the
reference's run, exact comparison, total judging, decoding without hashing, the reward cache key, and the
per-completion failure of a batch. No sandbox, no Ray."""

import ast
import threading

import pytest

from sandbox_workers.judge import (CanonicalDict, CanonicalSet, DecodeError, assert_to_probe, compile_problem,
                                   decode_value, judge_trace, judge_value, plan_trace, strict_equal, verdict)
from sandbox_workers.pool import SandboxWorker
from sandbox_workers.worker import Scorer, ScoreSettings, build_program

HASH_MODULUS = (1 << 61) - 1  # every multiple of it hashes to 0


def _probe(text, callee="f"):
    """The probe of `text` taken as one test statement (several lines become one `if True:` block)."""
    module = ast.parse(text)
    stmt = module.body[0] if len(module.body) == 1 else ast.If(test=ast.Constant(True), body=module.body, orelse=[])
    return assert_to_probe(stmt, callee)


def _call(*args):
    """The encoded (args, kwargs) of a call with int arguments and no keywords."""
    return ["tuple", [["tuple", [["int", str(a)] for a in args]], ["dict", []]]]


def _int(x):
    return ["int", str(x)]


# ------------------------------------------------------------------------------ class 1: trace tests as pairs

def test_a_trace_test_sends_the_candidate_the_recorded_arguments_and_never_the_results():
    probe = _probe("for x in range(2, 4):\n    assert f(x, x + 1) == str(x)")
    reference = [["ok", ["str", "2"], _call(2, 3), _call(2, 3)], ["ok", ["str", "3"], _call(3, 4), _call(3, 4)]]
    check = plan_trace(probe, reference)
    assert check.how == "replay" and check.replay == (_call(2, 3), _call(3, 4))
    assert "'str'" not in repr(check.replay)                    # the results (str) never travel
    assert judge_trace(check, [["ok", ["str", "2"], _call(2, 3)], ["ok", ["str", "3"], _call(3, 4)]])
    assert not judge_trace(check, [["ok", ["str", "2"], _call(2, 3)]])                    # a call missing
    assert not judge_trace(check, [["ok", ["str", "2"], _call(2, 3)], ["raise", "ValueError", _call(3, 4)]])


@pytest.mark.parametrize("text, call", [
    ("assert tuple(f([5, 3, 1])) == tuple([1, 3, 5])", "f([5, 3, 1])"),
    ("assert abs(f([1.0, 2.0]) - 2.0 / 3.0) < 1e-06", "f([1.0, 2.0])"),
    ("assert f([3, 5, 7]) == (3 + 5 + 7, 3 * 5 * 7), 'message'", "f([3, 5, 7])"),
    ("x = 3\nassert x == 3", None),
])
def test_the_expected_side_of_a_trace_tests_asserts_never_enters_the_sandbox(text, call):
    probe = _probe(text if call else "f(1)\n" + text)
    assert probe.kind == "trace"
    if call:
        assert ast.parse(probe.source).body[0].body[-1].value.__class__ is ast.Call
        assert ast.unparse(ast.parse(probe.source).body[0].body[-1]) == call
    else:
        assert "== 3" not in probe.source and "pass" in probe.source


def test_asserts_with_computed_arguments_are_judged_from_the_reference_not_in_the_candidates_process():
    spec = compile_problem({"task_id": "t", "entry_point": "f", "reference": "def f(s):\n    return s\n",
                            "tests": ["def helper(s):\n    return s[::-1]", "assert f(helper('ab')) == 'ba'",
                                      "assert f('ab') == 'ab'"]})
    assert [p.kind for p in spec.probes] == ["trace", "eq"]   # a helper the program may redefine: the reference's
    no_reference = compile_problem({"task_id": "t", "entry_point": "f", "tests": ["assert f(len('ab')) == 2"]})
    assert no_reference.probes[0].kind == "eq"                 # without a reference it stays a pair


@pytest.mark.parametrize("text", ["assert f(f(3)) == 12", "y = f(1)\nassert f(y) == 2", "assert f(f(1) + 1) == 2",
                                  "acc = []\nfor i in range(3):\n    acc.append(f(i))\n    assert f(acc)"])
def test_a_result_that_feeds_a_later_call_is_never_replayed(text):
    probe = _probe(text)
    assert not probe.replayable
    check = plan_trace(probe, [["ok", _int(6), _call(3), _call(3)], ["ok", _int(12), _call(6), _call(6)]])
    assert check.replay is None and check.how == "a result feeds a later call"


@pytest.mark.parametrize("text", ["for x in range(3):\n    assert f(x, x + 1) == str(x)",
                                  "s = 'abc'\nassert f(g(s)) == s", "y = f(1)\nassert h(y) < 1e-4"])
def test_independent_calls_are_replayed(text):
    assert _probe(text).replayable


def _list_call(values):
    return ["tuple", [["tuple", [["list", [_int(v) for v in values]]]], ["dict", []]]]


def test_an_argument_the_reference_changed_that_feeds_a_later_call_is_never_replayed():
    trace = [["ok", ["none"], _list_call([3, 1]), _list_call([1, 3])],
             ["ok", ["none"], _list_call([1, 3]), _list_call([1, 3])]]
    check = plan_trace(_probe("f(lst)\nf(lst)"), trace)
    assert check.replay is None and "changes" in check.how


def test_a_call_is_judged_on_what_it_does_to_its_arguments_too():
    before, after = _list_call([3, 1]), _list_call([1, 3])
    check = plan_trace(_probe("f(lst)"), [["ok", ["none"], before, after]])
    assert judge_trace(check, [["ok", ["none"], after]])
    assert not judge_trace(check, [["ok", ["none"], before]])   # returned None but did not sort in place


def test_a_statement_trace_compares_arguments_before_each_call():
    probe = _probe("y = f(f(1))")
    check = plan_trace(probe, [["ok", _int(2), _call(1), _call(1)], ["ok", _int(4), _call(2), _call(2)]])
    assert judge_trace(check, [["ok", _int(2), _call(1), _call(1)], ["ok", _int(4), _call(2), _call(2)]])
    # same results, but the helper that built the second call's arguments was redefined
    assert not judge_trace(check, [["ok", _int(2), _call(1), _call(1)], ["ok", _int(4), _call(7), _call(7)]])


# ------------------------------------------------------------------------------ class 2: comparison as strict as the test

def test_ints_compare_exactly():
    assert not strict_equal(10 ** 7, 10 ** 7 + 1, rel_tol=1e-6, abs_tol=1e-9)
    assert not strict_equal([10 ** 7], [10 ** 7 + 1], rel_tol=1e-6)
    assert not strict_equal(10 ** 7 + 1, 1e7, rel_tol=1e-6)            # an int against a float: exact too
    assert strict_equal(1e7, 1e7 + 1e-3, rel_tol=1e-6)                 # float against float keeps the tolerance
    check = plan_trace(_probe("x = f(10 ** 7)"), [["ok", _int(10 ** 7 + 1), _call(10 ** 7), _call(10 ** 7)]])
    assert not judge_trace(check, [["ok", _int(10 ** 7), _call(10 ** 7)]])


def test_a_trace_longer_than_the_recorded_calls_is_judged_by_its_count_and_digest():
    probe = _probe("for i in range(20000):\n    f(i)")
    trace = [["ok", _int(0), _call(0), _call(0)], ["overflow", 19999, "ab" * 32]]
    check = plan_trace(probe, trace)
    assert check.replay is None and check.how == "more calls than are recorded"
    assert judge_trace(check, trace)
    assert not judge_trace(check, [trace[0], ["overflow", 19999, "cd" * 32]])   # a later call differs
    assert not judge_trace(check, [trace[0], ["overflow", 19998, "ab" * 32]])
    assert not judge_trace(check, [trace[0]])                                    # the tail left out


# ------------------------------------------------------------------------------ class 5: total judging

def test_a_huge_int_on_a_float_task_fails_its_test_and_does_not_raise():
    close = _probe("assert abs(f(1.33) - 0.33) < 1e-6")
    assert not judge_value(close, 10 ** 400)
    assert verdict(close, {"status": "ok", "value": _int(10 ** 400)}) == ("failed", "wrong result")
    assert verdict(_probe("assert f(3.5) == 0.5"), {"status": "ok", "value": _int(10 ** 400)})[0] == "failed"
    check = plan_trace(_probe("x = f(1.5)"), [["ok", ["float", "0.5"], _call(1), _call(1)]])
    assert verdict(_probe("x = f(1.5)"), {"status": "ok", "trace": [["ok", _int(10 ** 400), _call(1)]]}, check)[0] == "failed"


def test_values_nested_deeper_than_the_cap_fail_their_test_and_do_not_raise():
    deep = ["none"]
    for _ in range(980):
        deep = ["list", [deep]]
    with pytest.raises(DecodeError):
        decode_value(deep)
    assert verdict(_probe("assert f() == [1]"), {"status": "ok", "value": deep})[0] == "failed"
    check = plan_trace(_probe("x = f()"), [["ok", ["none"], _call(), _call()]])
    assert verdict(_probe("x = f()"), {"status": "ok", "trace": [["ok", deep, _call()]]}, check)[0] == "failed"


@pytest.mark.parametrize("reply", [{"status": "ok", "trace": "x"}, {"status": "ok", "trace": [["ok"]]},
                                   {"status": "ok", "trace": [["ok", ["int", "1"], None, None, None]]},
                                   {"status": "ok", "trace": [["overflow", "1", 2]]}, {"status": "ok"},
                                   {"status": "ok", "trace": [["ok", ["dict", [[1, 2, 3]]], _call()]]}])
def test_a_malformed_trace_fails_its_test(reply):
    probe = _probe("x = f()")
    check = plan_trace(probe, [["ok", ["none"], _call(), _call()]])
    assert verdict(probe, reply, check)[0] == "failed"


# ------------------------------------------------------------------------------ class 6: no hashing of candidate values

def test_decoded_sets_and_dicts_are_sorted_keys_not_hashed_containers():
    colliding = [HASH_MODULUS * (k + 1) for k in range(45_000)]
    value = decode_value(["set", [_int(x) for x in colliding]])
    assert type(value) is CanonicalSet and len(value) == 45_000
    table = decode_value(["dict", [[_int(x), _int(1)] for x in colliding]])
    assert type(table) is CanonicalDict and len(table) == 45_000 and table[colliding[-1]] == 1
    assert not strict_equal(value, {1, 2})


def test_canonical_sets_and_dicts_keep_pythons_equality():
    assert strict_equal(decode_value(["set", [_int(1), ["float", "2.5"]]]), {1.0, 2.5})
    assert strict_equal(decode_value(["set", [_int(2), _int(1), _int(2)]]), {1, 2})
    assert not strict_equal(decode_value(["set", [["bool", True]]]), {1})            # bool is not an int here
    assert not strict_equal(decode_value(["set", [_int(1)]]), frozenset({1}))
    assert not strict_equal(decode_value(["set", [["float", "nan"]]]), {float("nan")})
    assert strict_equal(decode_value(["dict", [[["str", "a"], _int(1)], [["str", "b"], ["list", []]]]]),
                        {"b": [], "a": 1})
    assert strict_equal(decode_value(["dict", [[_int(1), ["str", "x"]], [["float", "1.0"], ["str", "y"]]]]), {1: "y"})
    assert strict_equal(decode_value(["frozenset", [["tuple", [_int(1), ["str", "a,b"]]]]]), frozenset({(1, "a,b")}))
    assert not strict_equal(decode_value(["frozenset", [["tuple", [["str", "a"], ["str", "b"]]]]]),
                            frozenset({("a,b",)}))


# ------------------------------------------------------------------------------ class 8: the cache key

class _KeyOnly(Scorer):
    def __init__(self):  # noqa: D401 - only what _cache_key reads; no sandbox
        self.settings = ScoreSettings(require_format=False)


def test_the_reward_cache_key_holds_the_format_of_the_whole_completion():
    spec = compile_problem({"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]})
    code = "def add(a, b):\n    return a + b\n"
    fenced, raw = (build_program(spec, text, require_format=False) for text in (f"```python\n{code}```\n", code))
    assert fenced.code == raw.code and fenced.format != raw.format
    scorer = _KeyOnly()
    assert scorer._cache_key(spec, fenced) != scorer._cache_key(spec, raw)


# ------------------------------------------------------------------------------ class 5: one culprit in a batch

class _RaisingScorer:
    """Scores every completion 'passed' except the one that makes the judge raise."""
    worker_id = "fake-0"
    settings = ScoreSettings(require_format=False)

    def score(self, problem, completion):
        if "CULPRIT" in completion:
            raise OverflowError("int too large to convert to float")
        return {"task_id": problem["task_id"], "status": "passed", "reward": 2.0, "pass_rate": 1.0}


def test_a_completion_that_makes_the_judge_raise_fails_alone_in_its_batch():
    worker = SandboxWorker.__new__(SandboxWorker)
    worker.scorer, worker.lock = _RaisingScorer(), threading.Lock()
    problem = {"task_id": "add", "entry_point": "add", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}
    results = worker.score_batch([(problem, "ok 1"), (problem, "# CULPRIT\nreturn 10 ** 400"), (problem, "ok 2")])
    assert [r["status"] for r in results] == ["passed", "failed", "passed"]
    culprit = results[1]
    assert (culprit["tests"], culprit["pass_rate"], culprit["reward"]) == (["failed", "failed"], 0.0, 0.0)
    assert "OverflowError" in culprit["error"] and culprit["worker"] == "fake-0"
