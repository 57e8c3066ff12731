"""Dataset formats (orchestrator/formats.py): each format, written tiny by the test, is recognised and mapped to
problems, and its reference solutions pass (and wrong ones fail) through the real sandbox."""
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from orchestrator.cli import FORMAT_HELP
from orchestrator.data import convert, load_prompts
from orchestrator.errors import UserError
from orchestrator.evaluate import load_eval_problems
from orchestrator.formats import EVALPLUS_CHUNK, FORMAT_NAMES, load_problems, recognise
from sandbox_workers import SandboxPool
from sandbox_workers.judge import compile_problem


def acecode_raw() -> list[dict]:
    def inference(model, completion, rate):
        return {"model_name": model, "completion_id": 0, "completion": completion, "pass_rate": rate}

    good = "def add_one(x):\n    return x + 1\n"
    return [{"id": "oss_1", "source": "oss", "question": "Write add_one(x), which returns x plus one.",
             "test_cases": ["assert add_one(1) == 2", "assert add_one(-1) == 0"],
             "inferences": [inference("qwen_coder_2.5", good, 1.0), inference("llama3_instruct", "x = 1", 0.0)],
             "context_messages": [{"role": "user", "content": "q"}]}]


def acecode_processed() -> list[dict]:
    row = {k: v for k, v in acecode_raw()[0].items() if k != "inferences"}
    copy = {**row, "question": "Please complete the following problem:\n```\ndef add_one(x):\n    \"\"\"\n"
                               f"    {row['question']}\n    \"\"\"\n```\n"}
    return [row, copy]  # the same id: a signature copy, as DiffuCoder's process_data.py writes it


HUMANEVAL = {"task_id": "HumanEval/900", "entry_point": "double_root",
             "prompt": "import math\n\n\ndef helper(x):\n    return 2 * x\n\n\ndef double_root(x: float) -> float:\n"
                       "    \"\"\"Twice the square root of x.\"\"\"\n",
             "canonical_solution": "    return helper(math.sqrt(x))\n",
             "test": "def check(candidate):\n    assert candidate(4) == helper(2)\n    assert candidate(9) == 6\n"}
MBPP = {"task_id": 2, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "",
        "challenge_test_list": []}
MBPP_SANITIZED = {"source_file": "x.py", "task_id": 3, "prompt": "Write a function for the floor square root.",
                  "code": "import math\ndef root(n):\n    return math.isqrt(n)", "test_imports": ["import math"],
                  "test_list": ["assert root(10) == math.isqrt(10)", "assert root(16) == 4"]}
HUMANEVAL_PLUS = {"task_id": "HumanEval/901", "entry_point": "mean", "contract": "", "atol": 0,
                  "prompt": "def mean(xs: list) -> float:\n    \"\"\"The mean of xs.\"\"\"\n",
                  "canonical_solution": "    return sum(xs) / len(xs)\n", "base_input": [[[1.0, 2.0]]],
                  "plus_input": [[[0.1 * i, 0.2, 0.3]] for i in range(EVALPLUS_CHUNK + 5)]}
MBPP_PLUS = {"task_id": "Mbpp/4", "entry_point": "largest", "contract": "", "atol": 0,
             "prompt": "\"\"\"\nWrite a function to find the largest of three numbers.\nassert largest(1, 2, 3) == 3\n"
                       "\"\"\"\n",
             "canonical_solution": "def largest(a, b, c):\n    return max(a, b, c)\n",
             "base_input": [[1, 2, 3]], "plus_input": [[3, 2, 1], [5, 5, 5], [-1, -7, -3]]}

# format -> (rows, the file name it is written to (the container varies), task ids, tests per problem, wrong code)
CASES = {
    "acecode": (acecode_raw(), "acecode.parquet", ["oss_1"], [2], "def add_one(x):\n    return x\n"),
    "acecode-hard": (acecode_processed(), "acecode_hard.jsonl", ["oss_1", "oss_1/signature"], [2, 2],
                     "def add_one(x):\n    return x - 1\n"),
    "humaneval": ([HUMANEVAL], "humaneval.jsonl.gz", ["HumanEval/900"], [1],
                  "import math\ndef double_root(x):\n    return math.sqrt(x)\n"),
    "mbpp": ([MBPP], "mbpp.jsonl", ["Mbpp/2"], [2], "def add(a, b):\n    return a - b\n"),
    "mbpp-sanitized": ([MBPP_SANITIZED], "sanitized-mbpp.json", ["Mbpp/3"], [2],
                       "def root(n):\n    return n // 2\n"),
    "humaneval+": ([HUMANEVAL_PLUS], "HumanEvalPlus.jsonl", ["HumanEval/901"], [2],
                   "def mean(xs):\n    return sum(xs) / (len(xs) + 1)\n"),
    "mbpp+": ([MBPP_PLUS], "MbppPlus.json.gz", ["Mbpp/4"], [1], "def largest(a, b, c):\n    return a\n"),
}


def write_rows(path: Path, rows: list[dict]) -> Path:
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith(".json") or name.endswith(".json.gz"):  # one JSON array, as sanitized-mbpp.json is
        text = json.dumps(rows, indent=2)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    return path


def write_case(tmp_path: Path, name: str) -> Path:
    rows, file_name, *_ = CASES[name]
    return write_rows(tmp_path / file_name, rows)


@pytest.mark.parametrize("name", list(CASES))
def test_each_format_is_recognised_and_mapped_to_training_and_eval_problems(tmp_path, name, capsys):
    _, _, ids, tests, _ = CASES[name]
    path = write_case(tmp_path, name)
    assert recognise(path).name == name
    problems, skipped = load_prompts(path)
    assert f"({name})" in capsys.readouterr().out.strip().splitlines()[-1]  # the one line naming the format
    assert skipped == [] and [p["task_id"] for p in problems] == ids
    assert all(p["question"] and p["entry_point"] and isinstance(p["tests"], list) for p in problems)
    assert [len(compile_problem(p).cases) for p in problems] == tests
    evals = load_eval_problems(str(path), log=lambda _: None)
    assert [p["task_id"] for p in evals] == ids
    benchmark = name.startswith(("humaneval", "mbpp"))  # asked with the EvalPlus template: `prompt`, no question
    assert all(("question" not in p and "prompt" in p) == benchmark for p in evals)


def test_an_explicit_format_is_used_and_a_wrong_one_names_the_missing_columns(tmp_path):
    path = write_case(tmp_path, "mbpp")
    problems, _, fmt = load_problems(path, "mbpp", log=lambda _: None)
    assert fmt.name == "mbpp" and problems[0]["entry_point"] == "add"
    with pytest.raises(UserError, match=r"--format=humaneval needs the columns .* lacks prompt, test, entry_point"):
        recognise(path, "humaneval")
    with pytest.raises(UserError, match="--format=nope: unknown format"):
        recognise(path, "nope")


def test_a_file_no_format_fits_is_one_line_naming_its_columns_and_the_formats(tmp_path):
    path = write_rows(tmp_path / "x.jsonl", [{"task_id": "x", "body": "y"}])
    with pytest.raises(UserError) as info:
        recognise(path)
    text = str(info.value)
    assert "\n" not in text and "its columns (task_id, body)" in text
    assert all(name in text for name in FORMAT_NAMES[1:])


def test_the_cli_help_names_every_format():
    assert all(name in FORMAT_HELP for name in FORMAT_NAMES)


def test_mbpp_integer_task_ids_and_setup_strings(tmp_path):
    problems = load_eval_problems(str(write_case(tmp_path, "mbpp-sanitized")), log=lambda _: None)
    assert problems[0]["task_id"] == "Mbpp/3" and problems[0]["tests"][0] == "import math"
    assert problems[0]["prompt"].startswith('"""\nWrite a function for the floor square root.\nassert root(10)')


def test_conversion_writes_training_jsonl_that_loads_as_diffurl_problems(tmp_path):
    src = write_case(tmp_path, "acecode-hard")
    report = convert(src, tmp_path / "out.jsonl", log=lambda _: None)
    assert (report.read, report.written, report.skipped) == (2, 2, [])
    assert recognise(tmp_path / "out.jsonl").name == "diffurl"
    problems, _ = load_prompts(tmp_path / "out.jsonl", log=lambda _: None)
    assert [p["task_id"] for p in problems] == ["oss_1", "oss_1/signature"]


def test_hard_subset_goes_through_convert_acecode_and_is_refused_without_inferences(tmp_path):
    report = convert(write_case(tmp_path, "acecode"), tmp_path / "hard.jsonl", hard_subset=True, log=lambda _: None)
    assert report.thresholds == {"mean_max": 0.5, "std_min": 0.5}  # one row: the percentiles are its own values
    problems, _ = load_prompts(tmp_path / "hard.jsonl", log=lambda _: None)
    assert [p["task_id"] for p in problems] == ["oss_1", "oss_1/signature"]  # as process_data.py writes them
    with pytest.raises(UserError, match=r"--hard-subset: .* acecode-hard rows \(already DiffuCoder's hard subset\)"):
        convert(write_case(tmp_path, "acecode-hard"), tmp_path / "no.jsonl", hard_subset=True)


# ----------------------------------------------------------------------------------------- the real sandbox

@pytest.fixture(scope="module")
def pool():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="test-data-formats")
    pool = SandboxPool(num_workers=2, require_format=False, name_prefix="formats-sandbox", batch_size=16)
    yield pool
    pool.shutdown()
    ray.shutdown()


def fenced(code: str) -> str:
    return f"```python\n{code}\n```\n"


def test_every_format_judges_its_reference_passed_and_a_wrong_solution_failed(tmp_path, pool):
    problems, completions, expected = [], [], []
    for name, (*_, wrong) in CASES.items():
        path = write_case(tmp_path, name)
        views = [load_eval_problems(str(path), log=lambda _: None), load_prompts(path, log=lambda _: None)[0]]
        for view in views:
            for p in view:
                reference = compile_problem(p).reference
                if name == "acecode-hard":  # process_data.py drops `inferences`: no reference; a correct solution
                    assert reference is None
                    reference = acecode_raw()[0]["inferences"][0]["completion"]
                problems += [p, p]
                completions += [fenced(reference), fenced(wrong)]
                expected += [(name, p["task_id"], "passed"), (name, p["task_id"], "failed")]
    plus = load_eval_problems(str(write_case(tmp_path, "humaneval+")), log=lambda _: None)[0]
    problems.append(plus)  # EvalPlus's float rule: a different summation is within the tolerance
    completions.append(fenced("import math\ndef mean(xs):\n    return math.fsum(xs) / len(xs)\n"))
    expected.append(("humaneval+", plus["task_id"], "passed"))
    scores = pool.score(problems, completions)
    got = [(name, task, s["status"]) for (name, task, _), s in zip(expected, scores)]
    assert got == expected
