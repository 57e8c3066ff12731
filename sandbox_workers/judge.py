"""Judging outside the sandbox: format rule, program assembly, test conversion, comparison, reward.

Nothing here executes untrusted code. The sandbox only ever receives a *probe*: a function whose body
sets up the inputs and calls the candidate. It returns serialised values; this module decodes them
(bounded, plain types only) and compares them with expected values that never entered the sandbox.

A problem's tests become probes as follows (`compile_problem`):
  * `assert f(args) == literal` (either side, `is` for None/True/False)  -> kind "eq"
  * `assert abs(f(args) - literal) < eps` (also `<=`, `math.fabs`)        -> kind "close"
  * `assert f(args)` / `assert not f(args)`                                -> kind "truthy" / "falsy"
  * any other statement that calls f (loops, non-literal expectations)    -> kind "trace": every call
    of f is recorded in the sandbox; the expected trace comes from the problem's reference solution,
    run once in the sandbox and kept outside.
Statements that do not mention f are setup code, run before each later probe.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

STATUSES = ("passed", "failed", "runtime_error", "timeout", "memory_limit", "output_limit", "sandbox_error")
PROBE_NAME = "__diffurl_probe__"

# The exact format rule (README, "Reward"): optional prose without triple backticks, exactly one
# ```python block, the closing fence followed by a newline that ends the text.
_FORMAT_RE = re.compile(r"(?:(?!```)[\s\S])*```python\n((?:(?!```)[\s\S])*)```\n")
# Lenient extraction for evaluation: the first fenced block tagged python/py/python3 or untagged.
_BLOCK_RE = re.compile(r"```(?:python3?|py)?[ \t]*\n([\s\S]*?)```")

MAX_DECODE_DEPTH = 32
MAX_DECODE_ITEMS = 200_000


def format_score(text: str) -> float:
    """1.0 for prose + one ```python block ending in "```\\n" that parses, 0.5 if it does not parse, else 0.0."""
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
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


@dataclass(frozen=True)
class Probe:
    """One test. `source` goes into the sandbox; `expected` never does."""
    text: str                 # the original test statement, for reports
    source: str               # defines PROBE_NAME(callee) -> value (pair kinds) or None (trace)
    kind: str                 # eq | close | truthy | falsy | trace
    expected: object = None   # eq/close: the literal (trace probes: the worker keeps the reference's trace)
    tolerance: float = 0.0
    strict_less: bool = True  # close: `<` (True) or `<=` (False)


@dataclass(frozen=True)
class JudgeSpec:
    """A problem compiled for judging."""
    task_id: str
    entry_point: str
    prompt: str | None        # HumanEval prompt (raw completions are appended to it)
    preamble: str             # module-level test code (HumanEval METADATA, helpers), run after the program
    probes: tuple[Probe, ...]
    reference: str | None     # full reference program, used for trace probes
    key: str = field(default="")  # hash of everything that decides the verdict

    @property
    def needs_reference(self) -> bool:
        return any(p.kind == "trace" for p in self.probes)


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
        preamble, callee, statements = _humaneval_tests(problem["test"])
        reference = _humaneval_reference(prompt, problem.get("canonical_solution"))
    elif "tests" in problem:
        preamble, callee, statements = "", entry_point, _assert_list(problem["tests"])
        reference = problem.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise ValueError("field 'reference' must be a string of code")
    else:
        raise ValueError("needs either 'test' (HumanEval) or 'tests' (list of assert strings)")
    probes = statements_to_probes(statements, callee)
    if not probes:
        raise ValueError(f"no test calls '{callee}'")
    if reference is None and any(p.kind == "trace" for p in probes):
        bad = next(p.text for p in probes if p.kind == "trace")
        raise ValueError(f"test {bad[:80]!r} is not 'assert {callee}(...) == literal' and there is no reference "
                         "solution ('canonical_solution' or 'reference') to compute its expected value")
    spec = JudgeSpec(task_id, entry_point, prompt, preamble, tuple(probes), reference)
    return dataclasses.replace(spec, key=_spec_key(spec))


def _spec_key(spec: JudgeSpec) -> str:
    payload = json.dumps([spec.entry_point, spec.prompt, spec.preamble, spec.reference,
                          [[p.source, p.kind, repr(p.expected), p.tolerance, p.strict_less] for p in spec.probes]])
    return hashlib.sha256(payload.encode()).hexdigest()


def _humaneval_tests(test: object) -> tuple[str, str, list[ast.stmt]]:
    if not isinstance(test, str):
        raise ValueError("field 'test' must be a string")
    try:
        module = ast.parse(test)
    except SyntaxError as exc:
        raise ValueError(f"field 'test' does not parse: {exc.msg} (line {exc.lineno})") from None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or not checks[0].args.args:
        raise ValueError("field 'test' must define exactly one 'def check(candidate)'")
    preamble = "\n".join(ast.unparse(n) for n in module.body if n is not checks[0])
    return preamble, checks[0].args.args[0].arg, list(checks[0].body)


def _humaneval_reference(prompt: str | None, solution: object) -> str | None:
    if solution is None:
        return None
    if not isinstance(solution, str) or prompt is None:
        raise ValueError("field 'canonical_solution' must be a string and needs 'prompt'")
    return prompt + solution


def _assert_list(tests: object) -> list[ast.stmt]:
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise ValueError("field 'tests' must be a list of strings")
    statements: list[ast.stmt] = []
    for i, text in enumerate(tests):
        try:
            statements.extend(ast.parse(text).body)
        except SyntaxError as exc:
            raise ValueError(f"field 'tests'[{i}] does not parse: {exc.msg}") from None
    return statements


def statements_to_probes(statements: list[ast.stmt], callee: str) -> list[Probe]:
    """Each statement that mentions `callee` becomes a probe; the others are setup for later probes."""
    probes, setup = [], []
    for stmt in statements:
        if not _mentions(stmt, callee):
            setup.append(stmt)
            continue
        probes.append(assert_to_probe(stmt, callee, setup))
    return probes


def assert_to_probe(stmt: ast.stmt, callee: str, setup: list[ast.stmt] = ()) -> Probe:
    """Convert one test statement to a Probe: a pair (call, expected) when it has one of the pair shapes,
    else a trace probe."""
    text = ast.unparse(stmt)
    pair = _pair_shape(stmt, callee)
    if pair is None:
        body = [*setup, _StripAsserts().visit(_copy(stmt))]
        return Probe(text, _probe_source(callee, body), "trace")
    call, kind, expected, tolerance, strict_less = pair
    body = [*setup, ast.Return(value=call)]
    return Probe(text, _probe_source(callee, body), kind, expected, tolerance, strict_less)


def _pair_shape(stmt: ast.stmt, callee: str):
    if not isinstance(stmt, ast.Assert):
        return None
    test = stmt.test
    if _is_call_of(test, callee):
        return test, "truthy", None, 0.0, True
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_call_of(test.operand, callee):
        return test.operand, "falsy", None, 0.0, True
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(op, (ast.Eq, ast.Is)):
        for call, other in ((left, right), (right, left)):
            literal = _literal(other)
            if _is_call_of(call, callee) and literal is not _NO:
                if isinstance(op, ast.Is) and literal not in (None, True, False):
                    return None
                return call, "eq", literal, 0.0, True
        return None
    if isinstance(op, (ast.Lt, ast.LtE)):
        tolerance = _literal(right)
        inner = _abs_argument(left)
        if isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and inner is not None:
            if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Sub):
                for call, other in ((inner.left, inner.right), (inner.right, inner.left)):
                    literal = _literal(other)
                    if _is_call_of(call, callee) and _is_number(literal):
                        return call, "close", literal, float(tolerance), isinstance(op, ast.Lt)
    return None


_NO = object()


def _literal(node: ast.expr):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _abs_argument(node: ast.expr) -> ast.expr | None:
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        name = ast.unparse(node.func)
        if name in ("abs", "math.fabs", "fabs"):
            return node.args[0]
    return None


def _is_call_of(node: ast.expr, callee: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == callee
            and not _mentions_any(node.args + [k.value for k in node.keywords], callee))


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _mentions_any(nodes: list[ast.AST], name: str) -> bool:
    return any(_mentions(n, name) for n in nodes)


def _copy(stmt: ast.stmt) -> ast.stmt:
    return ast.parse(ast.unparse(stmt)).body[0]


class _StripAsserts(ast.NodeTransformer):
    """`assert E, msg` -> `E`: in a trace probe the sandbox's own verdict is ignored; only the recorded
    calls count."""

    def visit_Assert(self, node: ast.Assert) -> ast.Expr:
        return ast.copy_location(ast.Expr(value=self.visit(node.test)), node)


def _probe_source(callee: str, body: list[ast.stmt]) -> str:
    func = ast.FunctionDef(name=PROBE_NAME, args=ast.arguments(posonlyargs=[], args=[ast.arg(arg=callee)],
                           kwonlyargs=[], kw_defaults=[], defaults=[]), body=body or [ast.Pass()],
                           decorator_list=[], returns=None, type_params=[])
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=[func], type_ignores=[])))


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


# ---------------------------------------------------------------------------------------------------------
# Values out of the sandbox: tagged JSON -> plain Python values, bounded.


class DecodeError(ValueError):
    pass


def decode_value(tree: object) -> object:
    """Inverse of the sandbox serializer. Only plain types come out; anything else raises DecodeError."""
    budget = [MAX_DECODE_ITEMS]
    return _decode(tree, 0, budget)


def _decode(tree: object, depth: int, budget: list[int]) -> object:
    budget[0] -= 1
    if depth > MAX_DECODE_DEPTH or budget[0] < 0 or not isinstance(tree, list) or not tree:
        raise DecodeError("value too deep, too large or malformed")
    tag, args = tree[0], tree[1:]
    try:
        if tag == "none":
            return None
        if tag == "bool" and isinstance(args[0], bool):
            return args[0]
        if tag == "int" and isinstance(args[0], str) and len(args[0]) <= 4300:
            return int(args[0])
        if tag == "float" and isinstance(args[0], str) and len(args[0]) <= 64:
            return float(args[0])
        if tag == "complex" and isinstance(args[0], str) and isinstance(args[1], str):
            return complex(float(args[0]), float(args[1]))
        if tag == "str" and isinstance(args[0], str):
            return args[0]
        if tag == "bytes" and isinstance(args[0], str):
            return bytes.fromhex(args[0])
        if tag in ("list", "tuple", "set", "frozenset") and isinstance(args[0], list):
            items = [_decode(x, depth + 1, budget) for x in args[0]]
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        if tag == "dict" and isinstance(args[0], list):
            pairs = [(_decode(k, depth + 1, budget), _decode(v, depth + 1, budget)) for k, v in args[0]]
            return dict(pairs)
    except (IndexError, ValueError, TypeError) as exc:
        raise DecodeError(f"malformed {tag!r}: {exc}") from None
    raise DecodeError(f"unknown tag {tag!r}")


def strict_equal(a: object, b: object, *, rel_tol: float = 0.0, abs_tol: float = 0.0) -> bool:
    """Equality on decoded plain values that also requires equal types (int and float may meet; bool is
    not an int here). With tolerances, floats compare with math.isclose."""
    numeric = (int, float)
    if type(a) in numeric and type(b) in numeric:
        if rel_tol or abs_tol:
            return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_equal(x, y, rel_tol=rel_tol, abs_tol=abs_tol) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k], rel_tol=rel_tol, abs_tol=abs_tol) for k in a)
    return a == b


TRACE_REL_TOL = 1e-6
TRACE_ABS_TOL = 1e-9


def judge_value(probe: Probe, value: object) -> bool:
    """Verdict for one decoded probe result (pair kinds) or decoded trace (list of outcomes)."""
    if probe.kind == "eq":
        return strict_equal(value, probe.expected)
    if probe.kind == "close":
        if type(value) not in (int, float):
            return False
        gap = abs(value - probe.expected)
        return gap < probe.tolerance if probe.strict_less else gap <= probe.tolerance
    if probe.kind == "truthy":
        return bool(value)
    if probe.kind == "falsy":
        return not value
    raise ValueError(f"unknown probe kind {probe.kind!r}")


def decode_trace(trace: object) -> list[tuple]:
    """[[tag, payload], ...] from the sandbox -> [(tag, value or exception name), ...]."""
    if not isinstance(trace, list) or len(trace) > 100_000:
        raise DecodeError("trace is not a bounded list")
    out = []
    for item in trace:
        if not (isinstance(item, list) and len(item) == 2 and item[0] in ("ok", "raise", "abort", "unserialisable")):
            raise DecodeError("malformed trace entry")
        tag, payload = item
        out.append((tag, decode_value(payload) if tag == "ok" else str(payload)[:64]))
    return out


def traces_match(got: list[tuple], expected: list[tuple] | None) -> bool:
    """Same calls, same outcomes (floats within TRACE tolerances); unserialisable never matches."""
    if expected is None or any(tag == "unserialisable" for tag, _ in [*got, *expected]):
        return False
    return strict_equal(got, expected, rel_tol=TRACE_REL_TOL, abs_tol=TRACE_ABS_TOL)


def verdict(probe: Probe, reply: dict, expected_trace: list[tuple] | None = None) -> tuple[str, str | None]:
    """(status, detail) for one test from the executor's reply, judged here, outside the sandbox."""
    status = reply.get("status")
    if status != "ok":
        if status not in STATUSES:
            return "runtime_error", f"unknown status {str(status)[:40]}"
        return status, reply.get("detail")
    try:
        if probe.kind == "trace":
            passed = traces_match(decode_trace(reply.get("trace")), expected_trace)
        else:
            passed = judge_value(probe, decode_value(reply.get("value")))
    except DecodeError as exc:
        return "failed", f"undecodable result: {exc}"
    return ("passed", None) if passed else ("failed", "wrong result")
