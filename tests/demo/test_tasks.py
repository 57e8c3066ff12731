"""The demo's task family: deterministic, disjoint splits, references that pass their own tests in the sandbox."""
from __future__ import annotations

import os
from collections import defaultdict

import pytest
import ray

from orchestrator.data import load_prompts
from orchestrator.demo.tasks import (TEMPLATES, answer_text, buggy_reference, generate_splits, is_buggy_demo,
                                    neighbours, reference_solution, write_splits)
from sandbox_workers import SandboxPool, format_score


@pytest.fixture(scope="module")
def splits():
    return generate_splits(seed=0)


@pytest.fixture(scope="module")
def pool():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="test-tasks")
    pool = SandboxPool(num_workers=2, require_format=True, name_prefix="tasks-sandbox", batch_size=64)
    yield pool
    pool.shutdown()
    ray.shutdown()


def test_splits_are_a_pure_function_of_the_seed(splits):
    assert generate_splits(seed=0) == splits
    other = generate_splits(seed=1)
    assert {p["question"] for p in other["heldout"]} != {p["question"] for p in splits["heldout"]}


def test_heldout_has_at_least_200_problems_and_shares_no_description_or_tests_with_training(splits):
    assert len(splits["heldout"]) >= 200
    seen = {name: {(p["question"], tuple(p["tests"])) for p in problems} for name, problems in splits.items()}
    descriptions = {name: {p["question"] for p in problems} for name, problems in splits.items()}
    tests = {name: {tuple(p["tests"]) for p in problems} for name, problems in splits.items()}
    for a, b in (("train", "heldout"), ("train", "rl"), ("rl", "heldout")):
        assert not seen[a] & seen[b]
        assert not descriptions[a] & descriptions[b], f"{a} and {b} share a description"
        assert not tests[a] & tests[b], f"{a} and {b} share a test list"


def test_heldout_asks_for_trained_templates_with_constants_unseen_for_that_template(splits):
    def combos(problems):  # task_id = split/template/constants/variant
        return {tuple(p["task_id"].split("/")[1:3]) for p in problems}

    train, rl, heldout = combos(splits["train"]), combos(splits["rl"]), combos(splits["heldout"])
    assert not train & heldout and not rl & heldout and not train & rl
    assert {t for t, _ in heldout} <= {t for t, _ in train}
    assert {p["category"] for p in splits["heldout"]} == {"arithmetic", "conditional", "string", "list", "composition"}


def test_every_answer_in_the_diffucoder_format_scores_format_one(splits):
    answers = [answer_text(p["reference"]) for problems in splits.values() for p in problems]
    assert all(format_score(a) == 1.0 for a in answers)


def test_written_splits_load_without_a_skipped_row(tmp_path):
    paths = write_splits(tmp_path, seed=0)
    for split, path in paths.items():
        problems, skipped = load_prompts(path)
        assert skipped == [] and len(problems) > 0, split


def _passes_here(code: str, tests: list[str]) -> bool:
    """Run the generator's own code (a reference or its mutation, never model output) and its asserts in-process."""
    namespace: dict = {}
    try:
        exec(code, namespace)  # noqa: S102
        for test in tests:
            exec(test, namespace)  # noqa: S102
    except Exception:
        return False
    return True


def test_every_reference_solution_passes_its_own_tests_when_run_here(splits):
    """Our own generated code, so it may run in-process: all splits, every problem."""
    failing = [p["task_id"] for problems in splits.values() for p in problems
               if not _passes_here(p["reference"], p["tests"])]
    assert not failing, failing[:5]


def test_every_heldout_and_rl_reference_passes_its_own_tests_through_the_sandbox(splits, pool):
    problems = splits["heldout"] + splits["rl"]
    results = pool.score(problems, [answer_text(p["reference"]) for p in problems])
    failed = [(p["task_id"], r["status"], r.get("error")) for p, r in zip(problems, results) if r["status"] != "passed"]
    assert not failed, failed[:5]
    assert all(r["reward"] == 2.5 for r in results)


def test_tests_reject_the_solution_with_a_neighbouring_constant(splits, pool):
    """Each held-out problem's tests fail the solution whose first constant is one step off (add 7 -> add 8)."""
    templates = {t.key: t for t in TEMPLATES}
    problems, wrong = [], []
    for p in splits["heldout"]:
        template = templates[p["template"]]
        constants = tuple(type(v)(c) for v, c in zip((r[0] for r in template.params), p["task_id"].split("/")[2].split("-")))
        neighbour = next(c for c in neighbours(template, constants) if c[1:] == constants[1:])
        problems.append(p)
        wrong.append(answer_text(reference_solution(template, neighbour, p["entry_point"])))
    results = pool.score(problems, wrong)
    passed = [p["task_id"] for p, r in zip(problems, results) if r["status"] == "passed"]
    assert not passed, passed[:5]
    assert all(r["format"] == 1.0 for r in results)


def test_buggy_demonstrations_swap_one_operator_and_fail_their_tests(splits):
    """The warm start's buggy demonstrations: every training reference has one, it differs from the reference
    by one swapped operator/call, parses, and fails the problem's own tests (all but a handful of problems)."""
    still_pass = 0
    for p in splits["train"]:
        buggy = buggy_reference(p["reference"])
        assert buggy is not None and buggy != p["reference"]
        assert format_score(answer_text(buggy)) == 1.0
        still_pass += _passes_here(buggy, p["tests"])
    assert still_pass <= 0.01 * len(splits["train"])
    assert buggy_reference("def f(x):\n    return x\n") is None


def test_which_demonstrations_are_buggy_is_a_pure_function_of_seed_and_task_id(splits):
    ids = [p["task_id"] for p in splits["train"]]
    picked = [is_buggy_demo(i, 0.5) for i in ids]
    assert picked == [is_buggy_demo(i, 0.5) for i in ids]
    assert 0.45 < sum(picked) / len(ids) < 0.55
    assert not any(is_buggy_demo(i, 0.0) for i in ids) and all(is_buggy_demo(i, 1.0) for i in ids)
