"""RolloutWorker: a Ray actor that holds a policy copy and turns one prompt into one scored group.

One call, one group: decode G completions with the exact reference decoder (`actors.dllm.generate`),
score them through the sandbox pool (which retries a failed sandbox once, the one retry layer), publish
the `Trajectory` to the Redis stream and return a `RolloutOutcome` to the driver. Weights arrive as one
object-store reference (`load_weights`) and, because a Ray actor runs its calls in order, are swapped
only between groups.
"""
from __future__ import annotations

import os
import time

import ray
import torch

from actors.dllm import ar_ness, build_model, completion_mask_from_ids, generate
from actors.dllm.tokenizer import EOS, IM_END
from actors.prompts import encode_prompt
from actors.trajectory import (CompletionReward, DecodeStats, RolloutOutcome, RolloutStatus, Trajectory)


class RolloutWorkerImpl:
    def __init__(self, cfg, model_dir: str, pool, open_stream, run_id: str, worker_id: str, version: int = 0):
        """`open_stream()` returns the run's trajectory stream (a picklable factory from the driver);
        `model_dir` holds policy version `version` (a restarted actor comes back with these arguments)."""
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.cfg, self.run_id, self.worker_id = cfg, run_id, worker_id
        self.model, self.tokenizer = build_model(model_dir)
        self.model.eval()
        self.version = version
        self.pool = pool
        self.stream = open_stream()
        self.end_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in (IM_END, EOS)]

    def load_weights(self, state_dict: dict, version: int) -> int:
        self.model.load_state_dict(state_dict)
        self.version = int(version)
        return self.version

    def info(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.version, "pid": os.getpid()}

    def rollout_group(self, problem: dict, group_id: str, seed: int, attempt: int = 0,
                      expected_version: int | None = None) -> RolloutOutcome:
        """Decode, score and publish one group. A worker whose weights are not `expected_version` (Ray
        restarted it from its constructor arguments) publishes nothing and answers STALE."""
        if expected_version is not None and expected_version != self.version:
            return RolloutOutcome(RolloutStatus.STALE, group_id)
        chaos_group = self.cfg.chaos.rollout_exit_at_group
        if chaos_group is not None and attempt == 0 and group_id == f"g{chaos_group:08d}":
            os._exit(1)  # fault injection for the chaos tests: die mid-step like a crashed process
        r = self.cfg.rollout
        prompt_ids = encode_prompt(self.tokenizer, problem["messages"], self.cfg.data.max_prompt_tokens)

        t0 = time.perf_counter()
        out = generate(self.model, self.tokenizer, [prompt_ids] * r.group_size,
                       max_new_tokens=r.max_new_tokens, steps=r.steps, temperature=r.temperature,
                       top_p=r.top_p, top_k=r.top_k, alg=r.alg, alg_temp=r.alg_temp, seed=seed)
        t_generate = time.perf_counter() - t0

        t0 = time.perf_counter()
        results = self.pool.score([problem] * r.group_size, list(out.texts))
        t_reward = time.perf_counter() - t0
        failed = [x for x in results if x.get("reward") is None]  # the sandbox failed twice: infrastructure
        if failed:
            return RolloutOutcome(RolloutStatus.SANDBOX_ERROR, group_id,
                                  error=f"{self.worker_id}: sandbox infrastructure error: {failed[0].get('error')}")

        completion_ids = out.completion_ids  # [G, K]
        local, global_ = ar_ness(out.order, k=1)
        trajectory = Trajectory(
            run_id=self.run_id, group_id=group_id, prompt_id=problem["task_id"], worker_id=self.worker_id,
            canary_bound=problem.get("canary_bound"),
            prompt_ids=list(prompt_ids), completion_ids=completion_ids.tolist(),
            completion_mask=completion_mask_from_ids(completion_ids, self.end_ids).int().tolist(),
            texts=list(out.texts), rewards=[CompletionReward.from_result(x) for x in results],
            version_start=self.version, version_end=self.version,
            decode=DecodeStats(decoder="reference", alg=r.alg, temperature=r.temperature, steps=r.steps,
                               max_new_tokens=r.max_new_tokens, order=out.order.tolist(),
                               local_arness=local, global_arness=global_),
            time_generate=t_generate, time_reward=t_reward)
        entry_id = self.stream.publish(trajectory)
        return RolloutOutcome(RolloutStatus.PUBLISHED, group_id, summary=trajectory.summary(entry_id))


RolloutWorker = ray.remote(RolloutWorkerImpl)
