"""Judging outside the sandbox: format rule, program assembly, test conversion, comparison, reward.

Nothing here executes untrusted code. The sandbox only ever receives a *probe*: inputs and a call of the
candidate. It returns serialised values; this module decodes them (bounded, plain types only, no hashing of
values the program chose) and compares them with expected values that never entered the sandbox.

A problem's tests become probes as follows (`compile_problem`):
  * `assert f(literals) == literal` (either side, `is` for None/True/False)  -> kind "eq"
  * `assert abs(f(literals) - literal) < eps` (also `<=`, `math.fabs`)        -> kind "close"
  * `assert f(literals)` / `assert not f(literals)`                           -> kind "truthy" / "falsy"
  * any other statement that calls f (loops, computed arguments or expectations, prompt helpers)
    -> kind "trace", judged from the problem's reference solution (`plan_trace`): its run in the sandbox
    records every call of f (arguments before and after, outcome), kept outside. The candidate then gets
    only the recorded arguments, call after call ("replay"), and each outcome is judged here as a pair.
    Where that cannot work (arguments that are not plain values; a result that feeds a later call's
    arguments; more calls than are recorded) the statement itself runs in the candidate's process, with
    the comparisons of its asserts removed and the candidate's results handed back as plain copies, and
    the whole recorded trace (arguments too) must match the reference's.
  Without a reference solution, asserts with computed arguments stay pairs (their arguments are then
  computed in the candidate's process).
Statements that do not mention f are setup code, run before each later probe.
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import hashlib
import itertools
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

MAX_DECODE_DEPTH = 32          # the sandbox's encoder stops at the same depth
MAX_DECODE_ITEMS = 200_000     # per value (per trace: MAX_TRACE_ITEMS)
MAX_TRACE_ITEMS = 1_000_000
MAX_KEY_CHARS = 1 << 24        # canonical keys built for one value's set members and dict keys
MAX_TRACE_ENTRIES = 100_000


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
    replayable: bool = True   # trace: no result of the candidate's can reach a later call's arguments


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
    probes = statements_to_probes(statements, callee, has_reference=reference is not None)
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
                          [[p.source, p.kind, repr(p.expected), p.tolerance, p.strict_less, p.replayable]
                           for p in spec.probes]])
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


def statements_to_probes(statements: list[ast.stmt], callee: str, *, has_reference: bool = True) -> list[Probe]:
    """Each statement that mentions `callee` becomes a probe; the others are setup for later probes."""
    probes, setup = [], []
    for stmt in statements:
        if not _mentions(stmt, callee):
            setup.append(stmt)
            continue
        probes.append(assert_to_probe(stmt, callee, setup, has_reference=has_reference))
    return probes


def assert_to_probe(stmt: ast.stmt, callee: str, setup: list[ast.stmt] = (), *, has_reference: bool = True) -> Probe:
    """Convert one test statement to a Probe: a pair (call, expected) when it has one of the pair shapes
    (with literal arguments, where a reference can compute the others), else a trace probe."""
    text = ast.unparse(stmt)
    pair = _pair_shape(stmt, callee)
    if pair is not None and has_reference and not _literal_arguments(pair[0]):
        pair = None  # computed arguments (a prompt helper, a name the program may shadow): the reference's
    if pair is None:
        body = [*setup, _StripAsserts(callee).visit(_copy(stmt))]
        return Probe(text, _probe_source(callee, body), "trace", replayable=not _results_reach_later_calls(stmt, callee))
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


def _literal_arguments(call: ast.Call) -> bool:
    return (all(not isinstance(a, ast.Starred) and _literal(a) is not _NO for a in call.args)
            and all(k.arg is not None and _literal(k.value) is not _NO for k in call.keywords))


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
    """`assert E, msg` -> only the calls of the candidate inside E. In a trace probe the sandbox's own
    verdict is ignored (only the recorded calls count), and the expected side of a comparison never enters
    the candidate's process: `assert abs(f(x) - 2 / 3) < 1e-6` -> `f(x)`; an assert without a call -> `pass`.
    Comprehensions, lambdas and short-circuit expressions that call it are kept whole (scope and flow)."""

    KEEP_WHOLE = (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp, ast.BoolOp, ast.IfExp,
                  ast.NamedExpr)

    def __init__(self, callee: str):
        self.callee = callee

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        kept = self._calls(node.test)
        value = kept[0] if len(kept) == 1 else ast.Tuple(elts=kept, ctx=ast.Load())
        return ast.copy_location(ast.Expr(value=value) if kept else ast.Pass(), node)

    def _calls(self, node: ast.AST) -> list[ast.expr]:
        if not _mentions(node, self.callee):
            return []
        if isinstance(node, ast.Call) and _mentions(node.func, self.callee) or isinstance(node, self.KEEP_WHOLE):
            return [node]
        if isinstance(node, ast.Name):
            return [node]
        return [kept for child in ast.iter_child_nodes(node) for kept in self._calls(child)]


def _results_reach_later_calls(stmt: ast.stmt, callee: str) -> bool:
    """Whether a value the candidate returned may flow into the arguments of a later call in this statement
    (`f(f(x))`, `y = f(x); f(y)`, `acc.append(f(x)); f(acc)`). Such calls cannot be replayed with the
    reference's arguments: those would carry the reference's results into the candidate's process.
    Flow-insensitive over names; a name bound from anything that mentions the candidate or such a name is
    tainted, and so is the object a method is called on with such arguments."""
    tainted: set[str] = set()

    def dirty(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and (n.id == callee or n.id in tainted) for n in ast.walk(node))

    def bound(node: ast.AST) -> list[tuple[list[ast.AST], ast.AST]]:
        if isinstance(node, ast.Assign):
            return [(node.targets, node.value)]
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            return [([node.target], node.value)]
        if isinstance(node, ast.NamedExpr):
            return [([node.target], node.value)]
        if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            return [([node.target], node.iter)]
        if isinstance(node, (ast.With, ast.AsyncWith)):
            return [([i.optional_vars], i.context_expr) for i in node.items if i.optional_vars is not None]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return [([node.func.value], ast.Tuple(elts=[*node.args, *(k.value for k in node.keywords)],
                                                   ctx=ast.Load()))]
        return []

    changed = True
    while changed:
        changed = False
        for node in ast.walk(stmt):
            for targets, value in bound(node):
                if dirty(value):
                    for name in {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)} - tainted:
                        if name != callee:
                            tainted.add(name)
                            changed = True
    calls = [n for n in ast.walk(stmt) if isinstance(n, ast.Call) and _mentions(n.func, callee)]
    return any(dirty(a) for c in calls for a in [*c.args, *(k.value for k in c.keywords)])


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
# Values out of the sandbox: tagged JSON -> plain Python values, bounded, never hashed.


class DecodeError(ValueError):
    pass


class CanonicalSet:
    """A decoded set or frozenset, held as its members' canonical keys, sorted and unique. Building a real
    set would hash values the program chose (ints that all hash alike make that quadratic)."""
    __slots__ = ("kind", "keys")
    __hash__ = None

    def __init__(self, kind: str, keys: tuple[str, ...]):
        self.kind, self.keys = kind, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __eq__(self, other) -> bool:
        return strict_equal(self, other)

    def __repr__(self) -> str:
        return f"{self.kind}<{', '.join(self.keys[:8])}{', ...' if len(self.keys) > 8 else ''}>"


class CanonicalDict:
    """A decoded dict: keys (canonical, sorted, unique; the last of equal keys wins, as in `dict`) and the
    values in the same order."""
    __slots__ = ("keys", "values")
    __hash__ = None

    def __init__(self, keys: tuple[str, ...], values: tuple):
        self.keys, self.values = keys, values

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, key):
        wanted = canonical_key(key, Budget())
        i = bisect.bisect_left(self.keys, wanted)
        if i == len(self.keys) or self.keys[i] != wanted:
            raise KeyError(key)
        return self.values[i]

    def __eq__(self, other) -> bool:
        return strict_equal(self, other)

    def __repr__(self) -> str:
        return f"dict<{', '.join(self.keys[:8])}{', ...' if len(self.keys) > 8 else ''}>"


class Budget:
    """What one decoded value (or one trace) may cost: items decoded, characters of canonical keys built."""
    __slots__ = ("items", "chars")

    def __init__(self, items: int = MAX_DECODE_ITEMS, chars: int = MAX_KEY_CHARS):
        self.items, self.chars = items, chars


_NAN_SERIAL = itertools.count()


def canonical_key(value: object, budget: Budget) -> str:
    """An injective string for a plain value under Python's equality of set members (1 and 1.0 are one key;
    True is not 1 here, as in `strict_equal`). NaN never equals anything, not even another NaN key."""
    kind = type(value)
    if value is None:
        key = "n"
    elif kind is bool:
        key = "T" if value else "F"
    elif kind is int:
        key = "i" + str(value)
    elif kind is float:
        if math.isnan(value):
            key = f"nan{next(_NAN_SERIAL)}"
        elif value.is_integer():
            key = "i" + str(int(value))
        else:
            key = "f" + value.hex()
    elif kind is complex:
        key = "c" + value.real.hex() + "," + value.imag.hex()
    elif kind is str:
        key = "s" + json.dumps(value)
    elif kind is bytes:
        key = "b" + value.hex() + ";"
    elif kind in (tuple, list):
        inner = ",".join(canonical_key(x, budget) for x in value)
        key = ("(" + inner + ")") if kind is tuple else ("[" + inner + "]")
    elif kind is CanonicalSet:
        key = ("{" if value.kind == "set" else "<") + ",".join(value.keys) + ("}" if value.kind == "set" else ">")
    elif kind is CanonicalDict:
        key = "d{" + ",".join(k + ":" + canonical_key(v, budget) for k, v in zip(value.keys, value.values)) + "}"
    elif kind in (set, frozenset, dict):
        key = canonical_key(canonical(value), budget)
    else:
        raise DecodeError(f"not a plain value: {kind.__name__}")
    budget.chars -= len(key)
    if budget.chars < 0:
        raise DecodeError("value too large")
    return key


def _canonical_set(kind: str, members: list, budget: Budget) -> CanonicalSet:
    keys = sorted(canonical_key(m, budget) for m in members)
    return CanonicalSet(kind, tuple(k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k))


def _canonical_dict(pairs: list[tuple], budget: Budget) -> CanonicalDict:
    keyed = sorted(((canonical_key(k, budget), i, v) for i, (k, v) in enumerate(pairs)), key=lambda t: (t[0], t[1]))
    last = [t for j, t in enumerate(keyed) if j + 1 == len(keyed) or keyed[j + 1][0] != t[0]]
    return CanonicalDict(tuple(t[0] for t in last), tuple(t[2] for t in last))


def canonical(value: object) -> object:
    """A trusted Python value (an expected literal) with its sets and dicts in the decoded form."""
    kind = type(value)
    if kind in (set, frozenset):
        return _canonical_set(kind.__name__, [canonical(m) for m in value], Budget())
    if kind is dict:
        return _canonical_dict([(canonical(k), canonical(v)) for k, v in value.items()], Budget())
    if kind in (list, tuple):
        return kind(canonical(x) for x in value)
    return value


def decode_value(tree: object, budget: Budget | None = None) -> object:
    """Inverse of the sandbox serializer. Only plain types come out, sets and dicts as CanonicalSet and
    CanonicalDict; anything else raises DecodeError. One budget may be shared by the values of a trace."""
    return _decode(tree, 0, budget if budget is not None else Budget())


def _decode(tree: object, depth: int, budget: Budget) -> object:
    budget.items -= 1
    if depth > MAX_DECODE_DEPTH or budget.items < 0 or type(tree) is not list or not tree:
        raise DecodeError("value too deep, too large or malformed")
    tag, args = tree[0], tree[1:]
    try:
        if tag == "none":
            return None
        if tag == "bool" and type(args[0]) is bool:
            return args[0]
        if tag == "int" and type(args[0]) is str and len(args[0]) <= 4300:
            return int(args[0])
        if tag == "float" and type(args[0]) is str and len(args[0]) <= 64:
            return float(args[0])
        if tag == "complex" and type(args[0]) is str and type(args[1]) is str and max(map(len, args[:2])) <= 64:
            return complex(float(args[0]), float(args[1]))
        if tag == "str" and type(args[0]) is str:
            return args[0]
        if tag == "bytes" and type(args[0]) is str:
            return bytes.fromhex(args[0])
        if tag in ("list", "tuple") and type(args[0]) is list:
            items = [_decode(x, depth + 1, budget) for x in args[0]]
            return items if tag == "list" else tuple(items)
        if tag in ("set", "frozenset") and type(args[0]) is list:
            return _canonical_set(tag, [_decode(x, depth + 1, budget) for x in args[0]], budget)
        if tag == "dict" and type(args[0]) is list:
            pairs = []
            for pair in args[0]:
                if type(pair) is not list or len(pair) != 2:
                    raise DecodeError("malformed dict item")
                pairs.append((_decode(pair[0], depth + 1, budget), _decode(pair[1], depth + 1, budget)))
            return _canonical_dict(pairs, budget)
    except (IndexError, ValueError, TypeError, OverflowError) as exc:
        raise DecodeError(f"malformed {str(tag)[:20]!r}: {str(exc)[:80]}") from None
    raise DecodeError(f"unknown tag {str(tag)[:20]!r}")


def strict_equal(a: object, b: object, *, rel_tol: float = 0.0, abs_tol: float = 0.0) -> bool:
    """Equality on decoded plain values that also requires equal types (int and float may meet; bool is
    not an int here). Ints compare exactly; only float against float uses the tolerances (math.isclose).
    Never raises on plain values, never hashes them."""
    numeric = (int, float)
    ta, tb = type(a), type(b)
    if ta in numeric and tb in numeric:
        if ta is float and tb is float and (rel_tol or abs_tol):
            return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
        return a == b
    if ta in (set, frozenset, dict):
        return strict_equal(canonical(a), b, rel_tol=rel_tol, abs_tol=abs_tol)
    if tb in (set, frozenset, dict):
        return strict_equal(a, canonical(b), rel_tol=rel_tol, abs_tol=abs_tol)
    if ta is not tb:
        return False
    if ta in (list, tuple):
        return len(a) == len(b) and all(strict_equal(x, y, rel_tol=rel_tol, abs_tol=abs_tol) for x, y in zip(a, b))
    if ta is CanonicalSet:
        return a.kind == b.kind and a.keys == b.keys
    if ta is CanonicalDict:
        return a.keys == b.keys and all(strict_equal(x, y, rel_tol=rel_tol, abs_tol=abs_tol)
                                        for x, y in zip(a.values, b.values))
    return a == b


TRACE_REL_TOL = 1e-6
TRACE_ABS_TOL = 1e-9


def judge_value(probe: Probe, value: object) -> bool:
    """Verdict for one decoded probe result of a pair kind. Total: a value the test's own arithmetic could
    not handle (`abs(10 ** 400 - 0.5)`) fails, as it would in the test."""
    if probe.kind == "eq":
        return strict_equal(value, probe.expected)
    if probe.kind == "close":
        if type(value) not in (int, float):
            return False
        try:
            gap = abs(value - probe.expected)
        except ArithmeticError:
            return False
        return gap < probe.tolerance if probe.strict_less else gap <= probe.tolerance
    if probe.kind == "truthy":
        return bool(value)
    if probe.kind == "falsy":
        return not value
    raise ValueError(f"unknown probe kind {probe.kind!r}")


# ---------------------------------------------------------------------------------------------------------
# Trace tests


@dataclass(frozen=True)
class Entry:
    """One recorded event of a trace: a call's outcome, or the end of the statement."""
    tag: str               # ok | raise | unserialisable | abort | overflow
    value: object          # ok: the result; raise/abort: the builtin exception's name; overflow: (count, digest)
    before: object = None  # (args, kwargs) before the call; None where they were not plain values
    after: object = None   # (args, kwargs) after the call


_CALL_TAGS = ("ok", "raise", "unserialisable")


def decode_trace(trace: object, *, replayed: bool = False) -> list[Entry]:
    """A trace from the sandbox -> entries. A statement's trace has [tag, payload, before, after] per call,
    then maybe ["overflow", count, digest] and ["abort", name]; a replay has [tag, payload, after] per call."""
    if type(trace) is not list or len(trace) > MAX_TRACE_ENTRIES:
        raise DecodeError("trace is not a bounded list")
    budget = Budget(items=MAX_TRACE_ITEMS)
    out = []
    for item in trace:
        if type(item) is not list or not item or item[0] not in (*_CALL_TAGS, "abort", "overflow"):
            raise DecodeError("malformed trace entry")
        tag = item[0]
        if tag in _CALL_TAGS and len(item) == (3 if replayed else 4):
            payload = decode_value(item[1], budget) if tag == "ok" else _name(item[1])
            before = None if replayed else _call_args(item[2], budget)
            out.append(Entry(tag, payload, before, _call_args(item[-1], budget)))
        elif tag == "abort" and len(item) == 2 and not replayed:
            out.append(Entry(tag, _name(item[1])))
        elif tag == "overflow" and len(item) == 3 and type(item[1]) is int and type(item[2]) is str and not replayed:
            out.append(Entry(tag, (item[1], item[2][:128])))
        else:
            raise DecodeError("malformed trace entry")
    return out


def _name(payload: object) -> str:
    if type(payload) is not str:
        raise DecodeError("malformed trace entry")
    return payload[:64]


def _call_args(tree: object, budget: Budget) -> object:
    return None if tree is None else decode_value(tree, budget)


@dataclass(frozen=True)
class TraceCheck:
    """How one trace test is judged, planned from the reference's run (see the module docstring)."""
    expected: tuple[Entry, ...]   # the reference's entries (replay: its calls only)
    replay: tuple | None          # the recorded argument trees to replay, or None: run the statement
    how: str                      # "replay", or why the statement runs in the candidate's process


def plan_trace(probe: Probe, reference_trace: object) -> TraceCheck:
    """The TraceCheck for a trace probe from the reference's raw trace (DecodeError if it is malformed)."""
    entries = decode_trace(reference_trace)
    calls = [e for e in entries if e.tag in _CALL_TAGS]
    raw_calls = [item for item in reference_trace if item[0] in _CALL_TAGS]
    if not probe.replayable:
        why = "a result feeds a later call"
    elif any(e.tag == "overflow" for e in entries):
        why = "more calls than are recorded"
    elif any(e.before is None or e.after is None for e in calls):
        why = "arguments are not plain values"
    elif _mutations_reach_later_calls(calls):
        why = "an argument the candidate changes feeds a later call"
    else:
        return TraceCheck(tuple(Entry(e.tag, e.value, None, e.after) for e in calls),
                          tuple(item[2] for item in raw_calls), "replay")
    return TraceCheck(tuple(entries), None, why)


def _mutations_reach_later_calls(calls: list[Entry]) -> bool:
    """Whether an argument value some call changed (in the reference's run) appears inside a later call's
    arguments: replaying that call would show the candidate the reference's changed value."""
    budget = Budget()
    changed: set[str] = set()
    for call in calls:
        if changed and _sub_keys(call.before, budget) & changed:
            return True
        (args0, kw0), (args1, kw1) = call.before, call.after
        pairs = [*zip(args0, args1), *zip(kw0.values, kw1.values)] if len(args0) == len(args1) else []
        changed |= {canonical_key(y, budget) for x, y in pairs if not strict_equal(x, y)}
    return False


def _sub_keys(value: object, budget: Budget) -> set[str]:
    keys = {canonical_key(value, budget)}
    if type(value) in (list, tuple):
        for x in value:
            keys |= _sub_keys(x, budget)
    elif type(value) is CanonicalDict:
        for x in value.values:
            keys |= _sub_keys(x, budget)
    return keys


def judge_trace(check: TraceCheck, trace: object) -> bool:
    """Same calls, same outcomes (floats within TRACE tolerances), same arguments after each call (and, for
    a statement run, before it, and the same end); unserialisable never matches."""
    got = decode_trace(trace, replayed=check.replay is not None)
    if len(got) != len(check.expected):
        return False
    return all(_entry_matches(g, w) for g, w in zip(got, check.expected))


def _entry_matches(got: Entry, want: Entry) -> bool:
    if got.tag != want.tag or got.tag == "unserialisable":
        return False
    if got.tag == "ok":
        if not strict_equal(got.value, want.value, rel_tol=TRACE_REL_TOL, abs_tol=TRACE_ABS_TOL):
            return False
    elif got.value != want.value:  # names, or (count, digest)
        return False
    return _args_match(got.before, want.before) and _args_match(got.after, want.after)


def _args_match(got: object, want: object) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return strict_equal(got, want, rel_tol=TRACE_REL_TOL, abs_tol=TRACE_ABS_TOL)


def verdict(probe: Probe, reply: dict, check: TraceCheck | None = None) -> tuple[str, str | None]:
    """(status, detail) for one test from the executor's reply, judged here, outside the sandbox. Total:
    whatever the reply holds, the answer is a status (a result the judge cannot handle is a failed test)."""
    status = reply.get("status")
    if status != "ok":
        if status not in STATUSES:
            return "runtime_error", f"unknown status {str(status)[:40]}"
        return status, reply.get("detail")
    try:
        if probe.kind == "trace":
            if check is None:
                return "failed", "the reference solution gives no result for this test"
            passed = judge_trace(check, reply.get("trace"))
        else:
            passed = judge_value(probe, decode_value(reply.get("value")))
    except DecodeError as exc:
        return "failed", f"undecodable result: {exc}"
    except Exception as exc:  # noqa: BLE001 - candidate data must never break the judge
        return "failed", f"the judge could not compare the result: {type(exc).__name__}"
    return ("passed", None) if passed else ("failed", "wrong result")
