"""GRPO pieces (ALGORITHM.md section 4): group advantages, the clipped loss with k3 KL, reference updates."""

from __future__ import annotations

import torch

BASELINES = ("mean", "loo")
REFERENCE_MODES = ("hard", "soft")


def grpo_advantages(rewards: torch.Tensor, baseline: str = "mean", scale_std: bool = False) -> torch.Tensor:
    """rewards [N, G] (N prompts, G completions each) -> advantages [N, G].

    mean: r_i - mean(r) (paper); loo: r_i - mean_{j != i} r_j (released code). scale_std divides by the
    group std + 1e-4 (off by default in both).
    """
    if baseline not in BASELINES:
        raise ValueError(f"advantage baseline {baseline!r} is not one of {', '.join(BASELINES)}")
    rewards = rewards.float()
    group = rewards.shape[1]
    if baseline == "mean":
        advantages = rewards - rewards.mean(dim=1, keepdim=True)
    else:
        if group < 2:
            raise ValueError(f"leave-one-out advantages need a group of at least 2 completions, got {group}")
        others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (group - 1)
        advantages = rewards - others_mean
    if scale_std:
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + 1e-4)
    return advantages


def grpo_loss(
    scores: torch.Tensor,
    old_scores: torch.Tensor,
    ref_scores: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    eps: float = 0.5,
    beta: float = 0.01,
    tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """scores, old_scores, ref_scores [B, K], advantages [B], completion_mask [B, K] -> (loss, stats).

    L_k = -min(ratio_k A, clip(ratio_k, 1-eps, 1+eps) A) + beta (exp(s_ref - s) - (s_ref - s) - 1),
    ratio_k = exp(s_k - s_old_k); loss = sum_k L_k m_k / N.

    N = `tokens` when given: the completion-token count of the whole step, so that the micro-batch losses
    of a step add up to the step's token mean whatever the split. N = None: this micro-batch's own count
    max(1, sum_k m_k), DiffuCoder's released rule. stats: kl (the k3 term), clip_fraction and ratio_mean,
    each summed over the masked tokens and divided by the same N (python floats).
    """
    if beta != 0 and ref_scores is None:
        raise ValueError("grpo_loss: ref_scores is required when beta != 0")
    mask = completion_mask.float()  # [B, K]
    tokens = mask.sum().clamp(min=1) if tokens is None else torch.tensor(float(tokens))
    advantage = advantages.float()[:, None]  # [B, 1]
    ratio = torch.exp(scores - old_scores.detach())  # [B, K]
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
    per_token = -torch.min(ratio * advantage, clipped * advantage)  # [B, K]
    kl = torch.zeros_like(scores)
    if ref_scores is not None:
        delta = ref_scores.detach() - scores
        kl = torch.exp(delta) - delta - 1
    if beta != 0:
        per_token = per_token + beta * kl
    loss = (per_token * mask).sum() / tokens
    is_clipped = ((ratio < 1 - eps) & (advantage < 0)) | ((ratio > 1 + eps) & (advantage > 0))
    stats = {
        "kl": float((kl.detach() * mask).sum() / tokens),
        "clip_fraction": float((is_clipped.float() * mask).sum() / tokens),
        "ratio_mean": float((ratio.detach() * mask).sum() / tokens),
    }
    return loss, stats


@torch.no_grad()
def update_reference(ref_model: torch.nn.Module, policy_model: torch.nn.Module, mode: str = "hard", mix: float = 0.6) -> None:
    """hard: ref <- theta; soft: ref <- mix * theta + (1 - mix) * ref (parameters matched by name)."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference update mode {mode!r} is not one of {', '.join(REFERENCE_MODES)}")
    policy = dict(policy_model.named_parameters())
    for name, ref_param in ref_model.named_parameters():
        if name not in policy:
            raise ValueError(f"update_reference: policy has no parameter {name!r}")
        theta = policy[name].detach().to(ref_param.dtype)
        if mode == "hard":
            ref_param.copy_(theta)
        else:
            ref_param.mul_(1 - mix).add_(theta, alpha=mix)
