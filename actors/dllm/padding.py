"""Left padding, position ids, the 4-D attention mask and the completion (loss) mask: the one place each is made."""

from __future__ import annotations

import torch


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists -> (input_ids [B, P] long, attention_mask [B, P] long, 0 on padding)."""
    if not sequences:
        raise ValueError("left_pad: no sequences given")
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"left_pad: sequence {row} is empty; every prompt needs at least one token")
        input_ids[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, L] (1 = real token) -> position_ids [B, L] = clamp(cumsum(mask) - 1, min=0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def attention_inputs(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """attention_mask [B, L] (1 = real token) -> (position_ids [B, L], mask4d bool [B, 1, L, L]).

    position_ids = clamp(cumsum(mask) - 1, min=0), so a real token's position does not depend on how much
    padding sits to its left. mask4d[b, 0, i, j] = m[b, i] & m[b, j] (bidirectional, padding invisible),
    plus the diagonal, so a padding query attends to itself: that changes nothing for real tokens and
    keeps every attention row non-empty (no NaN from an all-masked softmax row, in any kernel).
    """
    real = attention_mask.bool()  # [B, L]
    position_ids = position_ids_from_mask(real)  # [B, L]
    length = real.shape[1]
    diagonal = torch.eye(length, dtype=torch.bool, device=real.device)  # [L, L]
    mask4d = (real[:, None, :, None] & real[:, None, None, :]) | diagonal  # [B, 1, L, L]
    return position_ids, mask4d


def completion_mask_from_ids(completion_ids: torch.Tensor, end_ids: int | list[int]) -> torch.Tensor:
    """completion_ids [B, K] -> bool [B, K]: True up to and including the first end token; all True if none."""
    ends = torch.as_tensor([end_ids] if isinstance(end_ids, int) else list(end_ids), device=completion_ids.device)
    is_end = torch.isin(completion_ids, ends)  # [B, K]
    ends_before = is_end.long().cumsum(-1) - is_end.long()  # end tokens strictly before each position
    return ends_before == 0
