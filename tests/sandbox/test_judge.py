"""Unit tests of the trusted side: format rule, reward, what a problem's tests are, program assembly, the reward
cache key, a judge that raises, problem/sample loading. No sandbox, no Ray."""

import json
import threading

import pytest

from orchestrator.ops.sandbox import load_problems, load_samples
from sandbox_workers import compute_reward, format_score
from sandbox_workers.judge import build_program, compile_problem
from sandbox_workers.pool import SandboxWorker, unjudgeable_reason
from sandbox_workers.worker import ScoreSettings, Scorer

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


def test_each_list_string_that_calls_the_entry_point_is_one_test_with_the_setup_before_it():
    spec = compile_problem({"task_id": "t", "entry_point": "f", "reference": "def f(x):\n    return x",
                            "tests": ["import math", "assert f(1) == 1", "y = math.sqrt(16)", "assert f(y) == 4.0"]})
    assert [c.text for c in spec.cases] == ["assert f(1) == 1", "assert f(y) == 4.0"]
    assert spec.cases[1].source == "import math\ny = math.sqrt(16)\nassert f(y) == 4.0"
    assert not any(c.check for c in spec.cases)


def test_a_humaneval_problem_is_one_test_run_as_written_with_its_prompt_before_it():
    prompt = "import math\n\ndef helper(x):\n    return x\n\ndef inc(x):\n    \"add one\"\n"
    test = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 2\n    assert True\n"
    spec = compile_problem({"task_id": "HumanEval/x", "entry_point": "inc", "prompt": prompt, "test": test,
                            "canonical_solution": "    return x + 1\n"})
    assert [(c.source, c.check) for c in spec.cases] == [(test, True)]
    assert spec.preamble == prompt and spec.reference == prompt + "    return x + 1\n"
    job = spec.job("PROGRAM", 3.0)
    assert (job["program"], job["preamble"], job["tests"], job["timeout"]) == \
        ("PROGRAM", prompt, [{"source": test, "check": True}], 3.0)


def test_the_job_holds_the_tests_in_the_order_asked_and_never_the_reference():
    spec = compile_problem({"task_id": "t", "entry_point": "f", "reference": "def f(x):  # SECRET-REFERENCE",
                            "tests": ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]})
    job = spec.job("def f(x):\n    return x\n", 5.0, order=[2, 0, 1])
    assert [t["source"] for t in job["tests"]] == ["assert f(3) == 3", "assert f(1) == 1", "assert f(2) == 2"]
    assert "SECRET-REFERENCE" not in json.dumps(job)


def test_a_string_after_the_last_test_is_refused_as_checking_nothing():
    with pytest.raises(ValueError, match=r"'tests'\[2\] does not call 'f'"):
        compile_problem({"task_id": "t", "entry_point": "f", "tests": ["x = [2, 1]", "f(x)", "assert x == [1, 2]"]})


def test_unjudgeable_reasons_name_the_test_and_what_the_reference_did():
    problem = {"task_id": "t", "entry_point": "f", "reference": "def f(g):\n    return g(1)\n",
               "tests": ["assert f(lambda x: x) == 1", "assert True or f(0)"]}
    unsendable = "unjudgeable: the test passes a function to f, which is not plain data"
    result = {"status": "failed", "tests": ["failed", "passed"], "calls": [1, 0], "test_details": [unsendable, None]}
    assert unjudgeable_reason(problem, result) == \
        f"the reference solution fails test 1 ('assert f(lambda x: x) == 1'): {unsendable}"
    result.update(tests=["passed", "passed"])
    assert unjudgeable_reason(problem, result) == "test 2 ('assert True or f(0)') never calls f: it would pass any program"
    result.update(status="passed", calls=[1, 1])
    assert unjudgeable_reason(problem, result) is None
    assert unjudgeable_reason(problem, {"status": "sandbox_error", "error": "broke"}).endswith("broke")


@pytest.mark.parametrize("problem, field", [
    ({"entry_point": "f", "tests": ["assert f() == 1"]}, "task_id"),
    ({"task_id": "t", "entry_point": "not valid", "tests": ["assert f() == 1"]}, "entry_point"),
    ({"task_id": "t", "entry_point": "f", "tests": "assert f() == 1"}, "tests"),
    ({"task_id": "t", "entry_point": "f", "tests": ["assert f( == 1"]}, "tests"),
    ({"task_id": "t", "entry_point": "f", "tests": ["assert g() == 1"]}, "no test calls"),
    ({"task_id": "t", "entry_point": "f"}, "test"),
    ({"task_id": "t", "entry_point": "f", "test": "def checker(c):\n    pass\n"}, "def check"),
    ({"task_id": "t", "entry_point": "f", "prompt": "def f(:\n", "test": "def check(c):\n    pass\n"}, "prompt"),
])
def test_bad_problem_is_rejected_naming_the_field(problem, field):
    with pytest.raises(ValueError, match=field):
        compile_problem(problem)


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
