"""Pure-torch DiffuCoder core: the bidirectional Qwen2 dLLM, its decoder, score estimators and GRPO math.

Imports torch, transformers and tokenizers only (no Ray, no Redis), so the math is testable alone.
"""

from .arness import ar_ness
from .decoders import DECODERS, DecoderSettings, decode
from .decoding import GenerateResult, generate
from .fast_decoding import CACHES, generate_fast
from .estimators import ScoreResult, token_scores
from .grpo import grpo_advantages, grpo_loss, update_reference
from .model import DiffusionQwen2ForCausalLM, build_model, diffusion_logits, save_model
from .padding import attention_inputs, completion_mask_from_ids, left_pad
from .schedule import lr_factor, lr_lambda
from .seeding import derived_seed
from .sft import sft_loss
from .tokenizer import build_tokenizer, train_tokenizer

__all__ = [
    "CACHES",
    "DECODERS",
    "DecoderSettings",
    "DiffusionQwen2ForCausalLM",
    "GenerateResult",
    "ScoreResult",
    "ar_ness",
    "attention_inputs",
    "build_model",
    "build_tokenizer",
    "completion_mask_from_ids",
    "decode",
    "derived_seed",
    "diffusion_logits",
    "generate",
    "generate_fast",
    "grpo_advantages",
    "grpo_loss",
    "left_pad",
    "lr_factor",
    "lr_lambda",
    "save_model",
    "sft_loss",
    "token_scores",
    "train_tokenizer",
    "update_reference",
]
