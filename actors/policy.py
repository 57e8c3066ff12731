"""A Policy: what differs between dLLM families, in one place (issue 22's seam, first step).

Two families of masked diffusion LM differ in how their checkpoints are stored and in how the head lines up
with the tokens it predicts:
  - dream (Dream / DiffuCoder, and this project's DiffusionQwen2ForCausalLM): a Qwen2 decoder with the
    shifted head, the logits at position i predict token i + 1 (actors/dllm/model.py);
  - llada (LLaDA-8B-Instruct's release, actors/dllm/llada.py): no shift, the logits at position i predict
    token i.
That difference lives here and nowhere else: `completion_logits` is each family's [B, K, V] slice of the
logits that predict the K completion tokens, and `token_scores` hands it to the shared estimators
(actors/dllm/estimators.py: coupled, decoupled, d1); `decode` is the family's decoder behind one call
(Dream: actors.dllm.decode; LLaDA: generate.py's, actors/dllm/llada_decoding.py). `family_of` reads a model
directory's config.json.

LLaDA forwards take positions from the padding mask (`forward_from_mask`), as Dream's do, so a row's
scores do not depend on its batch-mates' lengths; for an unpadded row these are the release's positions
0..L-1 and the logits are the release's.

The learner (load, scores, save), the torch rollout worker (load, decode), `diffurl eval` (load, decode), the
initial tiny model and the demo's warm start (build_tiny, the SFT loss under the family's head, save) go through
`policy_for(...)`, so a LLaDA directory as model.path, or model.tiny.family=llada, trains and evaluates with
LLaDA's decoder. Not yet through this module: the AR baseline (actors.causal, vLLM); the fast decoder is
Dream's only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from actors.causal import model_kind
from actors.dllm.decoders import decode
from actors.dllm.estimators import ScoreResult, token_scores
from actors.dllm.llada import build_tiny_llada, forward_from_mask, is_llada_dir, load_llada, save_llada
from actors.dllm.llada_decoding import check_llada_settings, decode_llada
from actors.dllm.model import build_model, completion_logits, save_model

FAMILIES = ("dream", "llada")


class Policy(ABC):
    """The family-specific operations: each family defines the abstract ones."""

    family: str = ""

    @abstractmethod
    def load(self, path: str | Path, dtype: torch.dtype | None = None) -> tuple:
        """A model directory -> (model in eval mode, tokenizer with its mask token)."""

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

    def mask_id(self, model) -> int:
        """The model's mask token id (both families keep it in their config)."""
        return model.config.mask_token_id

    @abstractmethod
    def decode(self, model, tokenizer, prompts: list, settings, *, temperature: float, seeds: list[int]):
        """One batched call of the family's decoder for DecoderSettings `settings` -> GenerateResult."""

    def check_settings(self, settings) -> None:
        """ValueError when this family's decoders cannot do what DecoderSettings `settings` asks."""

    def token_scores(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor, *, estimator: str, seed: int | list[int],
                     mask_id: int | None = None) -> ScoreResult:
        """The estimator's per-token scores [B, K] (actors.dllm.estimators.token_scores) under this family's head;
        mask_id defaults to the model's."""
        return token_scores(model, input_ids, attention_mask, completion_mask, estimator=estimator, seed=seed,
                            mask_id=self.mask_id(model) if mask_id is None else mask_id,
                            logits_fn=self.completion_logits)


class DreamPolicy(Policy):
    family = "dream"

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


class LladaPolicy(Policy):
    family = "llada"

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


POLICIES = {"dream": DreamPolicy(), "llada": LladaPolicy()}


def family_of(path: str | Path) -> str:
    """The dLLM family of a model directory, from its config.json: "llada" or "dream"; a causal Qwen2 (the
    AR baseline's) or a missing config.json is a ValueError / FileNotFoundError naming the path."""
    if is_llada_dir(path):
        return "llada"
    kind = model_kind(path)  # FileNotFoundError without a config.json
    if kind != "diffusion":
        raise ValueError(f"model: {str(path)!r} holds a {kind} model, not a diffusion LM (dream or llada)")
    return "dream"


def policy_for(path_or_family: str | Path) -> Policy:
    """A family name ("dream", "llada") or a model directory -> its Policy."""
    name = str(path_or_family)
    if name in POLICIES:
        return POLICIES[name]
    return POLICIES[family_of(path_or_family)]
