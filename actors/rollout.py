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
    def __init__(self, cfg, model_dir: str, pool, open_stream, run_id: str, worker_id: str, version: int = 0):
        """`open_stream()` returns the run's trajectory stream (a picklable factory from the driver);
        `model_dir` holds policy version `version` (a restarted actor comes back with these arguments)."""
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.cfg = cfg
        self.worker_id = worker_id
        self.model, self.tokenizer = build_model(model_dir)
        self.model.eval()
        self.version = version
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
    def rollout_group(self, problem: dict, prompt_id: str, group_id: str, seed: int, attempt: int = 0,
                      expected_version: int | None = None) -> dict:
        """Decode, score and publish one group. A worker whose weights are not `expected_version` (Ray
        restarted it from its constructor arguments) publishes nothing and says so: {"stale": version}."""
        r = self.cfg.rollout
        version_start = self.version
        if expected_version is not None and expected_version != self.version:
            return {"stale": self.version, "group_id": group_id}
        chaos_group = self.cfg.chaos.rollout_exit_at_group
        if chaos_group is not None and attempt == 0 and group_id == f"g{chaos_group:08d}":
            os._exit(1)  # fault injection for the chaos tests: die mid-step like a crashed process
        prompt_ids = encode_prompt(self.tokenizer, problem["messages"], self.cfg.data.max_prompt_tokens)

        t0 = time.perf_counter()
        out = generate(self.model, self.tokenizer, [prompt_ids] * r.group_size,
                       max_new_tokens=r.max_new_tokens, steps=r.steps, temperature=r.temperature,
                       top_p=r.top_p, top_k=r.top_k, alg=r.alg, alg_temp=r.alg_temp, seed=seed)
        t_generate = time.perf_counter() - t0

        t0 = time.perf_counter()
        results = self.pool.score([problem] * r.group_size, list(out.texts))
        failed = [i for i, x in enumerate(results) if x.get("reward") is None]  # sandbox_error twice
        if failed:  # infrastructure, not the candidate: score again, never count it as reward 0
            again = self.pool.score([problem] * len(failed), [out.texts[i] for i in failed])
            for i, x in zip(failed, again):
                results[i] = x
            if any(x.get("reward") is None for x in again):
                raise RuntimeError(f"{self.worker_id}: sandbox infrastructure error on group {group_id}: "
                                   f"{next(x.get('error') for x in again if x.get('reward') is None)}")
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
        return summarize_record(entry_id, record)


def summarize_record(entry_id: str, record: dict) -> dict:
    """What the driver keeps of a published group: enough for the step's metrics, nothing token-sized."""
    parts = record["reward_parts"]
    decode = record["decode"]
    return {
        "entry_id": entry_id, "group_id": record["group_id"], "prompt_id": record["prompt_id"],
        "rewards": record["rewards"], "version_start": record["version_start"],
        "pass_rates": [float(p.get("pass_rate") or 0.0) for p in parts],
        "formats": [float(p.get("format") or 0.0) for p in parts],
        "timeouts": sum(1 for p in parts for t in (p.get("tests") or []) if _status(t) == "timeout"),
        "completion_tokens": sum(sum(row) for row in record["completion_mask"]),
        "local_arness": decode["local_arness"], "global_arness": decode["global_arness"],
        "time_generate": record["timings"]["generate"], "time_reward": record["timings"]["reward"],
        "sandbox_jobs": len(parts), "worker_id": record["worker_id"],
    }


def _status(test_result) -> str:
    return test_result.get("status", "") if isinstance(test_result, dict) else str(test_result)


RolloutWorker = ray.remote(RolloutWorkerImpl)
