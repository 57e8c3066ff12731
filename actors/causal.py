"""The autoregressive side (AR-GRPO, the paper's Qwen2.5-Coder baseline), pure torch like `actors.dllm`.

    model_kind(path)                  "causal" (Qwen2ForCausalLM) or "diffusion" (Dream, DiffuCoder, ours)
    build_causal_model(spec)          a local HF Qwen2 directory, or a tiny one from a `build_model`-style spec
    causal_token_logprobs(...)        [b, K] exact log p(token_k | prompt, tokens_<k) under the causal model
    causal_sft_loss(...)              next-token cross entropy over the trained completion tokens (warm start)
    greedy_generate(...)              HF `generate` at T=0, cut at the first end token (tests)

`actors.dllm.save_model` writes either kind of model (an HF directory that vLLM loads too).
The tokenizer, chat template and prompt are the dLLM's (`actors.dllm.tokenizer`, `actors.prompts`), so the two
policies read the same prompts and write in the same format. Positions come from the attention mask
(cumsum - 1), so a left-padded row scores exactly as the same row unpadded, which is how vLLM sees it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from actors.dllm.padding import position_ids_from_mask
from actors.dllm.tokenizer import IM_END, build_tokenizer, end_token_ids

_DIFFUSION_MARKS = ("dream", "diffusion", "llada")


def model_kind(path: str | Path) -> str:
    """What a model directory holds, from its config.json alone (or `path` itself, a config file): "causal" for a
    plain Qwen2ForCausalLM, "diffusion" for Dream / DiffuCoder / this project's DiffusionQwen2ForCausalLM (which
    carries a mask token)."""
    config_file = Path(path) if Path(path).is_file() else Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model: {str(path)!r} has no config.json")
    raw = json.loads(config_file.read_text())
    names = [str(raw.get("model_type", ""))] + [str(a) for a in raw.get("architectures") or []]
    if any(mark in name.lower() for name in names for mark in _DIFFUSION_MARKS):
        return "diffusion"
    if "Qwen2ForCausalLM" in (raw.get("architectures") or []):
        return "causal"
    if raw.get("mask_token_id") is not None:
        return "diffusion"
    if str(raw.get("model_type", "")).lower() == "qwen2":
        return "causal"
    raise ValueError(f"{config_file} has model_type {raw.get('model_type')!r}; diffurl serves Dream/DiffuCoder "
                     "(Dream, or qwen2 with a mask token), LLaDA (llada) and causal Qwen2 (qwen2) models")


def build_causal_model(spec: str | Path | dict, *, dtype: torch.dtype | None = None
                       ) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """spec: a local HF Qwen2ForCausalLM directory, or {"config", "tokenizer", "seed"} (as `build_model` takes)."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"model: {str(spec)!r} is not a directory")
        if model_kind(path) != "causal":
            raise ValueError(f"model: {str(path)!r} holds a diffusion model, not a causal Qwen2")
        model = Qwen2ForCausalLM.from_pretrained(str(path), dtype=dtype or "auto", attn_implementation="sdpa")
        return model, build_tokenizer(path)
    if not isinstance(spec, dict) or "config" not in spec or "tokenizer" not in spec:
        raise ValueError("model spec: a dict spec needs both 'config' (Qwen2Config kwargs) and 'tokenizer'")
    tokenizer = build_tokenizer(spec["tokenizer"])
    config = Qwen2Config(**{**spec["config"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                            "eos_token_id": [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id],
                            "bos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": False})
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("seed", 0)))
        model = Qwen2ForCausalLM(config)
    if dtype is not None:
        model.to(dtype)
    return model, tokenizer


def completion_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            completion_len: int) -> torch.Tensor:
    """input_ids [b, P+K] ending in K completion tokens -> logits [b, K, V]: logits[:, k] predicts token P+k."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                use_cache=False, logits_to_keep=completion_len + 1)
    return out.logits[:, :-1]


def causal_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          completion_len: int) -> torch.Tensor:
    """[b, K] log-probability of each completion token given everything before it (float32)."""
    logits = completion_token_logits(model, input_ids, attention_mask, completion_len).float()
    targets = input_ids[:, -completion_len:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def causal_sft_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    completion_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over the trained completion tokens (completion_mask [b, K])."""
    logprobs = causal_token_logprobs(model, input_ids, attention_mask, completion_mask.shape[1])  # [b, K]
    trained = completion_mask.bool().to(logprobs.device)
    return -(logprobs * trained).sum() / trained.sum().clamp(min=1)


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """HF greedy decoding of each prompt (unpadded, one at a time), up to and including the first end token."""
    ends = end_token_ids(tokenizer)
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt], dtype=torch.long, device=model.device)
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=ends, pad_token_id=tokenizer.pad_token_id)
        out.append(seq[0, len(prompt):].tolist())
    return out
