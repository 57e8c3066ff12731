"""Sandboxed code-reward workers: run untrusted code in layered isolation, judge outside, score."""

from sandbox_workers.judge import compute_reward, format_score
from sandbox_workers.pool import SandboxPool, SandboxWorker
from sandbox_workers.problems import load_problems

__all__ = ["SandboxPool", "SandboxWorker", "compute_reward", "format_score", "load_problems"]
