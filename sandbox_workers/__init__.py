"""Sandboxed code-reward workers: run untrusted code in layered isolation, judge outside, score."""

from sandbox_workers.judge import compute_reward, format_score
from sandbox_workers.pool import SandboxPool

__all__ = ["SandboxPool", "compute_reward", "format_score"]
