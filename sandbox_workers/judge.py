"""Judging, as far as it happens outside the sandbox: the format rule, the reward, which program runs for a
completion, and what the problem's tests are.

Nothing here executes untrusted code, and no value the program computes ever comes back here. A problem's
tests are run *as written* inside the sandbox (sandbox_workers/inside/boxes.py): in a test box that never
holds candidate code, with the entry point bound to a proxy of a candidate box that imported the program.
The sandbox returns one verdict per test. What a test is depends on the format, following its official
harness:
  * HumanEval (`prompt`, `test`, `entry_point`): one test, the whole `check(candidate)` in one run, with the
    prompt's imports and helper functions (the trusted ones, not the candidate's) defined around it; the
    candidate's state carries from call to call within it, as in the official one-process check;
  * `tests` (a list of code strings, AceCode style): each string that mentions the entry point is one test,
    with a candidate process of its own; strings that do not are setup, run before every later test.
The reference solution (`canonical_solution` / `reference`) is not used to judge: it is checked against the
tests the same way (`Scorer.validate`), and a problem it does not pass is unjudgeable and left out.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field

# The exact format rule (README, "Reward"): optional prose without triple backticks, exactly one
# ```python block, the closing fence followed by a newline that ends the text.
_FORMAT_RE = re.compile(r"(?:(?!```)[\s\S])*```python\n((?:(?!```)[\s\S])*)```\n")
# Lenient extraction for evaluation: the first fenced block tagged python/py/python3 or untagged.
_BLOCK_RE = re.compile(r"```(?:python3?|py)?[ \t]*\n([\s\S]*?)```")
MAX_COMPLETION_CHARS = 1 << 20  # a completion or a program (its prompt included) over this is not run


def format_score(text: str) -> float:
    """1.0 for prose + one ```python block ending in "```\\n" that parses, 0.5 if it does not parse, else 0.0;
    0.0 for a text over MAX_COMPLETION_CHARS (never parsed: its cost on the trusted side would grow with it)."""
    if len(text) > MAX_COMPLETION_CHARS:
        return 0.0
    match = _FORMAT_RE.fullmatch(text)
    if match is None:
        return 0.0
    return 1.0 if _parses(match.group(1)) else 0.5


def compute_reward(pass_rate: float, format: float, *, pass_weight: float = 2.0, format_weight: float = 0.5,
                   require_format: bool = True) -> float:
    """r = pass_weight * pass_rate + format_weight * format; pass_rate counts only when format == 1
    if require_format (the training rule), always otherwise (evaluation of raw code)."""
    counted = pass_rate if (format == 1.0 or not require_format) else 0.0
    return pass_weight * counted + format_weight * format


def _parses(code: str) -> bool:
    try:
        _parse(code, "code")
    except ValueError:
        return False
    return True


def _parse(text: str, what: str) -> ast.Module:
    """ast.parse, total: whatever the text, a module or a ValueError naming `what`."""
    try:
        return ast.parse(text)
    except SyntaxError as exc:
        raise ValueError(f"{what} does not parse: {exc.msg} (line {exc.lineno})") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ValueError(f"{what} cannot be parsed ({type(exc).__name__}: nested too deep, or too large)") from None


@dataclass(frozen=True)
class Case:
    """One test of a problem, as the test box runs it."""
    text: str      # what reports show
    source: str    # run as written, with the entry point bound to the candidate's proxy
    check: bool    # then call `check(candidate)` (HumanEval)


@dataclass(frozen=True)
class JudgeSpec:
    """A problem compiled for judging."""
    task_id: str
    entry_point: str
    prompt: str | None        # HumanEval prompt (raw completions are appended to it)
    preamble: str             # run before each test in the test box: the prompt's imports and helpers
    cases: tuple[Case, ...]
    reference: str | None     # the full reference program, checked against the tests (`Scorer.validate`)
    key: str = field(default="")  # hash of everything that decides a verdict

    def job(self, program: str, timeout_s: float, order: list[int] | None = None) -> dict:
        """What the sandbox runs for `program`: the cases in `order` (default: the problem's)."""
        order = range(len(self.cases)) if order is None else order
        return {"program": program, "entry_point": self.entry_point, "preamble": self.preamble,
                "tests": [{"source": self.cases[i].source, "check": self.cases[i].check} for i in order],
                "timeout": timeout_s}


def compile_problem(problem: dict) -> JudgeSpec:
    """Problem dict (HumanEval or `tests` schema) -> JudgeSpec; ValueError naming the field on bad input."""
    task_id = problem.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("field 'task_id' must be a non-empty string")
    entry_point = problem.get("entry_point")
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise ValueError(f"field 'entry_point' must be a Python identifier, got {entry_point!r}")
    prompt = problem.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError("field 'prompt' must be a string")
    if "test" in problem:
        cases = (_humaneval_case(problem["test"]),)
        preamble = _preamble(prompt or "")
        reference = _humaneval_reference(prompt, problem.get("canonical_solution"))
    elif "tests" in problem:
        cases, preamble = _list_cases(problem["tests"], entry_point), ""
        reference = problem.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise ValueError("field 'reference' must be a string of code")
    else:
        raise ValueError("needs either 'test' (HumanEval) or 'tests' (list of test code strings)")
    key = json.dumps([entry_point, prompt, preamble, [[c.source, c.check] for c in cases]])
    return JudgeSpec(task_id, entry_point, prompt, preamble, cases, reference, hashlib.sha256(key.encode()).hexdigest())


def _preamble(prompt: str) -> str:
    """The prompt as the test box runs it before a test: as it is, or, when it ends in a function's header
    (`def f(x):` with no body yet), with `pass` as that body."""
    for text in (prompt, prompt.rstrip() + "\n    pass\n"):
        if _parses(text):
            return text
    raise ValueError("field 'prompt' does not parse, even with a body for its last function")


def _humaneval_case(test: object) -> Case:
    if not isinstance(test, str):
        raise ValueError("field 'test' must be a string")
    module = _parse(test, "field 'test'")
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or not checks[0].args.args:
        raise ValueError("field 'test' must define exactly one 'def check(candidate)'")
    return Case("check(candidate)", test, True)


def _humaneval_reference(prompt: str | None, solution: object) -> str | None:
    if solution is None:
        return None
    if not isinstance(solution, str) or prompt is None:
        raise ValueError("field 'canonical_solution' must be a string and needs 'prompt'")
    return prompt + solution


def _list_cases(tests: object, entry_point: str) -> tuple[Case, ...]:
    """One case per string that mentions the entry point, with the setup strings before it in front. A string
    after the last test is refused: it would check nothing (what a call did is checked in the call's string)."""
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise ValueError("field 'tests' must be a list of strings")
    cases, setup, last = [], [], -1
    for i, text in enumerate(tests):
        tree = _parse(text, f"field 'tests'[{i}]")
        if any(isinstance(n, ast.Name) and n.id == entry_point for n in ast.walk(tree)):
            cases.append(Case(text, "\n".join([*setup, text]), False))
            last = i
        else:
            setup.append(text)
    if not cases:
        raise ValueError(f"no test calls '{entry_point}'")
    if last < len(tests) - 1:
        raise ValueError(f"field 'tests'[{last + 1}] does not call '{entry_point}' and no test after it does "
                         "(a check of what a call did belongs in the same string as the call)")
    return tuple(cases)


# ---------------------------------------------------------------------------------------------------------
# Program assembly


@dataclass(frozen=True)
class Program:
    code: str | None   # None: nothing to run (format gate or no code found)
    format: float
    how: str           # fenced | raw-humaneval | raw


def build_program(spec: JudgeSpec, completion: str, *, require_format: bool = True) -> Program:
    """Decide what code runs for a completion.

    format is always the exact rule on the whole text. With require_format (training) only format == 1
    completions run, using their one block. Otherwise (evaluation): the first fenced block if any, else the
    whole text; a HumanEval problem's prompt is put in front of raw text (HumanEval convention) and in
    front of a block too, so that the prompt's imports and helpers stay defined.
    """
    fmt = format_score(completion)
    if require_format and fmt != 1.0:
        return Program(None, fmt, "fenced")
    block = _BLOCK_RE.search(completion)
    if block is not None:
        code, how = block.group(1), "fenced"
        if spec.prompt is not None:
            code = spec.prompt + "\n" + code
    elif spec.prompt is not None:
        code, how = spec.prompt + completion, "raw-humaneval"
    else:
        code, how = completion, "raw"
    return Program(code, fmt, how)
