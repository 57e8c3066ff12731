import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.prompts import build_chat_prompt
from orchestrator.data import convert_acecode, infer_entry_point, load_prompts
from orchestrator.errors import UserError

DATA = Path(__file__).resolve().parents[2] / "configs" / "data"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def problem(task_id="t/0", **fields) -> dict:
    return {"task_id": task_id, "question": "Write `f(x)`.", "entry_point": "f", "tests": ["assert f(1) == 1"],
            "reference": "def f(x):\n    return x\n", **fields}


def test_toy_datasets_load_completely_and_share_no_problem():
    train, train_skipped = load_prompts(DATA / "toy_train.jsonl")
    evals, eval_skipped = load_prompts(DATA / "toy_eval.jsonl")
    assert (len(train), len(evals), train_skipped, eval_skipped) == (40, 20, [], [])
    for key in ("task_id", "entry_point", "question"):
        assert not {p[key] for p in train} & {p[key] for p in evals}


@pytest.mark.parametrize("name", ["toy_train.jsonl", "toy_eval.jsonl"])
def test_toy_references_pass_their_own_tests(name):
    problems, _ = load_prompts(DATA / name)
    for p in problems:
        namespace: dict = {}
        exec(p["reference"], namespace)  # our own trusted reference solutions
        for test in p["tests"]:
            exec(test, namespace)
        assert p["entry_point"] in namespace and p["entry_point"] in p["question"]


def test_bad_jsonl_rows_are_skipped_and_reported_by_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        problem("a"),
        "{not json",
        problem("b", tests=[]),
        problem("c", tests="assert f(1) == 1"),
        "",
        problem("a"),
        "[1, 2]",
        problem("d", entry_point="not valid"),
        problem(7),
    ])
    problems, skipped = load_prompts(path)
    assert [p["task_id"] for p in problems] == ["a", "7"]
    assert skipped == [
        "line 2: not valid JSON (Expecting property name enclosed in double quotes)",
        "line 3: missing field 'tests'",
        "line 4: field 'tests' must be a list, got str",
        "line 6: duplicate task_id 'a'",
        "line 7: expected an object, got list",
        "line 8: entry_point 'not valid' is not a Python identifier",
    ]


def test_parquet_dataset_loads_and_reports_bad_rows_by_row_number(tmp_path):
    rows = [problem("a"), problem("b", question=""), problem("c", reference=None)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    problems, skipped = load_prompts(tmp_path / "d.parquet")
    assert [p["task_id"] for p in problems] == ["a", "c"] and problems[1]["reference"] is None
    assert problems[0]["tests"] == ["assert f(1) == 1"]
    assert skipped == ["row 2: missing field 'question'"]


def test_unusable_dataset_files_are_one_line_user_errors(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    write_jsonl(tmp_path / "all_bad.jsonl", ["{", problem("x", tests=[])])
    (tmp_path / "d.csv").write_text("a,b\n")
    cases = [(tmp_path / "missing.jsonl", "not found"), (tmp_path / "junk.parquet", "unreadable Parquet"),
             (tmp_path / "all_bad.jsonl", "no usable problems (2 rows skipped; first: line 1: not valid JSON"),
             (tmp_path / "d.csv", "unsupported format '.csv'")]
    for path, expected in cases:
        with pytest.raises(UserError) as info:
            load_prompts(path)
        assert expected in str(info.value) and "\n" not in str(info.value)


def test_chat_prompt_is_system_then_user_asking_for_one_python_block():
    messages = build_chat_prompt(problem(question="Write `f(x)` returning x."))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "You are a helpful assistant."
    assert messages[1]["content"].startswith("Write `f(x)` returning x.") and "```python" in messages[1]["content"]


def test_entry_point_is_the_non_builtin_function_the_tests_call():
    assert infer_entry_point(["assert len(pairs([1, 2])) == 1", "assert pairs([]) == []", "assert sorted(x) == y"]) \
        == "pairs"
    assert infer_entry_point(["assert True", "not python ("]) is None


def acecode_rows() -> list[dict]:
    """10 rows whose (qwen, llama) pass rates give mean threshold 0.225 and std threshold 0.125 (exact in binary)."""
    rates = [(0, 0), (0, 0.25), (0.125, 0.375), (0.25, 0.5), (0.25, 0.75), (0.375, 0.875), (0.5, 1.0),
             (0.75, 1.0), (1.0, 1.0), (1.0, 1.0)]
    rows = []
    for i, (qwen, llama) in enumerate(rates):
        inferences = [
            {"model_name": "qwen_coder_2.5", "completion_id": 0, "completion": f"def solve_{i}(x):\n    return x",
             "pass_rate": float(qwen)},
            {"model_name": "llama3_instruct", "completion_id": 1, "completion": "x = 1", "pass_rate": float(llama)},
        ]
        if i == 1:  # a model the filter must ignore: counted, row 1 would no longer be hard
            inferences.append({"model_name": "deepseek_coder", "completion_id": 2,
                               "completion": "def solve_1(x):\n    return x + 0", "pass_rate": 1.0})
        rows.append({"id": f"oss_{i}", "source": "oss", "question": f"Implement solve_{i}, which returns x.",
                     "test_cases": [f"assert solve_{i}(1) == 1", f"assert solve_{i}(2) == 2"],
                     "inferences": inferences, "context_messages": [{"role": "user", "content": "q"}]})
    rows.append({**rows[0], "id": "oss_nomodel", "inferences": []})
    rows.append({**rows[0], "id": "oss_notests", "test_cases": ["assert True"]})
    return rows


def write_acecode(tmp_path: Path, fmt: str) -> Path:
    rows = acecode_rows()
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "acecode.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "acecode.parquet")
    return tmp_path / "acecode.parquet"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_acecode_hard_filter_keeps_low_mean_high_spread_rows_of_the_two_reference_models(tmp_path, fmt):
    report = convert_acecode(write_acecode(tmp_path, fmt), tmp_path / "hard.jsonl", signature_variants=False)
    assert report.thresholds == {"mean_max": 0.225, "std_min": 0.125}
    assert (report.read, report.hard_kept, report.written) == (12, 1, 1)
    assert report.skipped == ["{} 11: no pass rates from qwen_coder_2.5, llama3_instruct".format(
        "line" if fmt == "jsonl" else "row"), "{} 12: cannot infer the entry point from test_cases".format(
        "line" if fmt == "jsonl" else "row")]
    problems, skipped = load_prompts(tmp_path / "hard.jsonl")
    assert skipped == [] and [p["task_id"] for p in problems] == ["oss_1"]
    assert problems[0]["entry_point"] == "solve_1"
    assert problems[0]["tests"] == ["assert solve_1(1) == 1", "assert solve_1(2) == 2"]
    assert problems[0]["reference"] == "def solve_1(x):\n    return x + 0"  # the inference that passed every test


def test_acecode_signature_variant_wraps_the_question_under_the_best_signature(tmp_path):
    convert_acecode(write_acecode(tmp_path, "jsonl"), tmp_path / "hard.jsonl")
    problems, _ = load_prompts(tmp_path / "hard.jsonl")
    assert [p["task_id"] for p in problems] == ["oss_1", "oss_1/signature"]
    variant = problems[1]["question"]
    assert variant.startswith("Please complete the following problem:\n```\ndef solve_1(x):\n")
    assert "Implement solve_1, which returns x." in variant


def test_acecode_without_the_hard_filter_keeps_every_convertible_row(tmp_path):
    report = convert_acecode(write_acecode(tmp_path, "jsonl"), tmp_path / "all.jsonl", hard_only=False,
                             signature_variants=False)
    assert (report.written, report.thresholds) == (11, {})
    assert len(load_prompts(tmp_path / "all.jsonl")[0]) == 11
