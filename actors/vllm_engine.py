"""vLLM for causal policies (AR-GRPO rollouts, `diffurl eval` of AR checkpoints, the AR benchmark); no Ray here.

    engine = VllmEngine(model_dir, max_model_len=512)
    rows = engine.generate(prompt_ids, temperature=1.0, top_p=0.95, max_tokens=48, seeds=[...], stop_ids=[...])
    engine.load_weights(state_dict)      # the learner's full HF state dict, through vLLM's own reload

The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so a Ray actor holding it needs no
`__main__` guard and `collective_rpc` reaches the model runner directly. Each completion is its own request
with its own seed, so a completion does not depend on what it was batched with. Log-probabilities are vLLM's
raw ones (before temperature and top-p), the same quantity the learner computes. On CPU the KV cache is sized
in bytes (`kv_cache_mb`); on a GPU by `gpu_memory_utilization`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# read by vLLM at import: keep the engine core in this process, and quiet its per-request logging
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")

CHILD_LOADER_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH")
# what these were before vLLM was imported: vLLM's CPU platform points LD_PRELOAD at torch's libgomp and
# LD_LIBRARY_PATH into the venv (cv2) for the processes it would spawn. Left set, every process this one starts
# later would load them too: Ray workers, and the sandbox's bwrap as its slot uid, which cannot enter a 0700
# checkout (every sandbox job would fail). In this process they are loaded already.
_LOADER_ENV = {key: os.environ.get(key) for key in CHILD_LOADER_ENV}


def _restore_loader_env() -> None:
    for key, value in _LOADER_ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


INSTALL_HINT = "vLLM is not installed in this environment: run `make install-vllm` (make test installs it too)"


@dataclass
class Completion:
    token_ids: list[int]     # the sampled tokens, the stop token included when one was sampled
    logprobs: list[float]    # [len(token_ids)] vLLM's log-probability of each sampled token
    finish_reason: str       # stop | length


def padded_ids(rows: list[Completion], width: int, fill: int):
    """The rows' token ids as a long tensor [N, width], each padded with `fill` after its last token."""
    import torch

    return torch.tensor([r.token_ids + [fill] * (width - len(r.token_ids)) for r in rows], dtype=torch.long)


def vllm_available() -> bool:
    """Whether vLLM is installed (without importing it, which takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    """Raise ImportError with the install hint when vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None


class VllmEngine:
    def __init__(self, model_dir: str, *, max_model_len: int, seed: int = 0, device: str = "cpu",
                 kv_cache_mb: float = 256.0, gpu_memory_utilization: float = 0.3, dtype: str | None = None):
        require_vllm()
        from vllm import LLM

        kwargs = dict(model=str(model_dir), tokenizer=str(model_dir), max_model_len=int(max_model_len),
                      seed=int(seed), enforce_eager=True, compilation_config={"mode": 0},
                      # a seeded request whose prompt is prefilled in chunks fails on CPU ("CPU Generator does
                      # not use offset"): prefill each prompt whole, with room for a large batch of them
                      enable_chunked_prefill=False, max_num_batched_tokens=max(16384, int(max_model_len)),
                      dtype=dtype or ("bfloat16" if device == "cuda" else "float32"))
        if device == "cuda":
            kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
        else:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_mb * 2**20)
        self.llm = LLM(**kwargs)
        _restore_loader_env()
        self.model_dir, self.device = str(model_dir), device

    def generate(self, prompts: list[list[int]], *, temperature: float, top_p: float, max_tokens: int,
                 seeds: list[int], stop_ids: list[int], top_k: int | None = None) -> list[Completion]:
        """One completion per prompt row (seeds[r] seeds row r); stops after the first of `stop_ids`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        greedy = temperature == 0
        params = [SamplingParams(temperature=float(temperature), top_p=1.0 if greedy else float(top_p),
                                 top_k=-1 if greedy or top_k is None else int(top_k),
                                 max_tokens=int(max_tokens), logprobs=0, stop_token_ids=list(stop_ids),
                                 seed=int(seed), detokenize=False) for seed in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        _restore_loader_env()
        rows = []
        for out in outs:
            sample = out.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
            rows.append(Completion(ids, logprobs, str(sample.finish_reason)))
        return rows

    def load_weights(self, state_dict: dict) -> None:
        """Load an HF state dict (names as Qwen2ForCausalLM saves them) through the model runner's own
        `reload_weights`; `lm_head.weight` must be among them even when embeddings are tied."""
        if "lm_head.weight" not in state_dict and "model.embed_tokens.weight" in state_dict:
            state_dict = {**state_dict, "lm_head.weight": state_dict["model.embed_tokens.weight"]}
        items = [(name, tensor.detach()) for name, tensor in state_dict.items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items)})
        self.llm.reset_prefix_cache()
