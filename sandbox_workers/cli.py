"""`diffurl sandbox score` and `diffurl sandbox check`.

orchestrator/cli.py calls add_sandbox_commands(subparsers); until then: python -m sandbox_workers.cli sandbox ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sandbox_workers.problems import load_problems, load_samples

EXIT_USAGE = 2


def add_sandbox_commands(subparsers) -> None:
    sandbox = subparsers.add_parser("sandbox", help="score code samples in the sandbox; check isolation")
    commands = sandbox.add_subparsers(dest="sandbox_command", required=True)

    score = commands.add_parser("score", help="score samples (HumanEval convention) and print pass@1")
    score.add_argument("--problems", required=True, type=Path, help="problems JSONL/Parquet")
    score.add_argument("--samples", required=True, type=Path, help="samples JSONL: task_id, completion")
    score.add_argument("--out", type=Path, help="results JSONL (default: <samples>_results.jsonl)")
    score.add_argument("--workers", type=int, default=2, help="sandbox workers (default 2)")
    score.add_argument("--timeout", type=float, default=5.0, help="seconds per test (default 5)")
    score.add_argument("--memory-mb", type=int, default=512, help="address space per test process (default 512)")
    score.add_argument("--require-format", action="store_true",
                       help="training rule: run tests only when the completion has the exact ```python format")
    score.set_defaults(func=score_command)

    check = commands.add_parser("check", help="self-test every isolation layer and print the mode")
    check.set_defaults(func=check_command)


def score_command(args) -> int:
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        problems = load_problems(args.problems)
        by_id = {p["task_id"]: p for p in problems}
        samples = load_samples(args.samples, set(by_id))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = args.out or args.samples.with_name(args.samples.stem + "_results.jsonl")

    import ray

    from sandbox_workers.isolation import SandboxUnavailable
    from sandbox_workers.pool import SandboxPool
    from sandbox_workers.worker import status_histogram

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        pool = SandboxPool(num_workers=args.workers, test_timeout_s=args.timeout, memory_mb=args.memory_mb,
                           require_format=args.require_format)
    except SandboxUnavailable as exc:
        print(f"error: {str(exc).splitlines()[0]} (run `diffurl sandbox check`)", file=sys.stderr)
        if started_ray:
            ray.shutdown()
        return 1
    try:
        started = time.monotonic()
        results = pool.score([by_id[s["task_id"]] for s in samples], [s["completion"] for s in samples],
                             progress=_print_progress)
        elapsed = time.monotonic() - started
        print(file=sys.stderr)
    finally:
        pool.shutdown()
        if started_ray:
            ray.shutdown()
    with out.open("w") as handle:
        for sample, result in zip(samples, results):
            handle.write(json.dumps({**sample, **result, "passed_all": result["status"] == "passed"}) + "\n")
    pass_at_1 = _pass_at_1(samples, results)
    print(f"pass@1: {pass_at_1:.4f}  ({len(results)} samples, {len({s['task_id'] for s in samples})} problems, "
          f"{elapsed:.1f} s, mode {results[0]['mode'] if results else '?'})")
    print("status: " + "  ".join(f"{k}={v}" for k, v in status_histogram(results).items()))
    print(f"results: {out}")
    return 0


def _print_progress(done: int, total: int) -> None:
    if done == total or done % 50 < 4:
        print(f"\rscored {done}/{total}", end="", file=sys.stderr, flush=True)


def _pass_at_1(samples: list[dict], results: list[dict]) -> float:
    """Mean over problems of the fraction of their samples that pass every test."""
    per_task: dict[str, list[bool]] = {}
    for sample, result in zip(samples, results):
        per_task.setdefault(sample["task_id"], []).append(result["status"] == "passed")
    return sum(sum(v) / len(v) for v in per_task.values()) / max(1, len(per_task))


def check_command(args) -> int:
    from sandbox_workers.executor import self_test
    report = self_test()
    print(report.report())
    return 0 if report.usable else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffurl")
    add_sandbox_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
