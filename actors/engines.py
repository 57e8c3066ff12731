"""Engines: what turns prompts into completions, one protocol for every policy family (issue 22's seam).

    engine = policy_for(model_dir).engine(model_dir, settings, device="cpu", options=EngineOptions(...))
    out = engine.generate(prompt_ids, seeds, temperature)    # -> Generation
    engine.load_weights(state_dict)                          # the learner's full state dict (object store)
    engine.receive(member, version)                          # a broadcast (actors.weight_sync.BroadcastMember)
    engine.digest()                                          # SHA-256 of the weights, to compare with the learner

    TorchEngine   a dLLM family's own decoders (Dream: reference / fast, actors.dllm.decoders; LLaDA: generate.py's
                  and the fast one, actors.dllm.llada_decoding) on a torch model held in this process
    VllmEngine    vllm.LLM for a causal Qwen2 (AR-GRPO), actors.vllm_engine

The rollout worker (actors.rollout), `diffurl eval` (orchestrator.evaluate) and the benchmarks call nothing else.

The seed rule, once: the caller gives every row its own seed (a rollout's completion j of group i:
derived_seed(seed_i, "row", j); eval's job j: derived_seed(seed, "eval", j)). A per-row decoder (the fast
decoders, vLLM) seeds row r's generator with seeds[r], so a row's completion does not depend on its batch-mates;
a decoder that draws from one generator per call (the reference decoders, the paper's and generate.py's)
seeds it with `batch_seed(seeds)`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Generation:
    """One batched generation, whichever engine made it."""
    texts: list[str]                 # [N] decoded up to the first end token, special tokens stripped
    completion_ids: torch.Tensor     # [N, K] padded after the end with <|endoftext|>
    order: torch.Tensor              # [N, K] forward at which each position was decided (-1: never; AR: k)
    forwards: int                    # model forwards of the call (NFE)
    row_forwards: list[int]          # [N] forwards each row took part in
    row_tokens: list[int]            # [N] positions the model decided (not the end fill)
    logprobs: list[list[float]] | None = None  # [N, K] the engine's log-prob of each token (vLLM), else None


@dataclass(frozen=True)
class EngineOptions:
    """What an engine needs besides the decoder settings: the context it must hold and, for vLLM, its memory."""
    max_model_len: int = 512          # prompt + completion positions
    seed: int = 0                     # vLLM's engine seed (every request carries its own)
    vllm_kv_cache_mb: float = 256.0   # vLLM on CPU: the KV cache's size
    vllm_gpu_memory_utilization: float = 0.3  # vLLM on a GPU: its share of the GPU's memory


class Engine(Protocol):
    name: str  # what generated, for the trajectory's DecodeStats: "reference", "fast" or "vllm"
    tokenizer: object

    def generate(self, prompts: list[list[int]], seeds: list[int], temperature: float) -> Generation: ...

    def load_weights(self, state_dict: dict) -> None: ...

    def receive(self, member, version: int) -> int: ...

    def digest(self) -> str: ...


def torch_device(device: str) -> torch.device:
    """"cuda" (the GPU, or GPU share, Ray assigned to this process) or "cpu"; a clear error when torch sees no GPU."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"asked for CUDA but torch sees no GPU "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        return torch.device("cuda", 0)
    return torch.device("cpu")


class TorchEngine:
    """A dLLM policy's decoders on its torch model, held here (bfloat16 on a GPU, the saved dtype on CPU)."""

    def __init__(self, policy, model_dir, settings, *, device: str = "cpu"):
        policy.check_settings(settings)
        self.policy, self.settings, self.device = policy, settings, torch_device(device)
        self.name = settings.decoder
        self.model, self.tokenizer = policy.load(str(model_dir), dtype=torch.bfloat16 if device == "cuda" else None)
        self.model.to(self.device).eval()

    def generate(self, prompts: list[list[int]], seeds: list[int], temperature: float) -> Generation:
        with torch.no_grad():
            out = self.policy.decode(self.model, self.tokenizer, prompts, self.settings, temperature=temperature,
                                     seeds=list(seeds))
        return Generation(texts=list(out.texts), completion_ids=out.completion_ids.cpu(), order=out.order.cpu(),
                          forwards=out.forwards, row_forwards=list(out.row_forwards), row_tokens=list(out.row_tokens))

    def load_weights(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict)

    def receive(self, member, version: int) -> int:
        return member.receive(self.model, int(version)).version

    def digest(self) -> str:
        from actors.weight_sync import state_digest

        return state_digest(self.model.state_dict())


class VllmEngine:
    """A causal policy on vllm.LLM: completion r is its own request seeded seeds[r], with the settings' top-p and
    top-k, max_new_tokens and a stop at the tokenizer's end tokens; token ids padded with <|endoftext|> to K, so a
    generation has a dLLM one's shape (decided strictly left to right), with vLLM's per-token log-probs."""

    def __init__(self, policy, model_dir, settings, *, device: str = "cpu", options: EngineOptions = EngineOptions()):
        from actors.dllm.tokenizer import EOS, build_tokenizer, end_token_ids
        from actors.vllm_engine import VllmEngine as LLM

        self.settings, self.device, self.name = settings, device, "vllm"
        self.tokenizer = build_tokenizer(str(model_dir))
        self.end_ids, self.fill = end_token_ids(self.tokenizer), self.tokenizer.convert_tokens_to_ids(EOS)
        self.llm = LLM(str(model_dir), max_model_len=options.max_model_len, seed=options.seed, device=device,
                       kv_cache_mb=options.vllm_kv_cache_mb, gpu_memory_utilization=options.vllm_gpu_memory_utilization)

    def generate(self, prompts: list[list[int]], seeds: list[int], temperature: float) -> Generation:
        from actors.dllm.decoding import decode_completions
        from actors.vllm_engine import padded_ids

        s, K = self.settings, self.settings.max_new_tokens
        rows = self.llm.generate(prompts, temperature=temperature, top_p=s.top_p or 1.0, top_k=s.top_k, max_tokens=K,
                                 stop_ids=self.end_ids, seeds=list(seeds))
        ids = padded_ids(rows, K, self.fill)
        lengths = [len(r.token_ids) for r in rows]
        return Generation(texts=decode_completions(self.tokenizer, ids), completion_ids=ids,
                          order=torch.arange(K).expand(len(rows), K).clone(), forwards=max(lengths, default=0),
                          row_forwards=lengths, row_tokens=lengths,
                          logprobs=[r.logprobs + [0.0] * (K - len(r.logprobs)) for r in rows])

    def load_weights(self, state_dict: dict) -> None:
        self.llm.load_weights(state_dict)

    def receive(self, member, version: int) -> int:
        state, stats = member.receive_state(int(version))
        self.llm.load_weights(state)
        return stats.version

    def digest(self) -> str:
        raise RuntimeError("a vLLM engine holds its weights in vLLM's fused layout, which has no digest comparable "
                           "to the learner's; compare greedy outputs instead")
