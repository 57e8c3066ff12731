"""How much memory a learner rank and a rollout worker need, from the model's config.json alone (no weights
are loaded, no torch): printed by `diffurl train --dry-run`. All sizes are bytes; `gib` formats them.

Parameters of a Qwen2 / Dream decoder (h = hidden_size, i = intermediate_size, n = layers, V = vocab_size,
a = attention heads, kv = key/value heads, d = head_dim = h / a unless the config says):
    P = V h  (embeddings)  +  V h  (lm_head, unless tie_word_embeddings)  +  h  (final norm)
      + n [ h (a d) + a d  +  2 (h (kv d) + kv d)  +  (a d) h        q, k, v with biases; o without
            + 3 h i                                                  gate, up, down
            + 2 h ]                                                  the two RMSNorms
Learner rank (N = learner.num_ranks; the training dtype is bfloat16 on a GPU, else model.dtype):
    model states, as in the ZeRO paper (Rajbhandari et al. 2020, section 3), mixed bf16 / fp32:
        params 2P / 4P,  grads 2P / 4P,  optimizer 12P / 8P  (bf16: fp32 master copy + Adam's two moments)
        ZeRO stage >= 1 divides the optimizer states by N, stage >= 2 also the grads, stage 3 also the params
        (ceil(P / N) parameters per rank)
    activations, of one micro-batch's forward: rows = PASSES[learner.estimator] x learner.micro_batch_size
        (PASSES: coupled 3, decoupled 3, d1 1: the estimator forwards all its masked copies at once),
        L = data.max_prompt_tokens + rollout.max_new_tokens, w = the training dtype's bytes (2 or 4),
        per token per layer ACT_BYTES = w (ACT_HIDDEN h + ACT_MLP i), ACT_HIDDEN = 8, ACT_MLP = 4 (what a Qwen2
        layer keeps for backward, see the constants below):
        no checkpointing:        rows L n ACT_BYTES
        gradient checkpointing:  rows L (n w h + ACT_BYTES)      each layer's input, one layer recomputed
    logits: rows x rollout.max_new_tokens x V x (w + 4)          the head's output over the completion and
        its fp32 log-softmax, which backward keeps
    reference (learner.kl_beta > 0): another w P, on every rank (a plain module, outside ZeRO)
Rollout worker (bfloat16 on a GPU, else model.dtype, w bytes), rows = rollout.group_size x the groups one
call decodes, ceil(groups in flight / rollout.num_workers) (in flight: prompts_per_step, (eta + 1) x that
in async mode):
    weights  w P
    KV cache 2 n kv d L rows w       the keys and values of the whole canvas, all layers: what the fast
                                     decoder's prefix / dual cache holds (an upper bound without a cache)
    logits   rows x max_new_tokens x V x (w + 4 + SAMPLING_BYTES)   the completion's logits, their fp32 copy
                                     and the tempered, top-p sampling's working set (SAMPLING_BYTES = 24)
These are estimates of the large tensors, not of the allocator's fragmentation, CUDA context (~0.5-1 GiB) or
DeepSpeed's communication buckets.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from orchestrator.errors import UserError

PASSES = {"coupled": 3, "decoupled": 3, "d1": 1}  # forward copies per row (actors/dllm/estimators.py)
ACT_HIDDEN = 8  # per token per layer, width h: 2 norm inputs, 2 norm outputs, q, k, v (k, v at full width:
#                 an upper end for grouped-query attention), attention output
ACT_MLP = 4  # per token per layer, width i: gate, up, silu(gate), silu(gate) * up
SAMPLING_BYTES = 24  # per logit: tempered copy, sorted values, int64 sort indices, softmax, cumulative sum (fp32)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size")


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """An HF config.json dict (Qwen2, Dream, or LLaDA's own keys) -> its shape; KeyError names a missing key."""
        if "d_model" in config:
            config = _llada_as_qwen2(config)
        missing = [k for k in SHAPE_KEYS if config.get(k) is None]
        if missing:
            raise KeyError(", ".join(missing))
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        return cls(**{k: int(config[k]) for k in SHAPE_KEYS}, head_dim=int(head_dim),
                   tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))

    @property
    def parameters(self) -> int:
        h, i, V = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        layer = (h * q + q) + 2 * (h * kv + kv) + q * h + 3 * h * i + 2 * h
        return V * h * (1 if self.tie_word_embeddings else 2) + h + self.num_hidden_layers * layer


def _llada_as_qwen2(raw: dict) -> dict:
    """LLaDA's config.json keys (actors/dllm/llada.py's LladaConfig) under their Qwen2 names. Its q/k/v carry no
    biases, which the Qwen2 formula counts: 2 (n kv d) + n a d parameters more, a few in a million."""
    h, heads = raw.get("d_model"), raw.get("n_heads")
    ratio = raw.get("mlp_ratio", 4)
    return {"hidden_size": h, "num_attention_heads": heads, "num_hidden_layers": raw.get("n_layers"),
            "intermediate_size": raw.get("mlp_hidden_size") or (ratio * h if h else None),
            "num_key_value_heads": raw.get("n_kv_heads") or (1 if raw.get("multi_query_attention") else heads),
            "vocab_size": raw.get("embedding_size") or raw.get("vocab_size"),
            "tie_word_embeddings": raw.get("weight_tying", True)}


def parameter_count(config: dict) -> int:
    return ModelShape.from_config(config).parameters


@dataclass(frozen=True)
class LearnerMemory:
    """One learner rank, in bytes."""
    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    reference: int

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        return " + ".join(f"{f.name} {gib(getattr(self, f.name))}" for f in fields(self)) + f" = {gib(self.total)}"


@dataclass(frozen=True)
class RolloutMemory:
    """One rollout worker, in bytes; `rows`: the completions it decodes in one batched call."""
    weights: int
    kv_cache: int
    logits: int
    rows: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.logits

    def describe(self) -> str:
        return (f"weights {gib(self.weights)} + KV cache {gib(self.kv_cache)} + logits {gib(self.logits)} "
                f"= {gib(self.total)} ({self.rows} rows)")


def training_dtype(cfg, device: str) -> str:
    return "bfloat16" if device == "cuda" else cfg.model.dtype


def learner_memory(cfg, shape: ModelShape, device: str = "cuda") -> LearnerMemory:
    """One rank of `cfg.learner.num_ranks` under ZeRO stage `cfg.learner.zero_stage` (formula: module docstring)."""
    le, P, N = cfg.learner, shape.parameters, cfg.learner.num_ranks
    w = DTYPE_BYTES[training_dtype(cfg, device)]
    per_param = {"params": w, "grads": w, "optimizer": 12 if w == 2 else 8}  # bf16: fp32 master + m + v
    partitioned = {"optimizer": le.zero_stage >= 1, "grads": le.zero_stage >= 2, "params": le.zero_stage >= 3}
    states = {k: (math.ceil(P / N) if partitioned[k] else P) * b for k, b in per_param.items()}
    rows = PASSES[le.estimator] * le.micro_batch_size
    length = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    layer = w * (ACT_HIDDEN * shape.hidden_size + ACT_MLP * shape.intermediate_size)  # bytes per token
    if cfg.model.gradient_checkpointing:
        activations = rows * length * (shape.num_hidden_layers * w * shape.hidden_size + layer)
    else:
        activations = rows * length * shape.num_hidden_layers * layer
    logits = rows * cfg.rollout.max_new_tokens * shape.vocab_size * (w + 4)
    reference = w * P if le.kl_beta > 0 else 0
    return LearnerMemory(**states, activations=activations, logits=logits, reference=reference)


def rollout_rows(cfg) -> int:
    """Completions one rollout worker decodes in one call: the driver spreads the groups in flight evenly."""
    ro = cfg.rollout
    in_flight = ro.prompts_per_step * ((cfg.run.eta + 1) if cfg.run.mode == "async" else 1)
    return ro.group_size * math.ceil(in_flight / ro.num_workers)


def rollout_memory(cfg, shape: ModelShape, device: str = "cuda") -> RolloutMemory:
    """One rollout worker (formula: module docstring)."""
    w = DTYPE_BYTES[training_dtype(cfg, device)]
    rows = rollout_rows(cfg)
    length = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    kv = 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.head_dim * length * rows * w
    logits = rows * cfg.rollout.max_new_tokens * shape.vocab_size * (w + 4 + SAMPLING_BYTES)
    return RolloutMemory(weights=w * shape.parameters, kv_cache=kv, logits=logits, rows=rows)


def model_shape(cfg) -> tuple[ModelShape | None, str]:
    """(shape, where it came from) from model.path/config.json, else model.shape_config, else (no model.path)
    the tiny model's numbers; (None, why) when none is there."""
    candidates = []
    if cfg.model.path is not None:
        candidates.append(("model.path", Path(cfg.model.path) / "config.json"))
    if cfg.model.shape_config is not None:
        candidates.append(("model.shape_config", Path(cfg.model.shape_config)))
    for key, path in candidates:
        if path.is_file():
            return _read_shape(key, path), str(path)
    if cfg.model.path is None:
        tiny = {k: getattr(cfg.model.tiny, k) for k in SHAPE_KEYS}
        return ModelShape.from_config(tiny), "model.tiny (vocab_size: the BPE's target, an upper bound)"
    shape_config = ("no model.shape_config" if cfg.model.shape_config is None
                    else f"model.shape_config={cfg.model.shape_config} not found")
    return None, f"no config.json (model.path missing, {shape_config})"


def _read_shape(key: str, path: Path) -> ModelShape:
    try:
        return ModelShape.from_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise UserError(f"{key}: {path} is not a JSON config ({e})") from None
    except KeyError as e:
        raise UserError(f"{key}: {path} has no {e.args[0]}; expected a Qwen2, Dream or LLaDA config.json") from None


def gib(n: float) -> str:
    g = n / 2**30
    return f"{g:.1f} GiB" if g >= 0.95 else f"{g:.2g} GiB"
