"""The demo's task family: short Python function problems generated in code, split train / rl / held-out.

Each problem is a row of the problem schema (`task_id`, `question`, `entry_point`, `tests`, `reference`):

    question   "Write a Python function `solve(x: int) -> int` that returns x plus 7."
    reference  "def solve(x: int) -> int:\\n    return x + 7\\n"
    tests      ["assert solve(3) == 10", ...]   (expected values computed here, in plain Python)

A template (e.g. `add`: "returns x plus {a}") with its constants (a=7) is a *combination*. The split is by
combination: every template's combinations are shuffled with the seed and dealt out, 15% to the held-out
split, 10% to the RL split, the rest to training (the warm start's SFT data). RL prompts come from the RL
split: combinations the warm start never saw, as a real RL prompt set is not the SFT data. So a held-out
problem asks for a template the model was trained on, with constants it never saw *with that template* (the
same numbers appear in other templates' training problems). No held-out problem shares its description or its
tests with a training or RL problem.
Categories: arithmetic, conditionals, strings, lists, and compositions of two operations.
Everything is a pure function of the seed.
"""
from __future__ import annotations

import itertools
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FAMILY_VERSION = 1  # bump when templates change: cached warm starts are keyed by it
SPLITS = ("train", "rl", "heldout")
HELDOUT_FRACTION, RL_FRACTION = 0.15, 0.10
FUNCTION_NAMES = ("solve", "compute", "transform", "apply", "process", "calc", "func", "helper")
WORDS = ("cat", "dog", "sun", "red", "sky", "box", "pen", "cup", "map", "key", "ice", "owl", "hat", "bee",
         "car", "fox", "jam", "oak", "pie", "zip", "tea", "web", "yak", "fig", "gem", "hub", "ink", "log",
         "mud", "net", "orb", "pod", "rug", "sea", "toy", "urn", "van", "wax", "egg", "bus")
SIGNATURES = {"int": "x: int", "str": "s: str", "list": "xs: list[int]"}
RETURNS = {"int": "int", "bool": "bool", "str": "str", "list": "list[int]"}


@dataclass(frozen=True)
class Template:
    key: str
    category: str  # arithmetic | conditional | string | list | composition
    arg: str  # int | str | list: the one parameter's type
    returns: str  # int | bool | str | list
    params: tuple[tuple, ...]  # the value range of each constant, in order a, b
    says: str  # what the function returns, e.g. "returns x plus {a}"
    body: str  # the reference body (indented 4 spaces, lines joined by "\n    ")
    fn: Callable[..., Callable[[Any], Any]]  # constants -> the function, to compute expected values


R = range
TEMPLATES = (
    Template("add", "arithmetic", "int", "int", (R(2, 61),), "returns x plus {a}", "return x + {a}",
             lambda a: lambda x: x + a),
    Template("sub", "arithmetic", "int", "int", (R(2, 61),), "returns x minus {a}", "return x - {a}",
             lambda a: lambda x: x - a),
    Template("mul", "arithmetic", "int", "int", (R(2, 31),), "returns x multiplied by {a}", "return x * {a}",
             lambda a: lambda x: x * a),
    Template("floordiv", "arithmetic", "int", "int", (R(2, 21),), "returns x divided by {a}, rounded down",
             "return x // {a}", lambda a: lambda x: x // a),
    Template("mod", "arithmetic", "int", "int", (R(2, 21),), "returns the remainder of x divided by {a}",
             "return x % {a}", lambda a: lambda x: x % a),
    Template("above", "conditional", "int", "bool", (R(0, 51),), "returns True if x is greater than {a}, "
             "otherwise False", "return x > {a}", lambda a: lambda x: x > a),
    Template("cap", "conditional", "int", "int", (R(0, 51),), "returns x, but never more than {a}",
             "if x > {a}:\n        return {a}\n    return x", lambda a: lambda x: min(x, a)),
    Template("parity", "conditional", "int", "int", (R(0, 10), R(0, 10)), "returns {a} if x is even, "
             "otherwise {b}", "if x % 2 == 0:\n        return {a}\n    return {b}",
             lambda a, b: lambda x: a if x % 2 == 0 else b),
    Template("repeat", "string", "str", "str", (R(2, 10),), "returns s repeated {a} times", "return s * {a}",
             lambda a: lambda s: s * a),
    Template("prefix", "string", "str", "str", (R(1, 10),), "returns the first {a} characters of s",
             "return s[:{a}]", lambda a: lambda s: s[:a]),
    Template("append", "string", "str", "str", (WORDS,), "returns s followed by the word '{a}'",
             "return s + '{a}'", lambda a: lambda s: s + a),
    Template("count_char", "string", "str", "int", (tuple(string.ascii_lowercase),),
             "returns how many times the letter '{a}' appears in s", "return s.count('{a}')",
             lambda a: lambda s: s.count(a)),
    Template("list_add", "list", "list", "list", (R(2, 61),), "returns a new list with {a} added to every "
             "element of xs", "return [v + {a} for v in xs]", lambda a: lambda xs: [v + a for v in xs]),
    Template("list_above", "list", "list", "list", (R(0, 51),), "returns the elements of xs that are greater "
             "than {a}, in order", "return [v for v in xs if v > {a}]",
             lambda a: lambda xs: [v for v in xs if v > a]),
    Template("list_count", "list", "list", "int", (R(0, 10),), "returns how many elements of xs are equal to "
             "{a}", "return xs.count({a})", lambda a: lambda xs: xs.count(a)),
    Template("sum_plus", "list", "list", "int", (R(2, 61),), "returns the sum of the elements of xs plus {a}",
             "return sum(xs) + {a}", lambda a: lambda xs: sum(xs) + a),
    Template("add_mul", "composition", "int", "int", (R(2, 21), R(2, 21)), "adds {a} to x and returns the "
             "result multiplied by {b}", "return (x + {a}) * {b}", lambda a, b: lambda x: (x + a) * b),
    Template("mul_add", "composition", "int", "int", (R(2, 21), R(2, 21)), "multiplies x by {a} and returns "
             "the result plus {b}", "return x * {a} + {b}", lambda a, b: lambda x: x * a + b),
    Template("list_mul_above", "composition", "list", "list", (R(2, 10), R(0, 31)), "multiplies every element "
             "of xs by {a} and returns the products greater than {b}, in order",
             "return [v * {a} for v in xs if v * {a} > {b}]",
             lambda a, b: lambda xs: [v * a for v in xs if v * a > b]),
    Template("repeat_append", "composition", "str", "str", (R(2, 6), WORDS), "returns s repeated {a} times "
             "followed by the word '{b}'", "return s * {a} + '{b}'", lambda a, b: lambda s: s * a + b),
)


def combinations(template: Template) -> list[tuple]:
    """Every constant tuple of a template; `parity` needs a != b to be a conditional at all."""
    combos = list(itertools.product(*template.params))
    return [c for c in combos if template.key != "parity" or c[0] != c[1]]


def split_combinations(seed: int) -> dict[str, list[tuple[Template, tuple]]]:
    """{split: [(template, constants)]}: each template's combinations shuffled with the seed, then dealt out."""
    out: dict[str, list] = {name: [] for name in SPLITS}
    for template in TEMPLATES:
        combos = combinations(template)
        random.Random(f"{seed}:split:{template.key}").shuffle(combos)
        n_held = max(1, round(HELDOUT_FRACTION * len(combos)))
        n_rl = max(1, round(RL_FRACTION * len(combos)))
        out["heldout"] += [(template, c) for c in combos[:n_held]]
        out["rl"] += [(template, c) for c in combos[n_held:n_held + n_rl]]
        out["train"] += [(template, c) for c in combos[n_held + n_rl:]]
    return out


def make_problem(template: Template, constants: tuple, rng: random.Random, task_id: str,
                 n_tests: int = 4) -> dict:
    """One problem in the schema of `diffurl sandbox score`, with a reference solution in the answer style."""
    name = rng.choice(FUNCTION_NAMES)
    signature = f"{name}({SIGNATURES[template.arg]}) -> {RETURNS[template.returns]}"
    question = f"Write a Python function `{signature}` that {template.says.format(**dict(zip('ab', constants)))}."
    reference = reference_solution(template, constants, name)
    fn = template.fn(*constants)
    inputs = _distinct_inputs(template, constants, rng, n_tests)
    tests = [f"assert {name}({x!r}) == {fn(x)!r}" for x in inputs]
    return {"task_id": task_id, "question": question, "entry_point": name, "tests": tests, "reference": reference,
            "template": template.key, "category": template.category}


def reference_solution(template: Template, constants: tuple, name: str) -> str:
    signature = f"{name}({SIGNATURES[template.arg]}) -> {RETURNS[template.returns]}"
    return f"def {signature}:\n    {template.body.format(**dict(zip('ab', constants)))}\n"


def _distinct_inputs(template: Template, constants: tuple, rng: random.Random, n: int) -> list:
    """n distinct inputs that tell the reference apart from every neighbouring constant (each constant one step
    up or down its range) where some input can: so the tests check the constants, not just the template."""
    fn = template.fn(*constants)
    rivals = [template.fn(*c) for c in neighbours(template, constants)]
    pool = _boundary_inputs(template, constants) + [_random_input(template, rng) for _ in range(12)]
    rng.shuffle(pool)
    chosen: list = []
    open_rivals = [r for r in rivals if any(_differs(fn, r, x) for x in pool)]
    while open_rivals and len(chosen) < n:
        best = max(pool, key=lambda x: sum(_differs(fn, r, x) for r in open_rivals))
        chosen.append(best)
        open_rivals = [r for r in open_rivals if not _differs(fn, r, best)]
    for x in pool:
        if len(chosen) >= n:
            break
        if all(repr(x) != repr(c) for c in chosen):
            chosen.append(x)
    rng.shuffle(chosen)
    return chosen


def _differs(fn, rival, x) -> bool:
    return fn(x) != rival(x)


def neighbours(template: Template, constants: tuple) -> list[tuple]:
    """The constant tuples one step away in one constant's range (e.g. add 7 -> add 6, add 8)."""
    out = []
    for i, values in enumerate(template.params):
        values = list(values)
        at = values.index(constants[i])
        for step in (-1, 1):
            if 0 <= at + step < len(values):
                out.append(constants[:i] + (values[at + step],) + constants[i + 1:])
    return out


def _boundary_inputs(template: Template, constants: tuple) -> list:
    """Inputs at the edges of the constants: x = a, a + 1, 3a; lists holding a, a + 1; long strings."""
    a = constants[0] if isinstance(constants[0], int) else 0
    if template.arg == "int":
        return [a - 1, a, a + 1, 3 * a - 1, 3 * a]
    if template.arg == "list":
        b = constants[1] if len(constants) > 1 else 0
        edge = b // a + 1 if template.key == "list_mul_above" else a
        return [[edge - 1, edge, edge + 1], [a, a, 3], [edge, 7, edge + 1]]
    letters = "".join(string.ascii_lowercase[(i * 7) % 26] for i in range(11))
    return [letters, "ab" + letters[:5] + str(constants[-1])[:1] * 2]


def _random_input(template: Template, rng: random.Random):
    if template.arg == "int":
        return rng.randint(-20, 60)
    if template.arg == "str":
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
    return [rng.randint(-5, 40) for _ in range(rng.randint(1, 6))]


def generate_splits(seed: int = 0, train_variants: int = 2) -> dict[str, list[dict]]:
    """{"train", "rl", "heldout"}: problems; training has `train_variants` problems per combination (other
    function names and test inputs), the RL and held-out splits one each."""
    rng = random.Random(f"{seed}:problems")
    out: dict[str, list[dict]] = {}
    for split, combos in split_combinations(seed).items():
        variants = train_variants if split == "train" else 1
        out[split] = [make_problem(t, c, rng, f"{split}/{t.key}/{'-'.join(map(str, c))}/{v}")
                      for t, c in combos for v in range(variants)]
        random.Random(f"{seed}:order:{split}").shuffle(out[split])
    return out


def write_splits(out_dir: str | Path, seed: int = 0, train_variants: int = 2) -> dict[str, Path]:
    """Write `train.jsonl`, `rl.jsonl`, `heldout.jsonl` under out_dir; return {split: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, problems in generate_splits(seed, train_variants).items():
        path = out_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in problems))
        tmp.replace(path)
        paths[split] = path
    return paths


def answer_text(reference: str) -> str:
    """The reference in the exact DiffuCoder answer format: one ```python block, closing fence + newline."""
    return f"```python\n{reference}```\n"


# ----------------------------------------------------------------------------------------- buggy demonstrations
# The warm start learns from demonstrations of which a fixed fraction carry one plausible bug (an operator swapped,
# min for max, the wrong end of a string): the policy then holds both the right and the buggy answer for every
# template, partly right, as an SFT set written by a weaker coder would leave it. Execution rewards are what tell
# them apart, which is the part of the loop the demo is there to show.
_OPERATOR_SWAPS = {" + ": " - ", " - ": " + ", " * ": " + ", " // ": " % ", " % ": " // ", " > ": " < ",
                   " < ": " > ", " == ": " != "}
_CALL_SWAPS = {"min(": "max(", "max(": "min(", "[:": "[-", ".count(": ".find("}


def buggy_reference(reference: str) -> str | None:
    """The reference with its first operator (else its first call or slice) swapped for a plausible wrong one;
    None when its body has none of them. (A swap can leave the tests passing: 5 of the 2648 training problems.)"""
    header, _, body = reference.partition("\n")
    for swaps in (_OPERATOR_SWAPS, _CALL_SWAPS):
        hits = [(body.find(old), old) for old in swaps if old in body]
        if hits:
            at, old = min(hits)
            return f"{header}\n{body[:at]}{swaps[old]}{body[at + len(old):]}"
    return None


def is_buggy_demo(task_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a training problem's demonstration is the buggy one: a pure function of (seed, task_id)."""
    return random.Random(f"{seed}:buggy:{task_id}").random() < fraction
