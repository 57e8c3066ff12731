"""A Policy: everything that differs between model families, in one place (issue 22's seam).

Three families:
  - dream (Dream / DiffuCoder, and this project's DiffusionQwen2ForCausalLM): a bidirectional Qwen2 with the
    shifted head, the logits at position i predict token i + 1 (actors/dllm/model.py);
  - llada (LLaDA-8B-Instruct's release, actors/dllm/llada.py): no shift, the logits at position i predict
    token i; positions come from the padding mask (`forward_from_mask`), so a row's scores do not depend on its
    batch-mates' lengths (an unpadded row gets the release's 0..L-1);
  - causal (a Qwen2ForCausalLM, the AR-GRPO baseline, actors/causal.py): exact log-probs, vLLM rollouts.

A Policy detects nothing itself: `family_of(model_dir)` reads a directory's config.json and `policy_for` maps a
family name or a directory to its Policy. Each Policy loads, saves and builds its tiny model; gives the logits
[B, K, V] that predict the K completion tokens (`completion_logits`); scores tokens for the learner
(`token_scores`: the diffusion estimators of actors/dllm/estimators.py under the family's head, or the exact
causal log-probs); computes the warm start's SFT loss (`sft_loss`); and builds the engine that generates
(`engine`: actors/engines.py, the family's decoders or vLLM). The learner, the rollout worker, `diffurl eval`,
the run's initial tiny model and the demo's warm start call these and never ask which family they hold.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from actors.causal import build_causal_model, causal_sft_loss, causal_token_logprobs, completion_token_logits, model_kind
from actors.decoder_settings import SettingsError
from actors.dllm.decoders import decode
from actors.dllm.estimators import ScoreResult, token_scores
from actors.dllm.llada import build_tiny_llada, forward_from_mask, is_llada_dir, load_llada, save_llada
from actors.dllm.llada_decoding import check_llada_settings, decode_llada
from actors.dllm.model import build_model, completion_logits, save_model
from actors.dllm.padding import completion_mask_from_ids
from actors.dllm.sft import sft_loss
from actors.engines import EngineOptions, TorchEngine, VllmEngine

FAMILIES = ("dream", "llada", "causal")


class Policy(ABC):
    """The family-specific operations: each family defines the abstract ones."""

    family: str = ""
    name: str = ""  # as people write it, for messages
    # token_scores are exact (no mask draws): the old policy's scores are the same in every iteration of a step
    exact_scores: bool = False
    gradient_checkpointing: bool = True  # the model has gradient_checkpointing_enable()

    @abstractmethod
    def load(self, path: str | Path, dtype: torch.dtype | None = None) -> tuple:
        """A model directory -> (model in eval mode, tokenizer)."""

    @abstractmethod
    def save(self, model, tokenizer, path: str | Path) -> None:
        """Write a directory that `load` reads back identically."""

    @abstractmethod
    def build_tiny(self, spec: dict) -> tuple:
        """A tiny randomly initialised model of this family from `build_model`'s spec -> (model, tokenizer)."""

    @abstractmethod
    def completion_logits(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          completion_len: int) -> torch.Tensor:
        """input_ids [B, L] ending in K completion positions -> the logits [B, K, V] that predict them."""

    @abstractmethod
    def token_scores(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor, *, estimator: str, seed: int | list[int],
                     mask_id: int | None = None) -> ScoreResult:
        """Per-token scores [B, K] of the completion tokens for the learner (`.scores`)."""

    @abstractmethod
    def sft_loss(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_ids: torch.Tensor,
                 *, seed: int, end_ids: list[int]) -> torch.Tensor:
        """The warm start's loss on prompt ++ demonstration rows (completion_ids [B, K], padded after its end)."""

    @abstractmethod
    def engine(self, model_dir: str | Path, settings, *, device: str = "cpu",
               options: EngineOptions = EngineOptions()):
        """The engine (actors/engines.py) that generates with this policy for DecoderSettings `settings`."""

    def check_settings(self, settings) -> None:
        """ValueError when this family's engine cannot do what DecoderSettings `settings` asks."""


class DiffusionPolicy(Policy):
    """A masked diffusion LM: the shared estimators and SFT loss under the family's head, its own decoders."""

    def mask_id(self, model) -> int:
        """The model's mask token id (both dLLM families keep it in their config)."""
        return model.config.mask_token_id

    @abstractmethod
    def decode(self, model, tokenizer, prompts: list, settings, *, temperature: float, seeds: list[int]):
        """One batched call of the family's decoder for DecoderSettings `settings` -> GenerateResult."""

    def token_scores(self, model, input_ids, attention_mask, completion_mask, *, estimator, seed, mask_id=None):
        """The estimator's per-token scores [B, K] (actors.dllm.estimators.token_scores: coupled, decoupled, d1)
        under this family's head; mask_id defaults to the model's."""
        return token_scores(model, input_ids, attention_mask, completion_mask, estimator=estimator, seed=seed,
                            mask_id=self.mask_id(model) if mask_id is None else mask_id,
                            logits_fn=self.completion_logits)

    def sft_loss(self, model, input_ids, attention_mask, completion_ids, *, seed, end_ids):
        """The masked-diffusion SFT loss over every completion position, the end filler included, so the model
        learns to end where a decoder cuts."""
        return sft_loss(model, input_ids, attention_mask, torch.ones_like(completion_ids, dtype=torch.bool),
                        seed=seed, mask_id=self.mask_id(model), logits_fn=self.completion_logits)

    def engine(self, model_dir, settings, *, device="cpu", options=EngineOptions()):
        return TorchEngine(self, model_dir, settings, device=device)


class DreamPolicy(DiffusionPolicy):
    family, name = "dream", "Dream"

    def load(self, path, dtype=None):
        return build_model(path, dtype=dtype)

    def save(self, model, tokenizer, path) -> None:
        save_model(model, tokenizer, path)

    def build_tiny(self, spec: dict) -> tuple:
        return build_model(spec)

    def completion_logits(self, model, input_ids, attention_mask, completion_len):
        return completion_logits(model, input_ids, attention_mask, completion_len)  # shifted: from L-K-1 to L-2

    def decode(self, model, tokenizer, prompts, settings, *, temperature, seeds):
        return decode(model, tokenizer, prompts, settings, temperature=temperature, seeds=seeds)

    def check_settings(self, settings) -> None:
        if settings.decoder == "reference" and settings.block_length is not None:
            raise SettingsError("block_length", settings.block_length, "Dream's reference decoder (the paper's) "
                                "decodes the whole canvas at once; blocks are for decoder=fast")


class LladaPolicy(DiffusionPolicy):
    family, name = "llada", "LLaDA"
    gradient_checkpointing = False  # LladaModel has none yet

    def load(self, path, dtype=None):
        return load_llada(path, dtype=dtype)

    def save(self, model, tokenizer, path) -> None:
        save_llada(model, tokenizer, path)

    def build_tiny(self, spec: dict) -> tuple:
        return build_tiny_llada(spec)

    def completion_logits(self, model, input_ids, attention_mask, completion_len):
        logits = forward_from_mask(model, input_ids, attention_mask).logits
        return logits[:, -completion_len:]  # no shift: position i predicts token i

    def decode(self, model, tokenizer, prompts, settings, *, temperature, seeds):
        return decode_llada(model, tokenizer, prompts, settings, temperature=temperature, seeds=seeds)

    def check_settings(self, settings) -> None:
        check_llada_settings(settings)


class CausalPolicy(Policy):
    """A causal Qwen2 (AR-GRPO): exact token log-probs, next-token SFT up to the end token, vLLM rollouts."""

    family, name = "causal", "causal Qwen2"
    exact_scores = True

    def load(self, path, dtype=None):
        return build_causal_model(path, dtype=dtype)

    def save(self, model, tokenizer, path) -> None:
        save_model(model, tokenizer, path)  # an HF directory vLLM loads too

    def build_tiny(self, spec: dict) -> tuple:
        return build_causal_model(spec)

    def completion_logits(self, model, input_ids, attention_mask, completion_len):
        return completion_token_logits(model, input_ids, attention_mask, completion_len)

    def token_scores(self, model, input_ids, attention_mask, completion_mask, *, estimator=None, seed=None,
                     mask_id=None):
        """log p(token_k | prompt, tokens_<k), exact: no masks, so `estimator` and `seed` do not apply."""
        scores = causal_token_logprobs(model, input_ids, attention_mask, completion_mask.shape[1])
        return ScoreResult(scores=scores, masks=(), t=1.0, weights=())

    def sft_loss(self, model, input_ids, attention_mask, completion_ids, *, seed, end_ids):
        """Next-token cross entropy up to and including the first end token (where vLLM stops)."""
        return causal_sft_loss(model, input_ids, attention_mask, completion_mask_from_ids(completion_ids, end_ids))

    def engine(self, model_dir, settings, *, device="cpu", options=EngineOptions()):
        return VllmEngine(self, model_dir, settings, device=device, options=options)


POLICIES = {"dream": DreamPolicy(), "llada": LladaPolicy(), "causal": CausalPolicy()}


def family_of(path: str | Path) -> str:
    """The family of a model directory, from its config.json (or of a config file, such as configs/shapes/'s):
    "llada", "dream" or "causal" (a plain Qwen2ForCausalLM); no config.json is a FileNotFoundError naming the
    path."""
    if is_llada_dir(path):
        return "llada"
    return "dream" if model_kind(path) == "diffusion" else "causal"  # FileNotFoundError without a config.json


def policy_for(path_or_family: str | Path) -> Policy:
    """A family name ("dream", "llada", "causal") or a model directory -> its Policy."""
    name = str(path_or_family)
    if name in POLICIES:
        return POLICIES[name]
    return POLICIES[family_of(path_or_family)]
