"""Problems are checked against their own reference solutions through the path a candidate takes: those the
judge cannot judge (callbacks, objects of the test's own, identity checks, modules the sandbox lacks, a
test that never calls the entry point, a reference that fails) are named with the reason and left out, by
`validate_problems` and by `diffurl sandbox score` (its other problems scored as usual)."""

import json

import pytest

from orchestrator.cli import main
from sandbox_workers.pool import validate_problems

pytestmark = pytest.mark.integration

GOOD = {"task_id": "good", "entry_point": "inc", "tests": ["assert inc(1) == 2"], "reference": "def inc(x):\n    return x + 1\n"}
ROWS = [
    GOOD,
    {"task_id": "callback", "entry_point": "apply", "reference": "def apply(g, x):\n    return g(x)\n",
     "tests": ["assert apply(lambda v: v * 2, 3) == 6"]},
    {"task_id": "own_class", "entry_point": "area", "reference": "def area(r):\n    return r.w * r.h\n",
     "tests": ["class R:\n    w, h = 2, 3\nassert area(R()) == 6"]},
    {"task_id": "identity", "entry_point": "same", "reference": "def same(xs):\n    return xs\n",
     "tests": ["xs = [1]\nassert same(xs) is xs"]},
    {"task_id": "no_module", "entry_point": "inc", "reference": "def inc(x):\n    return x + 1\n",
     "tests": ["import numpy\nassert inc(1) == 2"]},
    {"task_id": "no_call", "entry_point": "inc", "reference": "def inc(x):\n    return x + 1\n",
     "tests": ["assert inc(1) == 2", "def test_never():\n    pass\nassert True or inc"]},
    {"task_id": "wrong_reference", "entry_point": "inc", "reference": "def inc(x):\n    return x\n",
     "tests": ["assert inc(1) == 2"]},
    {"task_id": "humaneval_style", "entry_point": "inc", "prompt": "def inc(x):\n    \"add one\"\n",
     "canonical_solution": "    return x + 1\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n"},
    {"task_id": "no_reference", "entry_point": "inc", "tests": ["assert inc(1) == 2"]},
]


def test_problems_the_judge_cannot_judge_are_named_with_their_reason(ray_cluster):
    reasons = validate_problems(ROWS, num_workers=1, test_timeout_s=5.0)
    assert sorted(reasons) == ["callback", "identity", "no_call", "no_module", "own_class", "wrong_reference"]
    assert "unjudgeable: the test passes a function to apply" in reasons["callback"]
    assert "unjudgeable: the test passes a R to area" in reasons["own_class"]
    assert reasons["identity"].endswith("AssertionError")
    assert "ModuleNotFoundError" in reasons["no_module"]
    assert reasons["no_call"] == "test 2 ('def test_never():\\n    pass\\nassert True or inc') never calls inc: it would pass any program"
    assert reasons["wrong_reference"].startswith("the reference solution fails test 1 ('assert inc(1) == 2')")


def test_sandbox_score_leaves_unjudgeable_problems_out_and_says_why(ray_cluster, tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(row) + "\n" for row in ROWS[:2]))
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "good", "completion": "def inc(x):\n    return x + 1\n"}) + "\n"
                       + json.dumps({"task_id": "callback", "completion": "def apply(g, x):\n    return 6\n"}) + "\n")
    out = tmp_path / "results.jsonl"
    assert main(["sandbox", "score", "--problems", str(problems), "--samples", str(samples), "--out", str(out),
                 "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "problems: 2 of 2 checked against their reference solutions, 1 unjudgeable, left out: callback (" in printed
    assert "pass@1: 1.0000  (1 samples, 1 problems, 1 unjudgeable problems left out" in printed
    good, left_out = (json.loads(line) for line in out.read_text().splitlines())
    assert (good["status"], good["reward"]) == ("passed", 2.0)
    assert (left_out["status"], left_out["reward"]) == ("unjudgeable", None)
    assert left_out["error"].startswith("unjudgeable problem: the reference solution fails test 1")
