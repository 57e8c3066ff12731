"""The masked diffusion LM: a Qwen2 decoder with fully bidirectional attention and the shifted head.

`build_model` loads a local HF directory (Qwen2 or Dream/DiffuCoder, no trust_remote_code) or builds a
tiny model from a Qwen2 config dict; `save_model` writes a directory `build_model` reloads identically.
`diffusion_logits` is the single forward; `completion_logits`, its shifted-head slice over the completion,
is what generation, scoring and SFT read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .padding import attention_inputs
from .tokenizer import build_tokenizer

# Config keys of a Dream/DiffuCoder config.json that only serve remote code; the rest are Qwen2 keys.
_REMOTE_CODE_KEYS = ("architectures", "auto_map", "model_type", "transformers_version")
_MODEL_TYPES = ("qwen2", "dream")
_MASK_FORMS = {"sdpa": "bool", "eager": "additive"}


class DiffusionQwen2ForCausalLM(Qwen2ForCausalLM):
    """Qwen2ForCausalLM with no causal mask anywhere: every position attends to every (real) position.

    forward() takes the usual 2-D padding mask [B, L] (turned into positions and a 4-D mask by
    `attention_inputs`), an explicit 4-D boolean mask [B, 1, L, L], or None (no padding). The 4-D mask
    is handed to every layer directly, so transformers never builds its causal mask; `is_causal` is off
    on every attention module, so SDPA without a mask is bidirectional too.
    """

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.self_attn.is_causal = False

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 2:
            derived_positions, attention_mask = attention_inputs(attention_mask)
            position_ids = derived_positions if position_ids is None else position_ids
        if attention_mask is not None:
            attention_mask = self._kernel_mask(attention_mask)
        per_layer_type = {layer_type: attention_mask for layer_type in set(self.config.layer_types)}
        return super().forward(input_ids=input_ids, attention_mask=per_layer_type, position_ids=position_ids, **kwargs)

    def _kernel_mask(self, mask4d: torch.Tensor) -> torch.Tensor:
        """bool [B, 1, L, L] -> the form the configured attention kernel expects."""
        implementation = self.config._attn_implementation or "sdpa"
        form = _MASK_FORMS.get(implementation)
        if form is None:
            raise ValueError(
                f"attn_implementation {implementation!r} is not supported for bidirectional masks; use 'sdpa' or 'eager'"
            )
        if form == "bool" or mask4d.dtype != torch.bool:
            return mask4d
        dtype = self.model.embed_tokens.weight.dtype
        return torch.zeros(mask4d.shape, dtype=dtype, device=mask4d.device).masked_fill(~mask4d, torch.finfo(dtype).min)


def diffusion_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
) -> torch.Tensor:
    """input_ids [B, L], attention_mask [B, L] -> logits [B, L or logits_to_keep, V] (unshifted head output)."""
    position_ids, mask4d = attention_inputs(attention_mask.to(input_ids.device))
    output = model(
        input_ids=input_ids,
        attention_mask=mask4d,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=logits_to_keep,
    )
    return output.logits


def completion_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int
) -> torch.Tensor:
    """input_ids [B, L] ending in K = completion_len completion positions -> logits [B, K, V].

    The shifted head: the logits at position j predict token j + 1, so the K positions before the last one
    predict the K completion tokens (logits[:, k] is the prediction for input_ids[:, L - K + k]).
    """
    return diffusion_logits(model, input_ids, attention_mask, logits_to_keep=completion_len + 1)[:, :-1]


def _config_from_dir(path: Path) -> Qwen2Config:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model: {str(path)!r} has no config.json")
    raw = json.loads(config_file.read_text())
    model_type = str(raw.get("model_type", "")).lower()
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"model: {str(path)!r} has model_type {raw.get('model_type')!r}; accepted: qwen2, Dream")
    return Qwen2Config(**{key: value for key, value in raw.items() if key not in _REMOTE_CODE_KEYS})


def _load_dir(path: Path, dtype: torch.dtype | None, attn_implementation: str) -> DiffusionQwen2ForCausalLM:
    config = _config_from_dir(path)
    model, info = DiffusionQwen2ForCausalLM.from_pretrained(
        str(path),
        config=config,
        dtype=dtype or "auto",
        attn_implementation=attn_implementation,
        output_loading_info=True,
    )
    missing = [key for key in info["missing_keys"] if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or info["unexpected_keys"]:
        raise ValueError(
            f"model: weights in {str(path)!r} do not match a Qwen2 decoder "
            f"(missing {missing[:3]}, unexpected {info['unexpected_keys'][:3]})"
        )
    return model


def _build_tiny(spec: dict, dtype: torch.dtype | None, attn_implementation: str) -> tuple:
    unknown = set(spec) - {"config", "tokenizer", "seed"}
    if unknown:
        raise ValueError(f"model spec: unknown keys {sorted(unknown)}; accepted: config, tokenizer, seed")
    if "config" not in spec or "tokenizer" not in spec:
        raise ValueError("model spec: a dict spec needs both 'config' (Qwen2Config kwargs) and 'tokenizer'")
    tokenizer = build_tokenizer(spec["tokenizer"])
    config = Qwen2Config(
        **{
            **spec["config"],
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.eos_token_id,
        }
    )
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("seed", 0)))
        model = DiffusionQwen2ForCausalLM(config)
    if dtype is not None:  # parameters only: the rotary inv_freq buffer stays fp32, as from_pretrained keeps it
        for param in model.parameters():
            param.data = param.data.to(dtype)
    return model, tokenizer


def build_model(
    spec: str | Path | dict, *, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa"
) -> tuple[DiffusionQwen2ForCausalLM, PreTrainedTokenizerFast]:
    """spec: a local HF directory (Qwen2 or Dream/DiffuCoder) or {"config", "tokenizer", "seed"} -> (model, tokenizer).

    The returned model's config carries `mask_token_id` (the tokenizer's `<|mask|>` id).
    """
    if attn_implementation not in _MASK_FORMS:
        raise ValueError(f"attn_implementation {attn_implementation!r} is not supported; use 'sdpa' or 'eager'")
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"model: {str(spec)!r} is not a directory")
        model, tokenizer = _load_dir(path, dtype, attn_implementation), build_tokenizer(path)
    elif isinstance(spec, dict):
        model, tokenizer = _build_tiny(spec, dtype, attn_implementation)
    else:
        raise TypeError(f"model spec must be a directory path or a dict, got {type(spec).__name__}")
    config_mask = getattr(model.config, "mask_token_id", None)
    if config_mask is not None and config_mask != tokenizer.mask_token_id:
        raise ValueError(f"model: config mask_token_id {config_mask} != tokenizer mask_token_id {tokenizer.mask_token_id}")
    if model.config.vocab_size < len(tokenizer):
        raise ValueError(f"model: vocab_size {model.config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    model.config.mask_token_id = tokenizer.mask_token_id
    return model, tokenizer


def save_model(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Write an HF directory (config.json, safetensors, tokenizer) that `build_model(path)` reloads identically
    (or, for a causal Qwen2, `actors.causal.build_causal_model(path)` and vLLM)."""
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
