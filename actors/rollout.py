"""RolloutWorker: a Ray actor that holds a policy copy and turns the prompts it is handed into scored groups.

One call, any number of groups: generate all their G completions in one batched call of the policy's engine
(actors/engines.py: a dLLM family's decoders, `rollout.decoder` reference or fast, or vLLM for a causal policy),
score them in one batch through the sandbox pool (which retries a failed sandbox once, the one retry layer),
publish each group's `Trajectory` to the Redis stream and return one `RolloutOutcome` per group to the driver.
Weights arrive as one object-store reference (`load_weights`) or a broadcast (`receive_weights`) and, because a
Ray actor runs its calls in order, are swapped only between calls.

Seeds: completion j of group i has the row seed derived_seed(seed_i, "row", j); the engine applies the seed
rule (actors/engines.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import ray
import torch

from actors.dllm import DecoderSettings, ar_ness, completion_mask_from_ids, derived_seed
from actors.dllm.tokenizer import end_token_ids
from actors.engines import EngineOptions, Generation, torch_device
from actors.policy import policy_for
from actors.prompts import encode_prompt
from actors.termination import exit_quietly_on_sigterm
from actors.trajectory import (CompletionReward, DecodeStats, RolloutOutcome, RolloutStatus, Trajectory)
from actors.weight_sync import BroadcastMember


@dataclass(frozen=True)
class GroupJob:
    """One prompt group to decode: group i of the run always has prompt i and seed i."""
    problem: dict
    group_id: str
    seed: int
    attempt: int = 0


class RolloutWorkerImpl:
    def __init__(self, cfg, model_dir: str, pool, open_stream, run_id: str, worker_id: str, version: int = 0,
                 device: str = "cpu"):
        """`open_stream()` returns the run's trajectory stream (a picklable factory from the driver);
        `model_dir` holds policy version `version` (a restarted actor comes back with these arguments).
        `device`: "cuda" (the GPU, or GPU share, Ray assigned to this actor; bfloat16) or "cpu"."""
        exit_quietly_on_sigterm()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.cfg, self.run_id, self.worker_id = cfg, run_id, worker_id
        try:
            self.device = torch_device(device)
        except RuntimeError as e:
            raise RuntimeError(f"{worker_id}: {e}") from None
        self.settings = DecoderSettings.from_values(cfg.rollout)  # the rollout section's decoder fields
        self.policy = policy_for(model_dir)  # the family: Dream, LLaDA or a causal Qwen2
        ro = cfg.rollout
        self.engine = self.policy.engine(model_dir, self.settings, device=device, options=EngineOptions(
            max_model_len=cfg.data.max_prompt_tokens + ro.max_new_tokens, seed=cfg.run.seed,
            vllm_kv_cache_mb=ro.vllm_kv_cache_mb, vllm_gpu_memory_utilization=ro.vllm_gpu_memory_utilization))
        self.tokenizer = self.engine.tokenizer
        self.weight_group = None
        self.version = version
        self.pool = pool
        self.stream = open_stream()
        self.end_ids = end_token_ids(self.tokenizer)

    def load_weights(self, state_dict: dict, version: int) -> int:
        """Object-store sync: the whole state dict as one object."""
        self.engine.load_weights(state_dict)
        self.version = int(version)
        return self.version

    def join_weight_group(self, master_addr: str, master_port: int, member: int, size: int, name: str, layout,
                          bucket_mb: float, timeout_s: float) -> str:
        """Broadcast sync: become member `member` of weight-sync group `name` (learner rank 0 is member 0)."""
        self.leave_weight_group()
        self.weight_group = BroadcastMember(
            master_addr, master_port, member, size, backend="nccl" if self.device.type == "cuda" else "gloo",
            device=self.device, layout=layout, bucket_bytes=int(bucket_mb * 2**20), timeout_s=timeout_s, name=name)
        return name

    def leave_weight_group(self) -> None:
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None

    def receive_weights(self, version: int) -> int:
        """Broadcast sync: receive the weights learner rank 0 sends, which must be stamped `version`."""
        if self.weight_group is None:
            raise RuntimeError(f"{self.worker_id}: receive_weights before join_weight_group")
        self.version = self.engine.receive(self.weight_group, int(version))
        return self.version

    def weights_digest(self) -> str:
        """SHA-256 of the model's state dict (names, dtypes and bytes), for tests and the benchmark."""
        return self.engine.digest()

    def info(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.version, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def rollout_groups(self, jobs: list[GroupJob], expected_version: int | None = None) -> list[RolloutOutcome]:
        """Decode, score and publish `jobs`, one outcome each. A worker whose weights are not `expected_version`
        (Ray restarted it from its constructor arguments) publishes nothing and answers STALE for all."""
        if expected_version is not None and expected_version != self.version:
            return [RolloutOutcome(RolloutStatus.STALE, job.group_id) for job in jobs]
        chaos_group = self.cfg.chaos.rollout_exit_at_group
        if any(chaos_group is not None and job.attempt == 0 and job.group_id == f"g{chaos_group:08d}"
               for job in jobs):
            os._exit(1)  # fault injection for the chaos tests: die mid-step like a crashed process
        G = self.cfg.rollout.group_size
        prompts = [encode_prompt(self.tokenizer, job.problem["messages"], self.cfg.data.max_prompt_tokens)
                   for job in jobs]
        t0 = time.perf_counter()
        out = self._generate(prompts, jobs, G)
        t_generate = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = self.pool.score([job.problem for job in jobs for _ in range(G)], list(out.texts))
        t_reward = time.perf_counter() - t0
        share = 1 / len(jobs)  # each group's share of the batched calls' time
        return [self._publish(job, prompt_ids, out, slice(i * G, (i + 1) * G), results[i * G:(i + 1) * G],
                              t_generate * share, t_reward * share)
                for i, (job, prompt_ids) in enumerate(zip(jobs, prompts))]

    def _generate(self, prompts: list[list[int]], jobs: list[GroupJob], G: int) -> Generation:
        """The G completions of every job in one batched call of the engine."""
        seeds = [derived_seed(job.seed, "row", j) for job in jobs for j in range(G)]
        return self.engine.generate([p for p in prompts for _ in range(G)], seeds, self.cfg.rollout.temperature)

    def _publish(self, job: GroupJob, prompt_ids, out: Generation, rows: slice, results, t_generate, t_reward) -> RolloutOutcome:
        failed = [x for x in results if x.get("reward") is None]  # the sandbox failed twice: infrastructure
        if failed:
            return RolloutOutcome(RolloutStatus.SANDBOX_ERROR, job.group_id,
                                  error=f"{self.worker_id}: sandbox infrastructure error: {failed[0].get('error')}")
        r = self.cfg.rollout
        completion_ids, order = out.completion_ids[rows], out.order[rows]  # [G, K]
        row_forwards, row_tokens = out.row_forwards[rows], out.row_tokens[rows]
        local, global_ = ar_ness(order, k=1)
        logprobs = out.logprobs  # the engine's per-token log-probs (vLLM), [N, K], or None
        trajectory = Trajectory(
            run_id=self.run_id, group_id=job.group_id, prompt_id=job.problem["task_id"], worker_id=self.worker_id,
            canary_bound=job.problem.get("canary_bound"),
            prompt_ids=list(prompt_ids), completion_ids=completion_ids.tolist(),
            completion_mask=completion_mask_from_ids(completion_ids, self.end_ids).int().tolist(),
            texts=list(out.texts[rows]), rewards=[CompletionReward.from_result(x) for x in results],
            version_start=self.version, version_end=self.version,
            rollout_logprobs=None if logprobs is None else [list(row) for row in logprobs[rows]],
            decode=DecodeStats(decoder=self.engine.name, alg=r.alg, temperature=r.temperature, steps=r.steps,
                               max_new_tokens=r.max_new_tokens, order=order.tolist(),
                               local_arness=local, global_arness=global_, forwards=max(row_forwards),
                               tokens_per_forward=sum(row_tokens) / max(sum(row_forwards), 1),
                               batch_rows=len(out.texts)),
            time_generate=t_generate, time_reward=t_reward)
        entry_id = self.stream.publish(trajectory)
        return RolloutOutcome(RolloutStatus.PUBLISHED, job.group_id, summary=trajectory.summary(entry_id))


RolloutWorker = ray.remote(RolloutWorkerImpl)
