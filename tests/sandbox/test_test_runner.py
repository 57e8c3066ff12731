"""The test box's runner and the candidate's call server as plain logic, without a sandbox: the candidate is
served from a thread over real pipes by the same code that runs in a candidate process (so nothing here may
end its process: the sandbox tests cover candidates that do).

What a test means is what its own code says: HumanEval's `check(candidate)` with the prompt's helpers,
asserts with their own tolerances, pytest.raises, unittest classes and `test_*` functions; state carries from
call to call within one test; arguments a call changed are changed in the test's own objects; exceptions come
back as their builtin class; a candidate that ends its process or sends SystemExit fails whatever the test
catches; arguments that are not plain data make the test unjudgeable.
"""

import os
import sys
import threading

import pytest

from sandbox_workers.inside import boxes


@pytest.fixture(autouse=True)
def test_box_modules(monkeypatch):
    """What the test box installs: its own `pytest` shim, and a fresh `__main__` per test (put back after)."""
    monkeypatch.setitem(sys.modules, "pytest", boxes.pytest_shim())
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    monkeypatch.setattr(sys, "argv", sys.argv)


class ThreadChannel:
    """Stands in for the supervisor: each `candidate()` serves `program` from a new thread over two pipes."""

    def __init__(self, program: str, entry_point: str):
        self.payload = {"program": program, "entry_point": entry_point}
        self.threads = []

    def candidate(self, index):
        call_r, call_w = os.pipe()
        reply_r, reply_w = os.pipe()

        def serve():
            try:
                boxes.serve_candidate(self.payload, call_r, reply_w)
            finally:
                os.close(call_r)
                os.close(reply_w)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.threads.append(thread)
        return call_w, reply_r


def run(program: str, test: str, entry_point: str = "f", *, preamble: str = "", check: bool = False):
    """(status, detail, calls) of one test as the test box runs it."""
    proxy = boxes.Proxy(ThreadChannel(program, entry_point), 0, entry_point)
    try:
        status, detail = boxes.run_test(preamble, entry_point, {"source": test, "check": check}, proxy)
    finally:
        proxy.close()
    return status, detail, proxy.calls


HUMANEVAL_TEST = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-3) == 9\n"


def test_check_candidate_runs_as_one_test_with_the_prompts_helpers():
    prompt = "def square_helper(x):\n    return x * x\n\ndef f(x):\n    '''square'''\n"
    test = "def check(candidate):\n    assert candidate(3) == square_helper(3)\n"
    good = prompt + "    return square_helper(x)\n"
    cheat = "def square_helper(x):\n    return 0\n\ndef f(x):\n    return 0\n"   # redefines the helper too
    assert run(good, test, preamble=prompt, check=True) == ("passed", "", 1)
    assert run(cheat, test, preamble=prompt, check=True)[0] == "failed"


def test_state_carries_from_call_to_call_within_one_test():
    stateful = "def f(x, seen=[]):\n    seen.append(x)\n    return x * x if len(seen) == 1 else -1\n"
    assert run(stateful, HUMANEVAL_TEST, check=True)[:2] == ("failed", "AssertionError")
    assert run("def f(x):\n    return x * x\n", HUMANEVAL_TEST, check=True) == ("passed", "", 2)


def test_the_tests_own_tolerance_and_comparisons_decide():
    test = "assert abs(f() - 0.5) < 1e-6"
    assert run("def f():\n    return 0.5 + 9e-7\n", test)[0] == "passed"
    assert run("def f():\n    return 0.5 + 1.1e-6\n", test)[0] == "failed"
    assert run("def f():\n    return 0\n", "assert f() == False")[0] == "passed"   # 0 == False, as written


def test_pytest_raises_works_without_pytest_installed_and_nothing_else_of_pytest_does():
    raises = "import pytest\nwith pytest.raises(ValueError, match='neg'):\n    f(-1)\nassert f(2) == 2"
    good = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    assert run(good, raises) == ("passed", "", 2)
    assert run("def f(x):\n    return x\n", raises)[0] == "failed"   # DID NOT RAISE
    assert run("def f(x):\n    raise TypeError('no')\n", raises)[0] == "runtime_error"
    # an approximation the test box would have to imitate: the test fails, its problem is unjudgeable
    assert run(good, "import pytest\nassert f(2) == pytest.approx(2.0000001)")[0] == "runtime_error"


def test_unittest_classes_and_test_functions_defined_by_the_test_are_run():
    classes = ("import unittest\nclass T(unittest.TestCase):\n    def test_one(self):\n"
               "        self.assertEqual(f(1), 2)\n")
    functions = "def test_one():\n    assert f(1) == 2\n"
    main = classes + "unittest.main()\n"
    for test in (classes, functions, main):
        assert run("def f(x):\n    return x + 1\n", test)[0] == "passed", test
        assert run("def f(x):\n    return x\n", test)[0] == "failed", test


def test_a_call_changes_the_tests_own_arguments():
    test = "lst = [3, 1, 2]\nf(lst)\nassert lst == [1, 2, 3]"
    assert run("def f(xs):\n    xs.sort()\n", test)[0] == "passed"
    assert run("def f(xs):\n    return sorted(xs)\n", test)[0] == "failed"


def test_exceptions_come_back_as_their_builtin_class_with_their_arguments():
    test = "try:\n    f({})\n    assert False\nexcept KeyError as e:\n    assert e.args == ('k',)"
    assert run("def f(d):\n    return d['k']\n", test)[0] == "passed"
    impostor = "class KeyError(Exception):\n    pass\ndef f(d):\n    raise KeyError('k')\n"
    assert run(impostor, test)[0] == "runtime_error"


@pytest.mark.parametrize("program", [
    "def f(x):\n    raise SystemExit(0)\n",
    "def f(x):\n    raise KeyboardInterrupt\n",
])
def test_a_candidate_that_sends_an_ending_exception_fails_whatever_the_test_catches(program):
    test = "try:\n    f(1)\nexcept BaseException:\n    pass"
    status, detail, _ = run(program, test)
    assert status in ("runtime_error", "ended"), (status, detail)


def test_an_argument_that_is_not_plain_data_makes_the_test_unjudgeable():
    status, detail, calls = run("def f(g):\n    return g(1)\n", "assert f(lambda x: x + 1) == 2")
    assert status == "failed" and detail.startswith("unjudgeable:") and calls == 1


def test_a_result_that_is_not_plain_data_equals_nothing_the_test_has():
    assert run("class C:\n    def __eq__(self, o):\n        return True\ndef f():\n    return C()\n",
               "assert f() == 3")[0] == "failed"
    assert run("def f():\n    return f\n", "assert f() is not None")[0] == "passed"   # as written


def test_a_program_that_raises_at_import_fails_with_its_exception_named():
    status, detail, _ = run("raise ValueError('x')\ndef f():\n    return 1\n", "assert f() == 1")
    assert (status, detail) == ("runtime_error", "program raised ValueError at import")


def test_a_test_that_never_calls_the_candidate_reports_zero_calls():
    assert run("def f():\n    return 1\n", "def test_x():\n    pass\nassert True") == ("passed", "", 0)
