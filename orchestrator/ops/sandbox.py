"""`diffurl sandbox score` and `diffurl sandbox check`: score code samples in the sandbox, self-test its isolation.

    diffurl sandbox score --problems P.jsonl --samples S.jsonl [--out R.jsonl] [--workers N]
    diffurl sandbox check

Problems and samples are read with the one row reader (`orchestrator.data.read_rows`). A bad row stops the
command with one line naming the file, the line and the field; pass@1 is `evaluate.mean_pass_at_k`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterator

from orchestrator.data import read_rows
from orchestrator.errors import UserError
from orchestrator.evaluate import mean_pass_at_k
from sandbox_workers.judge import compile_problem


def load_problems(path: str | Path) -> list[dict]:
    """Problems in file order. Each row needs `task_id` and either HumanEval fields (`prompt`, `entry_point`,
    `test`, optional `canonical_solution`) or `tests` + `entry_point` (+ optional `reference`); unknown
    fields are kept and ignored. A bad row raises ValueError naming the file, the line and the field."""
    problems, seen = [], set()
    for where, row in _rows(path):
        try:
            compile_problem(row)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if row["task_id"] in seen:
            raise ValueError(f"{where}: field 'task_id' repeats {row['task_id']!r}")
        seen.add(row["task_id"])
        problems.append(row)
    if not problems:
        raise ValueError(f"{path}: no problems in the file")
    return problems


def load_samples(path: str | Path, known_task_ids: set[str]) -> list[dict]:
    """Samples (`task_id`, `completion`) in file order; ValueError for a bad row or an unknown task_id."""
    samples = []
    for where, row in _rows(path):
        for name in ("task_id", "completion"):
            if not isinstance(row.get(name), str):
                raise ValueError(f"{where}: field '{name}' must be a string")
        if row["task_id"] not in known_task_ids:
            raise ValueError(f"{where}: field 'task_id' {row['task_id']!r} is not in the problems file")
        samples.append(row)
    if not samples:
        raise ValueError(f"{path}: no samples in the file")
    return samples


def _rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(`FILE:LINE`, row) per row; ValueError naming the file (and the line) when it or a row cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    for where, row in read_rows(path):
        if isinstance(row, str):
            raise ValueError(f"{path}:{where.number}: {row}")
        yield f"{path}:{where.number}", row


def score_command(problems_path: Path, samples_path: Path, *, out: Path | None, workers: int, timeout_s: float,
                  memory_mb: int, require_format: bool) -> int:
    """`diffurl sandbox score`: results JSONL (default `<samples>_results.jsonl`), then pass@1 and the statuses."""
    try:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        problems = load_problems(problems_path)
        by_id = {p["task_id"]: p for p in problems}
        samples = load_samples(samples_path, set(by_id))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = out or samples_path.with_name(samples_path.stem + "_results.jsonl")

    import ray

    from sandbox_workers.isolation import SandboxUnavailable
    from sandbox_workers.pool import SandboxPool
    from sandbox_workers.worker import status_histogram

    from orchestrator.judgeable import keep_judgeable

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        used = [p for p in problems if p["task_id"] in {s["task_id"] for s in samples}]
        _, unjudgeable = keep_judgeable(used, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb)
        pool = SandboxPool(num_workers=workers, test_timeout_s=timeout_s, memory_mb=memory_mb,
                           require_format=require_format)
    except (SandboxUnavailable, UserError) as exc:
        print(f"diffurl: error: {str(exc).splitlines()[0]}" + (" (run `diffurl sandbox check`)"
              if isinstance(exc, SandboxUnavailable) else ""), file=sys.stderr)
        if started_ray:
            ray.shutdown()
        return 1 if isinstance(exc, SandboxUnavailable) else 2
    judged = [s for s in samples if s["task_id"] not in unjudgeable]
    try:
        started = time.monotonic()
        scored = iter(pool.score([by_id[s["task_id"]] for s in judged], [s["completion"] for s in judged],
                                 progress=_print_progress))
        elapsed = time.monotonic() - started
        print(file=sys.stderr)
    finally:
        pool.shutdown()
        if started_ray:
            ray.shutdown()
    results = [_left_out(s, unjudgeable[s["task_id"]]) if s["task_id"] in unjudgeable else next(scored)
               for s in samples]
    with out.open("w") as handle:
        for sample, result in zip(samples, results):
            handle.write(json.dumps({**sample, **result, "passed_all": result["status"] == "passed"}) + "\n")
    per_task: dict[str, list[bool]] = {}
    for sample, result in zip(samples, results):
        if result["status"] != "unjudgeable":
            per_task.setdefault(sample["task_id"], []).append(result["status"] == "passed")
    left_out = f", {len(unjudgeable)} unjudgeable problems left out" if unjudgeable else ""
    print(f"pass@1: {mean_pass_at_k(per_task.values(), 1):.4f}  ({len(judged)} samples, {len(per_task)} problems"
          f"{left_out}, {elapsed:.1f} s, mode {next((r['mode'] for r in results if r.get('mode')), '?')})")
    print("status: " + "  ".join(f"{k}={v}" for k, v in status_histogram(results).items()))
    print(f"results: {out}")
    return 0


def _left_out(sample: dict, why: str) -> dict:
    """The result line of a sample whose problem is unjudgeable: not scored, no reward."""
    return {"task_id": sample["task_id"], "status": "unjudgeable", "reward": None, "pass_rate": None,
            "tests": [], "test_details": [], "error": f"unjudgeable problem: {why}"}


def _print_progress(done: int, total: int) -> None:
    if done == total or done % 50 < 4:
        print(f"\rscored {done}/{total}", end="", file=sys.stderr, flush=True)


def check_command() -> int:
    """`diffurl sandbox check`: every isolation layer's self-test and the mode; exit 1 when none is usable."""
    from sandbox_workers.executor import self_test

    report = self_test()
    print(report.report())
    return 0 if report.usable else 1
