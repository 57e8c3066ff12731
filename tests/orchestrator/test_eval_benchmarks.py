"""`diffurl eval --problems humaneval|humaneval+|mbpp|mbpp+|codeio-heldout|FILE[,...]`: where each benchmark's file
is found (EvalPlus's own variables, diffurl's, EvalPlus's cache), the one-line refusals before Ray starts, and a
run on several benchmarks at once reporting pass@k and the prompt format per benchmark."""
from __future__ import annotations

import json
import os

import pytest
import ray

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.evaluate import BENCHMARKS, PROMPT_FORMATS, load_eval_problems, split_problems_spec
from tests.orchestrator import test_evaluate
from tests.orchestrator.test_data_formats import write_case, write_rows

random_model_dir = test_evaluate.random_model_dir  # the tiny random model of test_evaluate.py, built here once

VARIABLES = ("HUMANEVAL_OVERRIDE_PATH", "MBPP_OVERRIDE_PATH", "DIFFURL_MBPP_PATH", "DIFFURL_CODEIO_DIR")
CODEIO_ROW = {"task_id": "codeio/7", "question": "Write a Python function `f(x: int) -> int` that returns x plus 1.",
              "entry_point": "f", "tests": ["assert f(1) == 2", "assert f(5) == 6"],
              "reference": "def f(x):\n    return x + 1\n"}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No benchmark variable set, EvalPlus's cache an empty directory, and Ray refusing to start."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ray, "init", _no_ray)
    return monkeypatch


def _no_ray(*args, **kwargs):
    raise AssertionError("ray.init was called: the refusal must come before Ray starts")


@pytest.fixture
def config_only(tmp_path):
    """A checkpoint argument that resolves (its config.json) but is never loaded: every refusal comes first."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffurl: error: --problems"), err
    return err[0]


@pytest.mark.parametrize("name, variable, where", [
    ("humaneval+", "HUMANEVAL_OVERRIDE_PATH", "humanevalplus_release"),
    ("mbpp+", "MBPP_OVERRIDE_PATH", "mbppplus_release"),
    ("mbpp", "DIFFURL_MBPP_PATH", "google-research/tree/master/mbpp"),
    ("codeio-heldout", "DIFFURL_CODEIO_DIR", "diffurl data codeio --out DIR"),
])
def test_a_benchmark_without_its_file_exits_2_with_one_line_naming_the_variable_before_ray(
        clean_env, config_only, capsys, name, variable, where):
    rc = main(["eval", str(config_only), "--problems", f"humaneval,{name}", "--device", "cpu"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert f"--problems {name}: " in line and f"set {variable}" in line and where in line


def test_a_variable_naming_a_missing_file_or_the_other_benchmark_s_file_exits_2(clean_env, config_only, tmp_path,
                                                                                  capsys):
    clean_env.setenv("HUMANEVAL_OVERRIDE_PATH", str(tmp_path / "nope.jsonl"))
    assert main(["eval", str(config_only), "--problems", "humaneval+", "--device", "cpu"]) == 2
    assert f"HUMANEVAL_OVERRIDE_PATH={tmp_path / 'nope.jsonl'}" in _one_error_line(capsys)

    clean_env.setenv("HUMANEVAL_OVERRIDE_PATH", str(write_case(tmp_path, "mbpp+")))  # MBPP+ rows under humaneval+
    assert main(["eval", str(config_only), "--problems", "humaneval+", "--device", "cpu"]) == 2
    line = _one_error_line(capsys)
    assert "EvalPlus MBPP+ rows (mbpp+), not humaneval+" in line

    (tmp_path / "codeio").mkdir()  # the directory exists, its heldout.jsonl does not
    clean_env.setenv("DIFFURL_CODEIO_DIR", str(tmp_path / "codeio"))
    assert main(["eval", str(config_only), "--problems", "codeio-heldout", "--device", "cpu"]) == 2
    assert str(tmp_path / "codeio" / "heldout.jsonl") in _one_error_line(capsys)


@pytest.mark.parametrize("spec, named", [("humaneval,,mbpp", "an empty entry"),
                                         ("humaneval,humaneval", "humaneval given twice")])
def test_an_empty_or_repeated_entry_exits_2(clean_env, config_only, capsys, spec, named):
    assert main(["eval", str(config_only), "--problems", spec, "--device", "cpu"]) == 2
    assert named in _one_error_line(capsys)


def test_evalplus_s_own_cache_is_found_when_its_variable_is_not_set(clean_env, tmp_path):
    cache = tmp_path / "cache" / "evalplus"
    cache.mkdir(parents=True)
    write_rows(cache / "HumanEvalPlus-v0.1.10.jsonl", [json.loads(write_case(tmp_path, "humaneval+").read_text())])
    problems = load_eval_problems("humaneval+", log=lambda _: None)
    assert [p["task_id"] for p in problems] == ["HumanEval/901"] and "question" not in problems[0]
    with pytest.raises(UserError, match="MBPP_OVERRIDE_PATH"):
        load_eval_problems("mbpp+", log=lambda _: None)


def test_entries_are_split_on_commas_and_every_name_is_known():
    assert split_problems_spec("humaneval, mbpp+ ,x.jsonl") == ["humaneval", "mbpp+", "x.jsonl"]
    assert set(BENCHMARKS) == {"humaneval", "humaneval+", "mbpp", "mbpp+", "codeio-heldout"}


def test_eval_on_the_benchmarks_and_every_file_format_at_once_reports_each_with_its_prompt_format(
        random_model_dir, tmp_path, monkeypatch, capsys):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFURL_MBPP_PATH", str(write_case(tmp_path, "mbpp-sanitized")))
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(write_case(tmp_path, "humaneval+")))
    (tmp_path / "codeio").mkdir()
    write_rows(tmp_path / "codeio" / "heldout.jsonl", [CODEIO_ROW])
    monkeypatch.setenv("DIFFURL_CODEIO_DIR", str(tmp_path / "codeio"))
    # the formats the names above do not cover, as files: (format, problems, asked with the chat prompt)
    files = {str(write_case(tmp_path, name)): (problems, chat) for name, problems, chat in [
        ("acecode", 1, True), ("acecode-hard", 2, True), ("humaneval", 1, False), ("mbpp", 1, False),
        ("mbpp+", 1, False)]}
    expected = {"mbpp": (1, False), "humaneval+": (1, False), "codeio-heldout": (1, True), **files}
    out = tmp_path / "results.json"
    rc = main(["eval", str(random_model_dir), "--problems", ",".join(expected), "--samples", "2",
               "--temperatures", "0,1", "--max-new-tokens", "8", "--sandbox-workers", "1", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert [(r["benchmark"], r["temperature"]) for r in results] == [
        (name, t) for name in expected for t in (0.0, 1.0)]
    for r in results:
        problems, chat = expected[r["benchmark"]]
        assert r["prompt_format"] == PROMPT_FORMATS[chat] and r["problems"] == problems, r
        assert r["sandbox_errors"] == 0 and r["unjudgeable"] == [], r
    assert [r["samples"] for r in results] == [1, 2] * len(expected) and all(set(r["pass_at"]) == {"1", "2"}
                                                                             for r in results[1::2])
    printed = capsys.readouterr().out
    instruct, chat = PROMPT_FORMATS[False], PROMPT_FORMATS[True]
    assert "| metric | mbpp | humaneval+ | codeio-heldout |" in printed
    assert f"| prompt | {instruct} | {instruct} | {chat} |" in printed
    assert "| problems | 1 | 1 | 1 |" in printed and "| pass@2 (T=1, n=2) |" in printed
