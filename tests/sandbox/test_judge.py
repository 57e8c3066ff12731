"""Unit tests of the trusted side: format rule, reward, assert-to-pair conversion, decoding, judging,
problem/sample loading. No sandbox, no Ray."""

import ast
import json

import pytest

from orchestrator.ops.sandbox import load_problems, load_samples
from sandbox_workers import compute_reward, format_score
from sandbox_workers.judge import (DecodeError, assert_to_probe, build_program, compile_problem, decode_value,
                                   judge_trace, judge_value, plan_trace, strict_equal, verdict)

FENCED = "Here is the code:\n```python\ndef add(a, b):\n    return a + b\n```\n"


@pytest.mark.parametrize("text, score", [
    (FENCED, 1.0),
    ("```python\nx = 1\n```\n", 1.0),                                   # prose is optional
    ("Here:\n```python\ndef f(:\n```\n", 0.5),                          # shape right, does not parse
    ("Here:\n```python\nx = 1\n```", 0.0),                              # no newline after the closing fence
    ("Here:\n```python\nx = 1\n```\ntrailing prose\n", 0.0),            # text after the block
    ("```python\nx = 1\n```\n```python\ny = 2\n```\n", 0.0),            # two blocks
    ("Use `` ``` `` fences:\n```python\nx = 1\n```\n", 0.0),           # backticks in the prose
    ("```py\nx = 1\n```\n", 0.0),                                       # must say python
    ("def add(a, b):\n    return a + b\n", 0.0),                        # raw code
])
def test_format_score_follows_the_exact_rule(text, score):
    assert format_score(text) == score


def test_reward_is_weighted_sum_and_pass_rate_counts_only_with_format_one():
    assert compute_reward(1.0, 1.0) == 2.5
    assert compute_reward(0.5, 1.0) == 1.5
    assert compute_reward(1.0, 0.5) == 0.25            # format 0.5: tests do not count
    assert compute_reward(1.0, 0.0) == 0.0
    assert compute_reward(1.0, 0.0, require_format=False) == 2.0
    assert compute_reward(0.5, 1.0, pass_weight=1.0, format_weight=1.0) == 1.5


def _probe(text, callee="f"):
    return assert_to_probe(ast.parse(text).body[0], callee)


@pytest.mark.parametrize("text, kind, expected", [
    ("assert f(1, 2) == 3", "eq", 3),
    ("assert [1, (2, 'x')] == f([3])", "eq", [1, (2, "x")]),
    ("assert f(0) is None", "eq", None),
    ("assert f(-1) == -1.5, 'message'", "eq", -1.5),
    ("assert f('a')", "truthy", None),
    ("assert not f('a')", "falsy", None),
    ("assert abs(f(2) - 0.5) < 1e-6", "close", 0.5),
    ("assert math.fabs(f(2) - 0.5) <= 1e-6", "close", 0.5),
])
def test_assert_with_a_literal_becomes_an_input_expected_pair(text, kind, expected):
    probe = _probe(text)
    assert (probe.kind, probe.expected) == (kind, expected)
    assert "return f(" in probe.source


def test_expected_value_never_appears_in_the_probe_source():
    probe = _probe("assert f(10) == 'SECRET-EXPECTED'")
    assert "SECRET-EXPECTED" not in probe.source


@pytest.mark.parametrize("text", [
    "assert f(1) == g(1)",                       # expectation is not a literal
    "for i in range(3):\n    assert f(i) == i",  # loop
    "assert f(1) is 5",                          # `is` with a non-singleton
    "assert f(f(1)) == 2",                       # nested call of the candidate
    "x = f(3)",
])
def test_other_test_shapes_become_trace_probes(text):
    probe = _probe(text)
    assert probe.kind == "trace"
    assert "assert" not in probe.source          # the sandbox's own verdict is never used


def test_statements_without_the_candidate_are_setup_for_later_probes():
    spec = compile_problem({"task_id": "t", "entry_point": "f", "reference": "def f(x):\n    return x",
                            "tests": ["import math", "y = math.sqrt(16)", "assert f(y) == 4.0"]})
    assert len(spec.probes) == 1
    assert "y = math.sqrt(16)" in spec.probes[0].source


def test_humaneval_problem_compiles_with_candidate_as_callee():
    spec = compile_problem({"task_id": "HumanEval/x", "entry_point": "inc", "prompt": "def inc(x):\n",
                            "test": "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 2\n"
                                    "    assert True\n"})
    assert [p.kind for p in spec.probes] == ["eq"]   # `assert True` does not call the candidate: not a test
    assert "METADATA" in spec.preamble


def test_trace_test_without_reference_is_rejected_with_the_test_named():
    with pytest.raises(ValueError, match="no reference"):
        compile_problem({"task_id": "t", "entry_point": "f", "tests": ["assert f(1) == g(1)"]})


@pytest.mark.parametrize("problem, field", [
    ({"entry_point": "f", "tests": ["assert f() == 1"]}, "task_id"),
    ({"task_id": "t", "entry_point": "not valid", "tests": ["assert f() == 1"]}, "entry_point"),
    ({"task_id": "t", "entry_point": "f", "tests": "assert f() == 1"}, "tests"),
    ({"task_id": "t", "entry_point": "f", "tests": ["assert f( == 1"]}, "tests"),
    ({"task_id": "t", "entry_point": "f", "tests": ["assert g() == 1"]}, "no test calls"),
    ({"task_id": "t", "entry_point": "f"}, "test"),
])
def test_bad_problem_is_rejected_naming_the_field(problem, field):
    with pytest.raises(ValueError, match=field):
        compile_problem(problem)


def test_values_decode_to_plain_types_only():
    tree = ["dict", [[["str", "k"], ["tuple", [["int", "1"], ["float", "nan"], ["none"], ["bool", True]]]],
                     [["int", "2"], ["set", [["bytes", "6869"]]]]]]
    value = decode_value(tree)
    assert value["k"][0] == 1 and value["k"][2] is None and value[2] == {b"hi"}
    for bad in (["object", "x"], ["int", 5], "str", ["list", [["list"] * 2]], ["int", "9" * 5000]):
        with pytest.raises(DecodeError):
            decode_value(bad)
    deep = ["none"]
    for _ in range(100):
        deep = ["list", [deep]]
    with pytest.raises(DecodeError):
        decode_value(deep)


def test_strict_equality_tells_bool_from_int_and_list_from_tuple():
    assert strict_equal(1, 1.0)
    assert not strict_equal(True, 1)
    assert not strict_equal([1, 2], (1, 2))
    assert not strict_equal({"a": 1}, {"a": True})
    assert strict_equal({"a": [1, (2,)]}, {"a": [1, (2,)]})


def test_judging_pairs_and_traces():
    assert judge_value(_probe("assert f(1) == 3"), 3)
    assert not judge_value(_probe("assert f(1) == 3"), "3")
    assert judge_value(_probe("assert abs(f(1) - 0.5) < 1e-3"), 0.5004)
    assert not judge_value(_probe("assert abs(f(1) - 0.5) < 1e-3"), True)
    assert judge_value(_probe("assert f(1)"), [0])
    assert not judge_value(_probe("assert not f(1)"), [0])
    call = ["tuple", [["tuple", [["int", "1"]]], ["dict", []]]]        # the arguments (1,), {}
    statement = plan_trace(_probe("y = f(f(1))"), [["ok", ["float", "1.0"], call, call], ["raise", "ValueError", call, call]])
    assert statement.replay is None                                    # a result feeds a later call
    assert judge_trace(statement, [["ok", ["float", repr(1.0 + 1e-12)], call, call], ["raise", "ValueError", call, call]])
    assert not judge_trace(statement, [["ok", ["float", "1.0"], call, call]])
    unserialisable = plan_trace(_probe("y = f(f(1))"), [["unserialisable", "X", call, call]])
    assert not judge_trace(unserialisable, [["unserialisable", "X", call, call]])
    replay = plan_trace(_probe("x = f(1)"), [["ok", ["float", "1.0"], call, call]])
    assert replay.replay == (call,)                                    # only the arguments go to the candidate
    assert judge_trace(replay, [["ok", ["int", "1"], call]]) and not judge_trace(replay, [["ok", ["int", "2"], call]])


def test_verdict_maps_executor_replies_to_statuses():
    probe = _probe("assert f(1) == 3")
    assert verdict(probe, {"status": "ok", "value": ["int", "3"]}) == ("passed", None)
    assert verdict(probe, {"status": "ok", "value": ["int", "4"]})[0] == "failed"
    assert verdict(probe, {"status": "ok", "value": ["weird"]})[0] == "failed"
    assert verdict(probe, {"status": "timeout", "detail": "wall"}) == ("timeout", "wall")
    assert verdict(probe, {"status": "made-up"})[0] == "runtime_error"


def test_program_assembly_for_fenced_raw_and_humaneval_completions():
    tests_spec = compile_problem({"task_id": "t", "entry_point": "add", "tests": ["assert add(1, 2) == 3"]})
    he_spec = compile_problem({"task_id": "h", "entry_point": "add", "prompt": "def add(a, b):\n",
                               "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"})
    fenced = build_program(tests_spec, FENCED)
    assert (fenced.format, fenced.how) == (1.0, "fenced") and fenced.code.startswith("def add")
    assert build_program(tests_spec, "def add(a, b): return a + b").code is None   # training gate
    raw = build_program(tests_spec, "def add(a, b): return a + b", require_format=False)
    assert (raw.format, raw.how, raw.code) == (0.0, "raw", "def add(a, b): return a + b")
    he = build_program(he_spec, "    return a + b\n", require_format=False)
    assert he.code == "def add(a, b):\n    return a + b\n" and he.how == "raw-humaneval"
    he_block = build_program(he_spec, FENCED)
    assert he_block.code.startswith("def add(a, b):\n\ndef add(a, b):")   # prompt kept in front of the block


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_problems_names_file_line_and_field(tmp_path):
    good = {"task_id": "a", "entry_point": "f", "tests": ["assert f() == 1"], "question": "extra is ignored"}
    assert load_problems(_write(tmp_path / "ok.jsonl", [good]))[0]["task_id"] == "a"
    bad = _write(tmp_path / "bad.jsonl", [good, {"task_id": "b", "entry_point": "f", "tests": 3}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'tests'"):
        load_problems(bad)
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not valid JSON"):
        load_problems(_write(tmp_path / "broken.jsonl", ["{nope"]))
    with pytest.raises(ValueError, match="no such file"):
        load_problems(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match=r"dup.jsonl:2: field 'task_id' repeats"):
        load_problems(_write(tmp_path / "dup.jsonl", [good, good]))


def test_load_problems_reads_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"task_id": "a", "entry_point": "f", "tests": ["assert f() == 1"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert load_problems(tmp_path / "p.parquet") == rows


def test_load_samples_rejects_unknown_task_id(tmp_path):
    path = _write(tmp_path / "s.jsonl", [{"task_id": "a", "completion": "x"}, {"task_id": "zz", "completion": "y"}])
    with pytest.raises(ValueError, match=r"s.jsonl:2: field 'task_id' 'zz' is not in the problems file"):
        load_samples(path, {"a"})
