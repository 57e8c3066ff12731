"""Per-token scores of completions under a masked diffusion LM (ALGORITHM.md section 4).

- coupled:   t ~ U(0.2, 0.8), R ~ U(0, 1) per completion token; passes x_full (all completion masked,
             weight 1), x_t (R < t, weight 1/t), x_comp (R >= t, weight 1/(1-t)), one forward over 3B rows;
             s_k = (l_full(k) + [k in x_t ? l_t(k)/t : l_comp(k)/(1-t)]) / 2.
- decoupled: same passes and weights, m_a = R1 < t and m_b = R2 < 1-t with R1, R2 independent;
             s_k = (l_full(k) + m_a(k) l_a(k)/t + m_b(k) l_b(k)/(1-t)) / 2.
- d1:        one pass, completion fully masked, real prompt tokens masked with prob 0.15; s_k = l(k).

Masks are a pure function of (seed, shape) through a local CPU torch.Generator; prompt tokens are never
masked by coupled/decoupled. Forward passes use the same padding mask and positions as generation.
`seed` is one int for the whole batch (one t for all rows), or one seed per row: then row b's masks and
t_b are those of a batch of one drawn from seed[b], so a row's score does not depend on its batch-mates
(the learner's update is then independent of how a step is cut into micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import completion_logits

ESTIMATORS = ("coupled", "decoupled", "d1")
D1_PROMPT_MASK_PROB = 0.15


@dataclass
class ScoreResult:
    scores: torch.Tensor  # [B, K] per-token scores (differentiable)
    masks: tuple[torch.Tensor, ...]  # bool [B, K] per forward pass: completion positions masked in that pass
    t: float | torch.Tensor  # mask ratio (1.0 for d1); [B] with per-row seeds
    weights: tuple  # weight of each pass: (1, 1/t, 1/(1-t)) or (1,); tensors [B, 1] with per-row seeds
    prompt_mask: torch.Tensor | None = None  # d1 only: bool [B, P] prompt positions masked (P = L - K)


def draw_masks(
    estimator: str, seed: int, completion_shape: tuple[int, int], prompt_real: torch.Tensor | None = None
) -> tuple[tuple[torch.Tensor, ...], float, tuple[float, ...], torch.Tensor | None]:
    """(estimator, seed, [B, K]) -> (masks, t, weights, prompt_mask); prompt_real bool [B, P] is needed for d1."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
    generator = torch.Generator().manual_seed(int(seed))
    everything = torch.ones(completion_shape, dtype=torch.bool)  # [B, K]
    if estimator == "d1":
        if prompt_real is None:
            raise ValueError("d1 estimator needs prompt_real (the real-token mask of the prompt)")
        draw = torch.rand(prompt_real.shape, generator=generator)  # [B, P]
        prompt_mask = (draw < D1_PROMPT_MASK_PROB) & prompt_real.cpu().bool()
        return (everything,), 1.0, (1.0,), prompt_mask
    t = float(0.2 + 0.6 * torch.rand((), generator=generator))
    first = torch.rand(completion_shape, generator=generator)  # [B, K]
    if estimator == "coupled":
        masks = (everything, first < t, first >= t)
    else:
        second = torch.rand(completion_shape, generator=generator)  # [B, K], independent of `first`
        masks = (everything, first < t, second < 1 - t)
    return masks, t, (1.0, 1.0 / t, 1.0 / (1.0 - t)), None


def draw_row_masks(
    estimator: str, seeds: list[int], completion_shape: tuple[int, int], prompt_real: torch.Tensor | None = None
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
    """`draw_masks` row by row: row b is `draw_masks(estimator, seeds[b], (1, K), its real prompt tokens)`,
    so neither its batch-mates nor its left padding change a row's masks.

    Returns masks (bool [B, K] each), t [B], weights (tensors [B, 1]) and the d1 prompt mask [B, P] or None.
    """
    batch, completion_len = completion_shape
    if len(seeds) != batch:
        raise ValueError(f"draw_row_masks: {len(seeds)} seeds for {batch} rows")
    rows, prompt_masks = [], []
    for b, seed in enumerate(seeds):
        real = None
        if prompt_real is not None:  # left padding: a row's real prompt tokens are its last n positions
            real = prompt_real[b:b + 1, prompt_real.shape[1] - int(prompt_real[b].sum()):]  # [1, n]
        rows.append(draw_masks(estimator, seed, (1, completion_len), real))
        if rows[-1][3] is not None:  # d1: pad the row's prompt mask back to the batch's prompt length
            pad = torch.zeros(1, prompt_real.shape[1] - real.shape[1], dtype=torch.bool)
            prompt_masks.append(torch.cat([pad, rows[-1][3]], dim=1))
    masks = tuple(torch.cat([r[0][p] for r in rows]) for p in range(len(rows[0][0])))  # [B, K] each
    t = torch.tensor([r[1] for r in rows])  # [B]
    weights = tuple(torch.tensor([float(r[2][p]) for r in rows])[:, None] for p in range(len(rows[0][2])))
    prompt_mask = torch.cat(prompt_masks) if prompt_masks else None  # [B, P]
    return masks, t, weights, prompt_mask


def token_scores(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    estimator: str = "coupled",
    seed: int | list[int],
    mask_id: int | None = None,
    logits_fn=completion_logits,
) -> ScoreResult:
    """input_ids [B, L] = prompt ++ completion, attention_mask [B, L], completion_mask [B, K] -> ScoreResult.

    K = completion_mask.shape[1] and the completion is input_ids[:, -K:]. Scores are returned for all K
    positions (tokens after the end token are scored too); completion_mask is the loss mask, applied by
    `grpo_loss`. mask_id defaults to model.config.mask_token_id. logits_fn(model, input_ids, attention_mask, K)
    -> [B, K, V], the logits that predict the K completion tokens: the model family's head alignment (Dream's
    shifted head by default; actors.policy gives each family its own).
    """
    batch, length = input_ids.shape
    completion_len = completion_mask.shape[1]
    if completion_mask.shape[0] != batch or not 0 < completion_len < length:
        raise ValueError(
            f"token_scores: completion_mask {tuple(completion_mask.shape)} does not fit input_ids {tuple(input_ids.shape)}"
        )
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    device = input_ids.device
    prompt_real = attention_mask[:, :-completion_len].bool()  # [B, P]
    draw = draw_masks if isinstance(seed, int) else draw_row_masks  # one seed, or one per row
    masks, t, weights, prompt_mask = draw(estimator, seed, (batch, completion_len), prompt_real)
    masks = tuple(mask.to(device) for mask in masks)
    noisy = []
    for completion_masked in masks:
        row = input_ids.clone()  # [B, L]
        row[:, -completion_len:] = row[:, -completion_len:].masked_fill(completion_masked, mask_id)
        if prompt_mask is not None:
            row[:, :-completion_len] = row[:, :-completion_len].masked_fill(prompt_mask.to(device), mask_id)
        noisy.append(row)
    passes = len(masks)
    logits = logits_fn(model, torch.cat(noisy), attention_mask.repeat(passes, 1), completion_len)  # [passes*B, K, V]
    targets = input_ids[:, -completion_len:].repeat(passes, 1)  # [passes*B, K]
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    log_probs = log_probs.view(passes, batch, completion_len)  # [passes, B, K]
    scores = log_probs[0]  # d1: the one fully masked pass
    if estimator != "d1":
        for index in (1, 2):
            weight = weights[index].to(device) if torch.is_tensor(weights[index]) else weights[index]
            scores = scores + masks[index].float() * log_probs[index] * weight
        scores = scores / 2
    return ScoreResult(scores=scores, masks=masks, t=t, weights=weights, prompt_mask=prompt_mask)
