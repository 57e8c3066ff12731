"""LLaDA-8B-Instruct's network in pure torch: loads the released checkpoint without trust_remote_code.

LLaDA (GSAI-ML/LLaDA-8B-Base and -Instruct) is a masked diffusion LM: a Llama-shaped transformer with
FULL (bidirectional) attention, no causal mask anywhere. NO LOGIT SHIFT: the logits at position i predict
the token at position i (a masked position is filled from its own row); Dream/DiffuCoder's logits at i
predict i+1, LLaDA's do not.

Written from reading the released `modeling_llada.py` and `configuration_llada.py` of the Hugging Face
repo GSAI-ML/LLaDA-8B-Instruct and its `config.json`, as mirrored in ZHZisZZ/dllm-trainer
(dllm/pipelines/llada/models/, commit 03270de7); no code is imported or copied. ML-GSAI/LLaDA's EVAL.md says
the Hugging Face `modeling_llada.py` was updated in October 2025 to honour `attention_mask`; that revision
is what this follows (the February 2025 file passed attn_mask=None, i.e. ignored padding).
The math follows `LLaDAModel.forward` with a `LLaDALlamaBlock` (block_type "llama"):

    x = wte(ids)                                     (x * sqrt(d_model) only if input_emb_norm)
    per block:  h = attn_norm(x); q, k, v = q_proj(h), k_proj(h), v_proj(h)
                q, k: RoPE (rotate_half on the two halves of the full head dim, sin/cos of float32
                      positions 0..L-1, applied in float32 when rope_full_precision, cast back)
                x = x + attn_out(SDPA(q, k, v) with scale 1/sqrt(head_dim), no causal mask;
                                 k/v heads repeat_interleave'd up to n_heads when n_kv_heads < n_heads)
                h = ff_norm(x);  x = x + ff_out(silu(ff_proj(h)) * up_proj(h))
    logits = ff_out(ln_f(x))   (F.linear with wte.weight when weight_tying; * 1/sqrt(d_model) if scale_logits)
    RMSNorm: in float32 x * rsqrt(mean(x^2) + eps), cast back to the input dtype, THEN weight * x (+ bias).

Padding: an `attention_mask` [B, L] with 0 on (left) padding adds finfo(dtype).min to the scores of padded
KEYS only (as the release does), so real positions never see padding; padded queries still compute rows.
Positions: the release applies RoPE to positions 0..L-1 of the whole padded sequence and does NOT shift
them past the padding; that is the default here too. RoPE scores depend only on the difference of two
positions and padded keys are invisible, so a row's real-position logits are the same alone or left-padded
(up to float rounding). `position_ids` may be passed to override the positions.

Dropout (attention, residual, embedding) is applied as the release places it, only in train mode; the
released config sets all three to 0.0. Not supported (a ValueError names the key): block types other than
"llama", layer norms other than "rms", activations other than "silu", ALiBi / no RoPE (the release asserts
both for MDM), q/k layer norms, block_group_size != 1 (its weights live under other names).

KV cache (the fast decoder's, not the release's autoregressive one): `past_key_values` hands every layer's
keys (after RoPE) and values to an `update(k, v, layer_idx)` object that records them or puts cached ones
before them (see LladaModel); bidirectional attention does not care about key order, the key mask follows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerFast

from .padding import position_ids_from_mask

MODEL_TYPE = "llada"
ARCHITECTURE = "LLaDAModelLM"
MASK_TOKEN = "<|mdm_mask|>"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Keys the released config.json always has and a model cannot be built without.
REQUIRED_KEYS = (
    "d_model", "n_heads", "n_layers", "vocab_size", "mask_token_id",
    "block_type", "layer_norm_type", "activation_type", "rope", "weight_tying",
)
# Keys written by the release's LLaDAConfig / PretrainedConfig that we validate ourselves or regenerate.
_HEADER_KEYS = ("model_type", "architectures")


@dataclass
class LladaConfig:
    """The released LLaDA config.json (configuration_llada.py's ModelConfig + LLaDAConfig.use_cache).

    Defaults are the released ModelConfig defaults; keys of the file that are not fields (auto_map,
    transformers_version, ...) are kept in `extra` and written back by `to_dict`.
    """

    d_model: int = 768
    n_heads: int = 12
    n_kv_heads: int | None = None
    n_layers: int = 12
    mlp_ratio: int = 4
    mlp_hidden_size: int | None = None
    activation_type: str = "swiglu"
    block_type: str = "sequential"
    block_group_size: int = 1
    alibi: bool = False
    alibi_bias_max: float = 8.0
    rope: bool = False
    rope_full_precision: bool = True
    flash_attention: bool = False
    attention_dropout: float = 0.1
    multi_query_attention: bool | None = None
    attention_layer_norm: bool = False
    residual_dropout: float = 0.1
    embedding_dropout: float = 0.1
    input_emb_norm: bool = False
    layer_norm_type: str = "default"
    layer_norm_with_affine: bool = True
    rms_norm_eps: float = 1e-05
    attention_layer_norm_with_affine: bool = True
    max_sequence_length: int = 1024
    rope_theta: float = 10000.0
    include_qkv_bias: bool | None = False
    include_bias: bool = False
    bias_for_layer_norm: bool | None = None
    scale_logits: bool = False
    vocab_size: int = 50257
    embedding_size: int | None = 50304
    weight_tying: bool = True
    eos_token_id: int = 50256
    pad_token_id: int = 50256
    mask_token_id: int | None = 50256
    init_device: str | None = None
    init_fn: str = "normal"
    init_std: float = 0.02
    init_cutoff_factor: float | None = None
    precision: str | None = None
    use_cache: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict) -> LladaConfig:
        """A released config.json dict -> LladaConfig; ValueError naming the key on anything unusable."""
        if not isinstance(raw, dict):
            raise ValueError(f"LLaDA config must be a dict, got {type(raw).__name__}")
        if raw.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"LLaDA config: model_type is {raw['model_type']!r}, expected {MODEL_TYPE!r}")
        missing = [key for key in REQUIRED_KEYS if key not in raw]
        if missing:
            raise ValueError(f"LLaDA config: missing required key(s) {missing}")
        names = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values, extra = {}, {}
        for key, value in raw.items():
            if key in names:
                values[key] = _checked(key, value, cls.__annotations__[key])
            elif key not in _HEADER_KEYS:
                extra[key] = value
        config = cls(**values, extra=extra)
        config.validate()
        return config

    def to_dict(self) -> dict:
        """The config.json the release writes: every ModelConfig key, model_type, architectures, extras."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        out["model_type"] = MODEL_TYPE
        out["architectures"] = [ARCHITECTURE]
        return dict(sorted(out.items()))

    @property
    def effective_n_kv_heads(self) -> int:
        """As the release: n_kv_heads, else 1 under multi_query_attention, else n_heads."""
        if self.n_kv_heads is None:
            return 1 if self.multi_query_attention else self.n_heads
        if self.multi_query_attention is None:
            return self.n_kv_heads
        expected = 1 if self.multi_query_attention else self.n_heads
        if self.n_kv_heads != expected:
            raise ValueError(
                f"LLaDA config: n_kv_heads={self.n_kv_heads} contradicts multi_query_attention={self.multi_query_attention}"
            )
        return expected

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def num_embeddings(self) -> int:
        return self.embedding_size or self.vocab_size

    @property
    def norm_bias(self) -> bool:
        return bool(self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm)

    @property
    def qkv_bias(self) -> bool:
        return bool(self.include_bias or self.include_qkv_bias)

    def validate(self) -> None:
        """ValueError naming the key for any setting this implementation does not reproduce."""
        supported = {
            "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
            "rope": True, "alibi": False, "attention_layer_norm": False, "block_group_size": 1,
            "layer_norm_with_affine": True,
        }
        for key, wanted in supported.items():
            if getattr(self, key) != wanted:
                raise ValueError(f"LLaDA config: {key}={getattr(self, key)!r} is not supported (only {wanted!r})")
        for key in ("d_model", "n_heads", "n_layers", "vocab_size", "ffn_hidden_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"LLaDA config: {key} must be >= 1, got {getattr(self, key)}")
        if self.d_model % self.n_heads or self.head_dim % 2:
            raise ValueError(f"LLaDA config: d_model={self.d_model} must split into n_heads={self.n_heads} even head dims")
        kv_heads = self.effective_n_kv_heads
        if kv_heads < 1 or self.n_heads % kv_heads:
            raise ValueError(f"LLaDA config: n_kv_heads={kv_heads} must divide n_heads={self.n_heads}")
        if self.num_embeddings < self.vocab_size:
            raise ValueError(f"LLaDA config: embedding_size={self.embedding_size} is below vocab_size={self.vocab_size}")
        if self.mask_token_id is None or not 0 <= self.mask_token_id < self.num_embeddings:
            raise ValueError(f"LLaDA config: mask_token_id={self.mask_token_id} is not an embedding row")


def _checked(key: str, value, annotation: str):
    """A config value checked against its field's annotation ("int | None", "float", ...)."""
    kinds = annotation.replace(" ", "").split("|")
    if value is None:
        if "None" in kinds:
            return None
        raise ValueError(f"LLaDA config: {key} must not be null")
    if "bool" in kinds:
        if isinstance(value, bool):
            return value
    elif "int" in kinds:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif "float" in kinds:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ValueError(f"LLaDA config: {key}={value!r} is not of type {annotation}")


@dataclass
class LladaOutput:
    logits: torch.Tensor  # [B, L, V]; row i predicts token i (no shift)


class _RMSNorm(nn.Module):
    """RMSLayerNorm of the release: normalise in float32, cast back, then weight * x (+ bias)."""

    def __init__(self, config: LladaConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.weight = nn.Parameter(torch.ones(config.d_model))
        self.bias = nn.Parameter(torch.zeros(config.d_model)) if config.norm_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            normed = x.float()
            normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + self.eps)
        normed = normed.to(x.dtype)
        return self.weight * normed if self.bias is None else self.weight * normed + self.bias


def rope_tables(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [B or 1, L] -> (sin, cos) float32 [B or 1, 1, L, head_dim], frequencies repeated twice."""
    device = position_ids.device
    with torch.autocast(device.type, enabled=False):
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float) / head_dim))
        freqs = position_ids.float()[..., None] * inv_freq  # [B, L, head_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, L, head_dim]
        return angles.sin(), angles.cos()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _apply_rope(t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, full_precision: bool) -> torch.Tensor:
    """t [B, H, L, D] -> rotated t in t's dtype (computed in float32 when full_precision, as the release)."""
    work = t.float() if full_precision else t
    with torch.autocast(t.device.type, enabled=False):
        out = work * cos.to(work.dtype) + _rotate_half(work) * sin.to(work.dtype)
    return out.to(t.dtype)


class _LlamaBlock(nn.Module):
    """LLaDALlamaBlock: pre-norm attention and SwiGLU MLP, each with a residual."""

    def __init__(self, config: LladaConfig):
        super().__init__()
        self.config = config
        d_model, kv_dim = config.d_model, config.effective_n_kv_heads * config.head_dim
        bias = config.include_bias
        self.attn_norm = _RMSNorm(config)
        self.ff_norm = _RMSNorm(config)
        self.q_proj = nn.Linear(d_model, d_model, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=config.qkv_bias)
        self.attn_out = nn.Linear(d_model, d_model, bias=bias)
        self.ff_proj = nn.Linear(d_model, config.ffn_hidden_size, bias=bias)
        self.up_proj = nn.Linear(d_model, config.ffn_hidden_size, bias=bias)
        self.ff_out = nn.Linear(config.ffn_hidden_size, d_model, bias=bias)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, bias: torch.Tensor | None,
                kv=None, layer_idx: int = 0) -> torch.Tensor:
        cfg = self.config
        batch, length, d_model = x.shape
        normed = self.attn_norm(x)
        q = self.q_proj(normed).view(batch, length, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(normed).view(batch, length, cfg.effective_n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(normed).view(batch, length, cfg.effective_n_kv_heads, cfg.head_dim).transpose(1, 2)
        q = _apply_rope(q, sin, cos, cfg.rope_full_precision)
        k = _apply_rope(k, sin, cos, cfg.rope_full_precision)
        if kv is not None:  # records this layer's keys / values, or puts the cached ones before them
            k, v = kv.update(k, v, layer_idx)
        groups = cfg.n_heads // cfg.effective_n_kv_heads
        if groups > 1:  # kv head j serves query heads j*groups .. (j+1)*groups-1
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        dropout = cfg.attention_dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=False)
        att = att.transpose(1, 2).reshape(batch, length, d_model)
        x = x + self._residual_dropout(self.attn_out(att))
        normed = self.ff_norm(x)
        hidden = F.silu(self.ff_proj(normed)) * self.up_proj(normed)
        return x + self._residual_dropout(self.ff_out(hidden))

    def _residual_dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.config.residual_dropout, self.training) if self.config.residual_dropout else x


class _LladaTransformer(nn.Module):
    """The release's LLaDAModel: holds `transformer` = {wte, ln_f, blocks, ff_out unless tied}."""

    def __init__(self, config: LladaConfig):
        super().__init__()
        modules = {
            "wte": nn.Embedding(config.num_embeddings, config.d_model),
            "ln_f": _RMSNorm(config),
            "blocks": nn.ModuleList(_LlamaBlock(config) for _ in range(config.n_layers)),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.num_embeddings, bias=config.include_bias)
        self.transformer = nn.ModuleDict(modules)


class LladaModel(nn.Module):
    """LLaDAModelLM's network; state_dict keys are the released ones (`model.transformer.wte.weight`, ...).

    forward(input_ids [B, L], attention_mask [B, L] of 0/1 or None, position_ids [B or 1, L] or None)
    -> LladaOutput(logits [B, L, num_embeddings]), unshifted: logits[:, i] predict input position i.

    Two options serve the fast decoder (fast_decoding.py) and leave the forward above untouched when unset:
      - past_key_values: an object with `update(k, v, layer_idx) -> (k, v)` (fast_decoding's `_LayerKV`), called
        by every layer with its keys (after RoPE, before the grouped kv heads are repeated) and values of the
        fed positions; what it returns is attended to. A recording cache returns them unchanged (the exact
        forward); a replaying one puts C cached positions before them, and attention_mask is then the key mask
        [B, C + L] in that order.
      - logits_to_keep: indices [N] (or an int n: the last n) of the positions whose logits are returned
        ([B, N, V]); the others skip the head, which is most of the cost at LLaDA-8B's 126k vocabulary.
    """

    def __init__(self, config: LladaConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.model = _LladaTransformer(config)

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        logits_to_keep: int | torch.Tensor | None = None,
    ) -> LladaOutput:
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"LladaModel: input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        transformer = self.model.transformer
        x = transformer.wte(input_ids)
        if cfg.input_emb_norm:
            x = x * (cfg.d_model ** 0.5)
        if self.training and cfg.embedding_dropout:
            x = F.dropout(x, cfg.embedding_dropout, True)
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device)[None]  # the release: 0..L-1, no shift
        elif position_ids.dim() != 2 or position_ids.shape[-1] != length or position_ids.shape[0] not in (1, batch):
            raise ValueError(f"LladaModel: position_ids must be [B or 1, {length}], got {tuple(position_ids.shape)}")
        sin, cos = rope_tables(position_ids.to(input_ids.device), cfg.head_dim, cfg.rope_theta)
        bias = self._padding_bias(attention_mask, input_ids.shape, x.dtype, cached=past_key_values is not None)
        for index, block in enumerate(transformer.blocks):
            x = block(x, sin, cos, bias, past_key_values, index)
        if logits_to_keep is not None:
            x = x[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else x[:, logits_to_keep]
        x = transformer.ln_f(x)
        logits = F.linear(x, transformer.wte.weight) if cfg.weight_tying else transformer.ff_out(x)
        if cfg.scale_logits:
            logits = logits * (1 / math.sqrt(cfg.d_model))
        return LladaOutput(logits=logits)

    @staticmethod
    def _padding_bias(attention_mask: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype,
                      cached: bool = False) -> torch.Tensor | None:
        """attention_mask [B, K] 0/1 over the keys (K = L, or more with a cache) -> additive key bias
        [B, 1, 1, K] (finfo.min on padding), or None."""
        if attention_mask is None:
            return None
        (batch, length), keys = shape, attention_mask.shape[-1]
        wrong_keys = keys < length or (keys > length and not cached)
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or wrong_keys:
            raise ValueError(f"LladaModel: attention_mask must be {tuple(shape)}, got {tuple(attention_mask.shape)}")
        if not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("LladaModel: attention_mask must hold only 0 (padding) and 1 (real token)")
        keep = attention_mask.bool()
        if keep.all():
            return None
        bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
        return bias[:, None, None, :]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc}") from exc


def is_llada_dir(path: str | Path) -> bool:
    """True when path/config.json (or `path` itself, a config file) says model_type "llada" or lists LLaDAModelLM
    among its architectures."""
    config_file = Path(path) if Path(path).is_file() else Path(path) / CONFIG_FILE
    if not config_file.is_file():
        return False
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(raw, dict):
        return False
    return raw.get("model_type") == MODEL_TYPE or ARCHITECTURE in (raw.get("architectures") or [])


def _read_weights(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """model.safetensors, else model.safetensors.index.json + its shards (each tensor in exactly one shard)."""
    single = path / WEIGHTS_FILE
    if single.is_file():
        return load_file(str(single), device=str(device))
    index_file = path / INDEX_FILE
    if not index_file.is_file():
        raise ValueError(f"load_llada: {str(path)!r} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    weight_map = _read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"load_llada: {INDEX_FILE} in {str(path)!r} has no weight_map")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = path / shard
        if not shard_file.is_file():
            raise ValueError(f"load_llada: shard {shard!r} named in {INDEX_FILE} is missing")
        for key, tensor in load_file(str(shard_file), device=str(device)).items():
            if key in tensors:
                raise ValueError(f"load_llada: weight {key!r} is stored in more than one shard")
            if weight_map.get(key) != shard:
                raise ValueError(f"load_llada: weight {key!r} in shard {shard!r} disagrees with {INDEX_FILE}")
            tensors[key] = tensor
    absent = sorted(set(weight_map) - set(tensors))
    if absent:
        raise ValueError(f"load_llada: {INDEX_FILE} lists weights no shard holds: {absent[:5]}")
    return tensors


def _check_weights(model: LladaModel, tensors: dict[str, torch.Tensor]) -> None:
    """One ValueError naming every missing, unexpected or mis-shaped weight."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(
        f"{key}: {tuple(tensors[key].shape)} (expected {expected[key]})"
        for key in set(expected) & set(tensors)
        if tuple(tensors[key].shape) != expected[key]
    )
    problems = [
        f"{label} ({len(items)}): {items[:8]}"
        for label, items in (("missing weights", missing), ("unexpected weights", unexpected), ("wrong shapes", shapes))
        if items
    ]
    if problems:
        raise ValueError("load_llada: checkpoint does not match the LLaDA config; " + "; ".join(problems))


def _setup_tokenizer(tokenizer: PreTrainedTokenizerFast, config: LladaConfig) -> PreTrainedTokenizerFast:
    """Make the token at config.mask_token_id the mask token (it must be <|mdm_mask|> when that exists)."""
    vocab = tokenizer.get_vocab()
    mask_id = config.mask_token_id
    if MASK_TOKEN in vocab and vocab[MASK_TOKEN] != mask_id:
        raise ValueError(f"LLaDA tokenizer: {MASK_TOKEN} has id {vocab[MASK_TOKEN]}, config mask_token_id is {mask_id}")
    token = tokenizer.convert_ids_to_tokens(mask_id)
    if token is None or vocab.get(token) != mask_id:
        raise ValueError(f"LLaDA tokenizer: no token has the config's mask_token_id {mask_id}")
    if tokenizer.mask_token is not None and tokenizer.mask_token_id != mask_id:
        raise ValueError(f"LLaDA tokenizer: mask token {tokenizer.mask_token!r} is not id {mask_id}")
    tokenizer.mask_token = token
    if tokenizer.pad_token is None:
        pad = tokenizer.convert_ids_to_tokens(config.pad_token_id) if config.pad_token_id < len(tokenizer) else None
        tokenizer.pad_token = pad if pad is not None else tokenizer.eos_token
    if len(tokenizer) > config.num_embeddings:
        raise ValueError(f"LLaDA tokenizer: {len(tokenizer)} tokens but only {config.num_embeddings} embedding rows")
    return tokenizer


def load_llada(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[LladaModel, PreTrainedTokenizerFast]:
    """A released-format LLaDA directory -> (LladaModel in eval mode, tokenizer with its mask token set).

    dtype None keeps the stored dtype (bf16 for the release); the weights must match the config exactly.
    """
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ValueError(f"load_llada: {str(path)!r} has no {CONFIG_FILE}")
    config = LladaConfig.from_dict(_read_json(config_file))
    tensors = _read_weights(path, device)
    with torch.device("meta"):
        model = LladaModel(config)
    _check_weights(model, tensors)
    if dtype is not None:
        tensors = {key: value.to(dtype) for key, value in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    tokenizer = _setup_tokenizer(PreTrainedTokenizerFast.from_pretrained(str(path)), config)
    return model.eval(), tokenizer


def save_llada(model: LladaModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Write config.json (released format), model.safetensors (released names) and the tokenizer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(path))
    return path


def forward_from_mask(model: LladaModel, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> LladaOutput:
    """The model's forward with positions from the padding mask (`position_ids_from_mask`, as Dream's forwards
    take them), so a row's logits do not depend on its left padding; an unpadded row gets the release's 0..L-1."""
    positions = None if attention_mask is None else position_ids_from_mask(attention_mask.to(input_ids.device))
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)


def tiny_llada_config(sizes: dict, tokenizer: PreTrainedTokenizerFast) -> LladaConfig:
    """A tiny LLaDA's config from Qwen2-named sizes (hidden_size, num_attention_heads, num_key_value_heads,
    num_hidden_layers, intermediate_size, max_position_embeddings, rope_theta) over `tokenizer`: llama blocks,
    untied head, no biases, no dropout, the tokenizer's mask, end and pad ids. RoPE theta: `rope_theta`, else
    10000, what the tiny Dream gets (Qwen2's default); the release's 500000 is for 4096-token contexts."""
    return LladaConfig.from_dict(dict(
        d_model=sizes["hidden_size"], n_heads=sizes["num_attention_heads"],
        n_kv_heads=sizes.get("num_key_value_heads", sizes["num_attention_heads"]), n_layers=sizes["num_hidden_layers"],
        mlp_hidden_size=sizes["intermediate_size"], activation_type="silu", block_type="llama",
        layer_norm_type="rms", rope=True, rope_theta=float(sizes.get("rope_theta", 10000.0)), include_bias=False,
        weight_tying=False, vocab_size=len(tokenizer), embedding_size=len(tokenizer),
        max_sequence_length=sizes.get("max_position_embeddings", 1024), attention_dropout=0.0,
        residual_dropout=0.0, embedding_dropout=0.0, mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def qwen2_pretokenization(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Give a BPE tokenizer Qwen2's normalizer and pre-tokenizer (NFC; Qwen2's split regex, digits one by one;
    then byte-level), in place. The tiny Dream's tokenizer gets exactly this when its directory is reloaded
    (AutoTokenizer resolves model_type qwen2 to Qwen2Tokenizer, which rebuilds the pipeline over the trained
    vocab and merges); the tiny LLaDA's directory is reloaded as a plain PreTrainedTokenizerFast, which keeps
    the trained ByteLevel pre-tokenizer (numbers as multi-digit BPE tokens: ' 21' + '7'), and the warm start
    then fails to learn to copy constants. Set here, the pipeline is saved in tokenizer.json and every reload
    keeps it, so both families tokenize every prompt and answer identically."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tokenizer


def build_tiny_llada(spec: dict, dtype: torch.dtype | None = None) -> tuple[LladaModel, PreTrainedTokenizerFast]:
    """A tiny LLaDA from the spec `actors.dllm.build_model` takes ({"config": Qwen2-named sizes, "tokenizer",
    "seed"}): `tiny_llada_config` over this project's BPE tokenizer (its `<|mask|>` as the mask token), weights
    drawn N(0, init_std) as the release's "normal" init does and norms at 1, seeded inside fork_rng."""
    from .tokenizer import build_tokenizer

    unknown = set(spec) - {"config", "tokenizer", "seed"}
    if unknown or "config" not in spec or "tokenizer" not in spec:
        raise ValueError(f"tiny LLaDA spec: needs 'config' and 'tokenizer' (and 'seed'), got {sorted(spec)}")
    tokenizer = qwen2_pretokenization(build_tokenizer(spec["tokenizer"]))
    config = tiny_llada_config(spec["config"], tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("seed", 0)))
        model = LladaModel(config)
        for param in model.parameters():
            if param.dim() > 1:
                nn.init.normal_(param, std=config.init_std)
            else:
                nn.init.ones_(param)
    if dtype is not None:
        model.to(dtype)
    return model, tokenizer
