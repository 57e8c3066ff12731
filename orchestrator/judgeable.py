"""Problems checked against their own reference solutions before anything uses them (`diffurl train`, `diffurl
eval`, the demo, `diffurl sandbox score`).

The tests run as written against a proxy of the candidate (sandbox_workers/judge.py), so a problem whose tests
pass a callback or an object of their own to the entry point, check identity, need a module the sandbox lacks,
or never call the entry point cannot be judged that way. A problem is unjudgeable when its reference solution
does not pass every one of its tests through the same path a candidate takes; it is reported once here, with
the reason, and left out: never passed, never silently dropped. A problem without a reference is used as it is
(its tests cannot be checked). Results are remembered per problem for the life of the process, so the demo's
second evaluation of the same problems costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import sys

from orchestrator.errors import UserError

_CHECKED: dict[str, str | None] = {}  # problem key -> why it is unjudgeable (None: it is judgeable)
SHOWN = 3


def keep_judgeable(problems: list[dict], *, workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 512,
                   what: str = "problems", out=print) -> tuple[list[dict], dict[str, str]]:
    """(the judgeable problems in their order, {task_id: why} of the others); prints one summary line. Needs
    ray.is_initialized(). A UserError when none is judgeable."""
    from sandbox_workers.judge import compile_problem
    from sandbox_workers.pool import validate_problems

    keys = {id(p): _key(p) for p in problems}
    todo = [p for p in problems if keys[id(p)] not in _CHECKED and compile_problem(p).reference is not None]
    if todo:
        progress = _progress if len(todo) >= 200 else None
        reasons = validate_problems(todo, num_workers=workers, test_timeout_s=timeout_s, memory_mb=memory_mb,
                                    progress=progress)
        if progress:
            print(file=sys.stderr)
        for p in todo:
            _CHECKED[keys[id(p)]] = reasons.get(p["task_id"])
    unjudgeable = {p["task_id"]: _CHECKED[keys[id(p)]] for p in problems if _CHECKED.get(keys[id(p)])}
    kept = [p for p in problems if p["task_id"] not in unjudgeable]
    unchecked = sum(keys[id(p)] not in _CHECKED for p in problems)
    out(summary(len(problems), unjudgeable, unchecked, what))
    if not kept:
        raise UserError(f"no judgeable {what}: every one's reference solution fails its own tests; first: "
                        + next(f"{k}: {v}" for k, v in unjudgeable.items()))
    return kept, unjudgeable


def summary(total: int, unjudgeable: dict[str, str], unchecked: int, what: str) -> str:
    """One line: how many were checked, how many are left out and why (the first few)."""
    line = f"{what}: {total - unchecked} of {total} checked against their reference solutions"
    if unchecked:
        line += f" ({unchecked} have none)"
    if not unjudgeable:
        return line + ", all judgeable"
    shown = "; ".join(f"{task} ({why})" for task, why in list(unjudgeable.items())[:SHOWN])
    more = f"; and {len(unjudgeable) - SHOWN} more" if len(unjudgeable) > SHOWN else ""
    return f"{line}, {len(unjudgeable)} unjudgeable, left out: {shown}{more}"


def _key(problem: dict) -> str:
    fields = ("task_id", "entry_point", "prompt", "test", "tests", "canonical_solution", "reference")
    return hashlib.sha256(json.dumps([problem.get(f) for f in fields], default=str).encode()).hexdigest()


def _progress(done: int, total: int) -> None:
    if done == total or done % 100 < 4:
        print(f"\rchecking reference solutions: {done}/{total}", end="", file=sys.stderr, flush=True)
