"""The one trajectory record: a rollout worker makes it, the Redis stream carries it, the learner reads its
fields, and the driver keeps its `GroupSummary`.

One `Trajectory` per prompt group of G completions (token in, token out), fields grouped by meaning:
identity, tokens, reward, policy versions, decoding, timings. `to_dict` / `from_dict` round-trip it
losslessly through JSON (the stream's encoding). What a rollout call returns to the driver is a
`RolloutOutcome` whose `status` says what happened; nothing travels as a sentinel dict.

Shapes: G = group size, P = prompt length, K = completion length (the decoding canvas).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field


@dataclass
class CompletionReward:
    """One completion's reward and its parts, as the sandbox judged it."""
    reward: float                 # pass_weight * pass_rate + format_weight * format
    status: str                   # passed | failed | format_error | timeout | ... (sandbox_workers statuses)
    pass_rate: float | None       # fraction of tests passed (None: tests not run)
    format: float | None          # format score in [0, 1]
    tests: list = field(default_factory=list)  # [T] per-test status
    mode: str | None = None       # sandbox isolation mode that ran it
    retried: bool = False         # the first sandbox attempt failed for infrastructure reasons

    @classmethod
    def from_result(cls, result: dict) -> CompletionReward:
        """From a `SandboxPool.score` result dict (which must carry a reward)."""
        return cls(reward=float(result["reward"]), status=str(result.get("status", "")),
                   pass_rate=result.get("pass_rate"), format=result.get("format"),
                   tests=list(result.get("tests") or []), mode=result.get("mode"),
                   retried=bool(result.get("retried")))

    @property
    def timeouts(self) -> int:
        return sum(1 for t in self.tests if (t.get("status") if isinstance(t, dict) else t) == "timeout")


@dataclass
class DecodeStats:
    """How the group was decoded."""
    decoder: str                  # reference (about one token per forward) or fast (actors/dllm/fast_decoding.py)
    alg: str                      # confidence used to pick the next position
    temperature: float
    steps: int                    # reference: decoding steps per completion (rollout.steps); fast: unused
    max_new_tokens: int           # K
    order: list[list[int]]        # [G, K] forward at which each position was revealed
    local_arness: float
    global_arness: float
    forwards: int                 # forwards the group's rows took part in (the most of any row)
    tokens_per_forward: float     # positions the model decided per row-forward, over the group
    batch_rows: int               # rows of the decoder call the group was part of (G x groups in the call)


@dataclass
class Trajectory:
    """One scored prompt group: what the learner trains on and the driver reports."""
    # identity
    run_id: str
    group_id: str                 # g<index>: group i always uses prompt i and seed i of the run
    prompt_id: str                # the dataset task_id
    worker_id: str                # rollout-<n> that made it
    canary_bound: float | None    # a canary's best honest pass rate (orchestrator/canaries.py); None: not one
    # tokens
    prompt_ids: list[int]         # [P] after left truncation
    completion_ids: list[list[int]]   # [G, K]
    completion_mask: list[list[int]]  # [G, K] 1 up to and including the first end token, then 0
    texts: list[str]              # [G] decoded completions
    # reward
    rewards: list[CompletionReward]   # [G]
    # policy versions
    version_start: int            # weights the group was decoded with
    version_end: int              # weights when it was published (equal: swaps happen between groups)
    # decoding and timings
    decode: DecodeStats
    time_generate: float          # seconds decoding the G completions (their share of a batched call)
    time_reward: float            # seconds scoring them in the sandbox (likewise)
    # AR-GRPO: the rollout engine's (vLLM's) log-probability of each completion token, [G, K] (0 past the
    # end); the learner recomputes them and reports the gap. None: a dLLM rollout (no exact token log-probs)
    rollout_logprobs: list[list[float]] | None = None

    def __post_init__(self):
        g = len(self.completion_ids)
        sizes = {"completion_mask": len(self.completion_mask), "rewards": len(self.rewards),
                 "texts": len(self.texts), "decode.order": len(self.decode.order)}
        if self.rollout_logprobs is not None:
            sizes["rollout_logprobs"] = len(self.rollout_logprobs)
        wrong = {k: n for k, n in sizes.items() if n != g}
        if wrong:
            raise ValueError(f"trajectory {self.group_id}: {wrong} must match the {g} rows of completion_ids")
        for i, (ids, mask) in enumerate(zip(self.completion_ids, self.completion_mask)):
            if len(ids) != len(mask):
                raise ValueError(f"trajectory {self.group_id}: completion_mask[{i}] has {len(mask)} entries, "
                                 f"completion_ids[{i}] has {len(ids)}")

    @property
    def group_size(self) -> int:
        return len(self.completion_ids)

    @property
    def reward_values(self) -> list[float]:  # [G]
        return [r.reward for r in self.rewards]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> Trajectory:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ValueError(f"trajectory record has unknown fields {unknown}")
        return cls(**{**record, "rewards": [CompletionReward(**r) for r in record["rewards"]],
                      "decode": DecodeStats(**record["decode"])})

    def summary(self, entry_id: str) -> GroupSummary:
        """What the driver keeps of a published group: enough for the step's metrics, nothing token-sized."""
        return GroupSummary(
            entry_id=entry_id, group_id=self.group_id, prompt_id=self.prompt_id, worker_id=self.worker_id,
            canary_bound=self.canary_bound, version_start=self.version_start, rewards=self.reward_values,
            pass_rates=[float(r.pass_rate or 0.0) for r in self.rewards],
            formats=[float(r.format or 0.0) for r in self.rewards],
            timeouts=sum(r.timeouts for r in self.rewards),
            completion_tokens=sum(sum(row) for row in self.completion_mask),
            generated_tokens=self.group_size * self.decode.max_new_tokens,
            local_arness=self.decode.local_arness, global_arness=self.decode.global_arness,
            forwards=self.decode.forwards, tokens_per_forward=self.decode.tokens_per_forward,
            time_generate=self.time_generate, time_reward=self.time_reward)


@dataclass
class GroupSummary:
    """The driver's view of one published group (derived from its Trajectory by `Trajectory.summary`)."""
    entry_id: str                 # stream entry id
    group_id: str
    prompt_id: str
    worker_id: str
    canary_bound: float | None    # set for a canary group
    version_start: int
    rewards: list[float]          # [G]
    pass_rates: list[float]       # [G]
    formats: list[float]          # [G]
    timeouts: int                 # tests that hit their time limit, over the group
    completion_tokens: int        # sum of the completion masks
    generated_tokens: int         # G * K canvas positions decoded
    local_arness: float
    global_arness: float
    forwards: int                 # decode forwards the group took part in
    tokens_per_forward: float
    time_generate: float
    time_reward: float

    @property
    def sandbox_jobs(self) -> int:
        return len(self.rewards)


class RolloutStatus(enum.Enum):
    """What a `RolloutWorker.rollout_groups` call did with one of its groups."""
    PUBLISHED = "published"       # scored and on the stream: `summary` is set
    STALE = "stale"               # the worker's weights were not the expected version (Ray restarted it):
                                  # nothing published; bring it up to date and issue the group again
    SANDBOX_ERROR = "sandbox_error"  # a completion's sandbox failed twice (infrastructure): nothing
                                  # published, never a reward of 0; the group is issued again


@dataclass
class RolloutOutcome:
    status: RolloutStatus
    group_id: str
    summary: GroupSummary | None = None
    error: str = ""
