"""Masked-diffusion SFT loss on completions, for warm-starting tiny models before RL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import completion_logits


def sft_loss(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    seed: int,
    mask_id: int | None = None,
    eps: float = 1e-3,
    logits_fn=completion_logits,
) -> torch.Tensor:
    """input_ids [B, L], attention_mask [B, L], completion_mask bool [B, K] (trained positions of input_ids[:, -K:]).

    Per row t ~ U(eps, 1); each trained completion token is masked with prob t; loss = sum over masked
    tokens of CE(shifted logits, token) / t, divided by the number of trained completion tokens.
    Masks are a pure function of (seed, shape) through a local CPU generator. logits_fn: the family's completion
    logits (actors.policy; Dream's shifted head by default).
    """
    batch, completion_len = completion_mask.shape
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    device = input_ids.device
    generator = torch.Generator().manual_seed(int(seed))
    t = (eps + (1 - eps) * torch.rand(batch, generator=generator)).to(device)  # [B]
    draw = torch.rand((batch, completion_len), generator=generator).to(device)  # [B, K]
    trained = completion_mask.bool().to(device)
    masked = trained & (draw < t[:, None])  # [B, K]
    noisy = input_ids.clone()
    noisy[:, -completion_len:] = noisy[:, -completion_len:].masked_fill(masked, mask_id)
    logits = logits_fn(model, noisy, attention_mask, completion_len)  # [B, K, V]
    targets = input_ids[:, -completion_len:]  # [B, K]
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # [B, K]
    weighted = token_loss * masked.float() / t[:, None]
    return weighted.sum() / trained.sum().clamp(min=1)
