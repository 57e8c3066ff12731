"""The driver's bookkeeping of prompt groups: which prompt group i uses, and where every group stands.

Group i always uses prompt i of the sampler and seed i, so a group that is lost (its worker died) or
never trained on (the driver died) is issued again as exactly the same group. A group is, in order:
issued (running on a rollout worker), accepted (published to the stream, waiting for the learner),
trained (consumed by a step). `LoopState` is what a checkpoint saves and a resume rebuilds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from actors.dllm.seeding import derived_seed
from actors.trajectory import GroupSummary
from orchestrator.canaries import is_canary_index, make_canary


def group_id(index: int) -> str:
    return f"g{index:08d}"


def group_index(gid: str) -> int:
    return int(gid[1:])


class PromptSampler:
    """Prompt i of the run is a pure function of (seed, i): epoch-wise shuffled order, no cursor state; with
    `canary_fraction` > 0, about that fraction of prompts are the canary of their problem (when it has one)."""

    def __init__(self, problems: list[dict], seed: int, shuffle: bool, canary_fraction: float = 0.0):
        self.problems, self.seed, self.shuffle, self.canary_fraction = problems, seed, shuffle, canary_fraction
        self._orders: dict[int, np.ndarray] = {}
        self._canaries: dict[str, dict | None] = {}

    def problem_at(self, index: int) -> dict:
        epoch, offset = divmod(index, len(self.problems))
        if epoch not in self._orders:
            n = len(self.problems)
            self._orders[epoch] = (np.random.default_rng(derived_seed(self.seed, "epoch", epoch)).permutation(n)
                                   if self.shuffle else np.arange(n))
        problem = self.problems[int(self._orders[epoch][offset])]
        if not is_canary_index(self.seed, index, self.canary_fraction):
            return problem
        if problem["task_id"] not in self._canaries:
            self._canaries[problem["task_id"]] = make_canary(problem)
        return self._canaries[problem["task_id"]] or problem


@dataclass
class Group:
    """One prompt group in flight on a rollout worker."""
    index: int
    worker: int
    attempt: int


@dataclass
class LoopState:
    step: int = 0
    version: int = 0
    next_index: int = 0                     # groups 0..next_index-1 have been issued at least once
    reissue: list[int] = field(default_factory=list)  # lost groups to run again, before new ones
    trained: set[str] = field(default_factory=set)    # group ids trained on (as of `step`)
    accepted: dict[str, GroupSummary] = field(default_factory=dict)  # published, not yet trained on
    attempts: dict[int, int] = field(default_factory=dict)  # group index -> failed attempts so far

    def take_index(self) -> int:
        """The next group to issue: a lost one first, else a new one."""
        if self.reissue:
            return self.reissue.pop(0)
        self.next_index += 1
        return self.next_index - 1

    def lost(self, index: int) -> int:
        """Group `index` did not come back: issue it again first. Returns its failed attempts so far."""
        self.attempts[index] = self.attempts.get(index, 0) + 1
        self.reissue.insert(0, index)
        return self.attempts[index]

    def accept(self, summary: GroupSummary) -> None:
        if summary.group_id not in self.trained:
            self.accepted[summary.group_id] = summary

    def train_on(self, group_ids: list[str]) -> list[GroupSummary]:
        """Move the step's groups from accepted to trained; returns their summaries."""
        batch = [self.accepted.pop(g) for g in group_ids]
        self.trained.update(group_ids)
        return batch
