"""`diffurl data codeio`: real CodeI/O tasks from the installed reasoning-gym data, converted through the real
sandbox; their tests pass the reference and fail a wrong solution; failing and non-deterministic generators are
dropped with their reason; the conversion is deterministic."""
from __future__ import annotations

import gzip
import json
import pytest

from orchestrator import codeio
from orchestrator.cli import main
from orchestrator.data import load_prompts
from orchestrator.errors import UserError
from tests.sandbox.pools import module_pool

pytestmark = pytest.mark.integration

REAL = 5
TESTS = 4
WRONG = "def main_solution(**kwargs):\n    return None\n"
FAKE_CODE = "def main_solution(x):\n    return x * 2\n"
FAKE_ROWS = {  # description -> generator
    "fails": "def generate_inputs(rng):\n    raise ValueError('no input today')\n",
    "drifts": "import time\n\ndef generate_inputs(rng):\n    return {'x': time.perf_counter_ns() % 1000003}\n",
}


@pytest.fixture(scope="module")
def real_tasks():
    tasks, _, _ = codeio.read_tasks()  # make install puts reasoning-gym's data files in the venv
    return [t for t in tasks if not codeio.outside_stdlib(t)][:REAL]


@pytest.fixture(scope="module")
def fake_tasks(tmp_path_factory):
    path = tmp_path_factory.mktemp("codeio") / "codeio.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for name, generator in FAKE_ROWS.items():
            # a distinct reference per row: the task id is its hash
            f.write(json.dumps({"task_description": f"Double x ({name}).", "input_output_spec": "Input: x (int)",
                                "code_sample": f"# {name}\n{FAKE_CODE}", "input_generator": generator}) + "\n")
        f.write(json.dumps({"task_description": "no code"}) + "\n")
    tasks, malformed, rows = codeio.read_tasks(path)
    assert rows == 3 and [m["reason"] for m in malformed] == ["malformed"]
    return dict(zip(FAKE_ROWS, tasks))


@pytest.fixture(scope="module")
def pool(ray_cluster):
    with module_pool("codeio-test-sandbox", num_workers=2, memory_mb=512, batch_size=8) as pool:
        yield pool


@pytest.fixture(scope="module")
def converted(real_tasks, fake_tasks, pool):
    return codeio.convert_tasks(real_tasks + list(fake_tasks.values()), pool, tests_per_task=TESTS, seed=0,
                                log=lambda line: None)


def test_real_tasks_convert_to_problems_that_pass_the_reference_and_fail_a_wrong_solution(real_tasks, converted,
                                                                                           pool, tmp_path):
    real_ids = {t.task_id for t in real_tasks}
    problems = [p for p in converted.problems if p["task_id"] in real_ids]
    dropped = [d for d in converted.dropped if d["task_id"] in real_ids]
    assert len(problems) >= 3 and len(problems) + len(dropped) == REAL
    assert all(d["reason"] in codeio.REASONS for d in dropped)
    for p in problems:
        assert p["entry_point"] == "main_solution" and 1 < len(p["tests"]) <= TESTS + 1
        assert p["tests"][0] == codeio.SAME and all(t.startswith("assert _same(main_solution(**")
                                                    for t in p["tests"][1:])
    results = pool.score(problems * 2, [p["reference"] for p in problems] + [WRONG] * len(problems))
    assert [r["status"] for r in results[:len(problems)]] == ["passed"] * len(problems)
    assert all(r["passed"] == 0 for r in results[len(problems):])
    path = tmp_path / "train.jsonl"  # what `diffurl train` reads: the project's own format, no row skipped
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    loaded, skipped = load_prompts(path, log=lambda line: None)
    assert skipped == [] and loaded == problems


def test_failing_and_nondeterministic_generators_are_dropped_and_reported(fake_tasks, converted):
    reasons = {d["task_id"]: d for d in converted.dropped}
    assert reasons[fake_tasks["fails"].task_id]["reason"] == "generator"
    assert "no input today" in reasons[fake_tasks["fails"].task_id]["detail"]
    assert reasons[fake_tasks["drifts"].task_id]["reason"] == "nondeterministic"


def test_the_conversion_is_deterministic(real_tasks, converted, pool):
    again = codeio.convert_tasks(real_tasks, pool, tests_per_task=TESTS, seed=0, log=lambda line: None)
    real_ids = {t.task_id for t in real_tasks}
    assert again.problems == [p for p in converted.problems if p["task_id"] in real_ids]


def test_the_split_is_by_task_and_seeded():
    ids = [f"codeio/{i:012x}" for i in range(2000)]
    held = [i for i in ids if codeio.is_heldout(i, 0, 0.1)]
    assert 150 < len(held) < 250 and held == [i for i in ids if codeio.is_heldout(i, 0, 0.1)]
    assert held != [i for i in ids if codeio.is_heldout(i, 1, 0.1)]


def test_missing_data_is_one_line_and_exit_2_before_anything_starts(tmp_path, capsys):
    assert main(["data", "codeio", "--out", str(tmp_path / "out"), "--source", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install --no-deps reasoning-gym" in err
    assert not (tmp_path / "out").exists()
