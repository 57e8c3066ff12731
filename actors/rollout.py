"""RolloutWorker: a Ray actor that holds a policy copy and turns one prompt into one scored group.

One call, one group: decode G completions with the exact reference decoder (`actors.dllm.generate`),
score them through the sandbox pool, publish the trajectory to the Redis stream and return a short
summary to the driver. Weights arrive as one object-store reference (`load_weights`) and, because a
Ray actor runs its calls in order, are swapped only between groups.
"""
from __future__ import annotations

import os
import time

import ray
import torch

from actors.dllm import ar_ness, build_model, completion_mask_from_ids, generate
from actors.prompts import encode_prompt


class RolloutWorkerImpl:
    def __init__(self, cfg, model_dir: str, pool, open_stream, run_id: str, worker_id: str):
        """`open_stream()` returns the run's trajectory stream (a picklable factory from the driver)."""
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.cfg = cfg
        self.worker_id = worker_id
        self.model, self.tokenizer = build_model(model_dir)
        self.model.eval()
        self.version = 0
        self.pool = pool
        self.stream = open_stream()
        self.run_id = run_id
        self.end_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]

    # ----------------------------------------------------------------- weights
    def load_weights(self, state_dict: dict, version: int) -> int:
        self.model.load_state_dict(state_dict)
        self.version = int(version)
        return self.version

    def checksum(self) -> float:
        with torch.no_grad():
            return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    def info(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.version, "pid": os.getpid()}

    def greedy(self, prompts: list[str], max_new_tokens: int, steps: int) -> list[list[int]]:
        """Temperature-0 decode of raw prompts: used to check that a weight sync took effect."""
        out = generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, steps=steps,
                       temperature=0.0, alg=self.cfg.rollout.alg, alg_temp=0.0)
        return out.completion_ids.tolist()

    # ----------------------------------------------------------------- one group
    def rollout_group(self, problem: dict, prompt_id: str, group_id: str, seed: int) -> dict:
        r = self.cfg.rollout
        version_start = self.version
        prompt_ids = encode_prompt(self.tokenizer, problem["messages"], self.cfg.data.max_prompt_tokens)

        t0 = time.perf_counter()
        out = generate(self.model, self.tokenizer, [prompt_ids] * r.group_size,
                       max_new_tokens=r.max_new_tokens, steps=r.steps, temperature=r.temperature,
                       top_p=r.top_p, top_k=r.top_k, alg=r.alg, alg_temp=r.alg_temp, seed=seed)
        t_generate = time.perf_counter() - t0

        t0 = time.perf_counter()
        results = self.pool.score([problem] * r.group_size, list(out.texts))
        t_reward = time.perf_counter() - t0

        completion_ids = out.completion_ids  # [G, K]
        cmask = completion_mask_from_ids(completion_ids, self.end_ids)  # [G, K]
        local, global_ = ar_ness(out.order, k=1)
        record = {
            "run_id": self.run_id,
            "group_id": group_id,
            "prompt_id": prompt_id,
            "prompt_ids": list(prompt_ids),
            "completion_ids": completion_ids.tolist(),
            "completion_mask": cmask.int().tolist(),
            "texts": list(out.texts),
            "rewards": [float(x["reward"]) for x in results],
            "reward_parts": [
                {k: x.get(k) for k in ("status", "pass_rate", "format", "tests", "mode", "retried")}
                for x in results
            ],
            "infra_errors": sum(1 for x in results if x.get("retried")),
            "version_start": version_start,
            "version_end": self.version,
            "decode": {
                "steps": r.steps, "max_new_tokens": r.max_new_tokens, "alg": r.alg,
                "temperature": r.temperature, "order": out.order.tolist(),
                "local_arness": local, "global_arness": global_,
                "tokens_per_step": r.max_new_tokens / r.steps,
            },
            "worker_id": self.worker_id,
            "timings": {"generate": t_generate, "reward": t_reward},
        }
        entry_id = self.stream.publish(record)
        return {
            "entry_id": entry_id, "group_id": group_id, "prompt_id": prompt_id,
            "rewards": record["rewards"], "version_start": version_start,
            "pass_rates": [float(x.get("pass_rate") or 0.0) for x in results],
            "formats": [float(x.get("format") or 0.0) for x in results],
            "timeouts": sum(1 for x in results for t in (x.get("tests") or []) if _status(t) == "timeout"),
            "completion_tokens": int(cmask.sum()),
            "local_arness": local, "global_arness": global_,
            "time_generate": t_generate, "time_reward": t_reward,
            "sandbox_jobs": len(results), "worker_id": self.worker_id,
        }


def _status(test_result) -> str:
    return test_result.get("status", "") if isinstance(test_result, dict) else str(test_result)


RolloutWorker = ray.remote(RolloutWorkerImpl)
