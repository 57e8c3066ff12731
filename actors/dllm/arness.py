"""AR-ness of a decoding order (ALGORITHM.md section 5; DiffuCoder's local and global AR-ness@k)."""

from __future__ import annotations

import torch


def _reveal_sequence(order_row: list[int]) -> list[int]:
    """order [K] (step at which each position was revealed) -> positions p_1..p_K in reveal order.

    Positions revealed at the same step are taken left to right.
    """
    return sorted(range(len(order_row)), key=lambda position: (order_row[position], position))


def _row_ar_ness(positions: list[int], k: int) -> tuple[float, float]:
    count = len(positions)
    local_hits = sum(
        all(positions[step - i] == positions[step] - i for i in range(1, k + 1)) for step in range(k, count)
    )
    still_masked = list(range(count))  # sorted positions not yet revealed
    global_hits = 0
    for position in positions:
        global_hits += position in still_masked[:k]
        still_masked.remove(position)
    local = local_hits / (count - k) if count > k else 0.0
    return local, global_hits / count


def ar_ness(order: torch.Tensor, k: int = 1) -> tuple[float, float]:
    """order [B, K] or [K] (reveal step per completion position) -> (local AR-ness@k, global AR-ness@k), row means.

    With reveal sequence p_1..p_T: local = fraction of steps t > k with p_{t-i} = p_t - i for i = 1..k (the
    first k steps have no k predecessors and are left out, so left-to-right decoding scores exactly 1);
    global = fraction of steps whose p_t is among the k leftmost still-masked positions.
    """
    if k < 1:
        raise ValueError(f"ar_ness: k must be >= 1, got {k}")
    rows = order.reshape(-1, order.shape[-1]).tolist()
    if not rows or not rows[0]:
        raise ValueError("ar_ness: order is empty")
    values = [_row_ar_ness(_reveal_sequence(row), k) for row in rows]
    return sum(v[0] for v in values) / len(values), sum(v[1] for v in values) / len(values)
