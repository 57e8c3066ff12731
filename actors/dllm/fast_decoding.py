"""The fast masked-diffusion decoder: confidence-threshold parallel decoding, blocks and an approximate KV cache
(DECODING.md; Fast-dLLM, arXiv 2505.22618, sections 3.2-3.3), per row and batch-safe with left padding, for both
families: Dream/DiffuCoder (the default) and LLaDA (llada_decoding.LLADA, as Fast-dLLM's llada/generate.py).

Canvas = left-padded prompt ++ [MASK] * K, as in the reference decoder. The completion is decoded in blocks of
`block_length` positions (None: one block, the whole completion), left to right. At every forward, over the
still-masked positions of the current block of each row taking part:
  - x0 is the argmax (T=0) or a sample of the tempered, top-p / top-k filtered distribution, drawn from the
    row's own generator, so a row's output does not depend on the other rows of the batch;
  - `p` is the probability of x0 under that distribution;
  - threshold rule: reveal every position with p >= threshold, and always the position ranked first by the
    `alg` confidence (maskgit_plus: p, topk_margin: top-2 margin, entropy: negative entropy, origin: a uniform
    draw), so each forward reveals at least one token per row (`min_tokens`: the first `min_tokens`, so that
    a benchmark can force the parallelism a trained model shows on a random one, which is never confident);
  - factor rule (`factor` set): sort p descending and reveal the longest prefix whose n-th value is
    >= 1 - factor / (n + 1) (n = 1, 2, ...; the first is always revealed).
Equal values rank leftmost first in both rules (the first maximum, a stable sort, `leftmost_topk`), whatever the
block width and device. Revealed tokens are never re-masked. The mask token's logit is removed (Dream: the tokenizer's `<|mask|>`, as
in the reference decoder; LLaDA: the config's mask_token_id), so a revealed position always holds a real token.

Blocks move in step over the batch: a row that has finished the current block sits out the forwards until
the others have too. A row leaves the batch for good when it has no mask left or (`stop_at_end`) when it has
revealed an end token with nothing masked before it: its remaining positions become `<|endoftext|>`, the
filler the warm start trains on, and the text (cut at the first end token) cannot change any more.

Cache (`cache`): each block starts with a full bidirectional forward over the rows' whole canvas (exact: the
uncached forward), which also records every layer's keys and values (`_LayerKV`).
  - none:   every forward is that full forward;
  - prefix: inner forwards feed the block's window and everything after it, and take the keys and values of
            the positions before from the block start (stale inside the block);
  - dual:   inner forwards feed only the window; the suffix's keys and values come from the block start too.
The window is the block, preceded by `family.shift` positions: Dream's head is shifted (logit j predicts token
j + 1), so the position before the block is fed too, its output predicting the block's first token; LLaDA's
head is not (logit j predicts token j), so its window is the block alone, as in Fast-dLLM.

The family adapter (`DreamFast`, llada_decoding.LLADA) is all that differs between the families: `shift`, the
mask id, and how one forward is run over the whole canvas or over a window with cached keys/values. Positions
come from the padding mask for both (`attention_inputs` / `position_ids_from_mask`), so a row's real-position
logits do not depend on its left padding.
"""

from __future__ import annotations

import time

import torch

from ..decoder_settings import CACHES
from .decoding import (ALGORITHMS, GenerateResult, _check_options, alg_confidence, filtered_probs, finish,
                       leftmost_topk, start_canvas)
from .padding import attention_inputs, position_ids_from_mask
from .seeding import derived_seed
from .tokenizer import IM_END



class _LayerKV:
    """What the attention layers (transformers' Qwen2, LladaModel) ask of a cache, for one forward:
    `update(k, v, layer)`.

    Recording (`stored` None): keeps each layer's keys (after RoPE) and values and returns them unchanged, so the
    forward is exactly the uncached one. Replaying: returns the stored keys/values followed by the new ones;
    bidirectional attention does not care about key order, only the mask columns must follow it."""

    def __init__(self, stored: tuple[list, list] | None = None):
        self.recording = stored is None
        self.keys, self.values = ([], []) if stored is None else stored

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.recording:
            self.keys.append(key_states)
            self.values.append(value_states)
            return key_states, value_states
        return (torch.cat([self.keys[layer_idx], key_states], dim=2),
                torch.cat([self.values[layer_idx], value_states], dim=2))


def _forward(model, input_ids, mask4d, position_ids, keep: torch.Tensor, kv: _LayerKV | None) -> torch.Tensor:
    """One forward: logits [B, len(keep), V] of the fed positions `keep` (indices into input_ids)."""
    out = model(input_ids=input_ids, attention_mask=mask4d, position_ids=position_ids, use_cache=False,
                past_key_values=kv, logits_to_keep=keep)
    return out.logits


class DreamFast:
    """The family adapter of the fast decoder, for Dream/DiffuCoder (transformers' Qwen2 with the shifted head);
    LLaDA's is llada_decoding.LLADA, with the same attributes:

    shift: logits at position j predict token j + shift (Dream 1, LLaDA 0);
    mask_id(model, tokenizer): the token whose logit is removed;
    full(model, input_ids [R, L], attention_mask [R, L], position_ids [R, L], keep, kv) and
    window(model, input_ids [R, W], key_mask bool [R, C+W] (cached keys first), position_ids [R, W], keep, kv):
    the logits [R, len(keep), V] of the fed positions `keep`; `kv` (a `_LayerKV`; None for a full forward
    without cache) records or replays every layer's keys and values. Dream's full forward masks padded queries
    too (attention_inputs' 4-D mask); a window never holds padding, so its mask is the key mask alone."""

    shift = 1

    def mask_id(self, model, tokenizer) -> int:
        return tokenizer.mask_token_id

    def full(self, model, input_ids, attention_mask, position_ids, keep, kv):
        return _forward(model, input_ids, attention_inputs(attention_mask)[1], position_ids, keep, kv)

    def window(self, model, input_ids, key_mask, position_ids, keep, kv):
        mask4d = key_mask[:, None, None, :].expand(-1, 1, input_ids.shape[1], -1)
        return _forward(model, input_ids, mask4d, position_ids, keep, kv)


DREAM = DreamFast()  # the default family


class _BlockCache:
    """Keys/values of the positions outside the fed window [w0, w1), recorded by a block's first forward."""

    def __init__(self, kv: _LayerKV, rows: torch.Tensor, attention_mask: torch.Tensor, w0: int, w1: int):
        outside = lambda t: torch.cat([t[:, :, :w0], t[:, :, w1:]], dim=2)  # noqa: E731  [R, H, C, D]
        self.keys = [outside(k) for k in kv.keys]
        self.values = [outside(v) for v in kv.values]
        self.key_mask = torch.cat([attention_mask[:, :w0], attention_mask[:, w1:]], dim=1).bool()  # [R, C]
        self.slot = {int(r): i for i, r in enumerate(rows.tolist())}  # batch row -> cache row

    def select(self, rows: torch.Tensor) -> tuple[_LayerKV, torch.Tensor]:
        index = torch.tensor([self.slot[int(r)] for r in rows.tolist()], device=rows.device)
        if len(index) == len(self.slot):  # every cached row takes part: no copy
            return _LayerKV((self.keys, self.values)), self.key_mask
        return (_LayerKV(([k[index] for k in self.keys], [v[index] for v in self.values])),
                self.key_mask[index])


def _check_fast_options(threshold: float, factor: float | None, block_length: int | None, cache: str,
                        min_tokens: int = 1) -> None:
    if min_tokens < 1:
        raise ValueError(f"generate_fast: min_tokens {min_tokens} must be >= 1")
    if not threshold > 0:
        raise ValueError(f"generate_fast: threshold {threshold} must be > 0 (> 1: one token per forward)")
    if factor is not None and not factor > 0:
        raise ValueError(f"generate_fast: factor {factor} must be > 0")
    if block_length is not None and block_length < 1:
        raise ValueError(f"generate_fast: block_length {block_length} must be >= 1 (None: the whole completion)")
    if cache not in CACHES:
        raise ValueError(f"generate_fast: cache {cache!r} is not one of {', '.join(CACHES)}")


def _row_generators(seed: int | list[int] | None, batch: int, device) -> list[torch.Generator]:
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"generate_fast: {len(seed)} seeds for {batch} prompts")
        seeds = [int(s) for s in seed]
    elif seed is None:
        seeds = [int(torch.Generator().seed()) for _ in range(batch)]  # non-deterministic, global RNG untouched
    else:
        seeds = [derived_seed(seed, "row", row) for row in range(batch)]
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def _choose(logits, candidates, rows, generators, *, temperature, top_p, top_k, alg):
    """logits [R, W, V] of the block positions, candidates bool [R, W] -> (x0, p, rank), each [R, W]
    (p and rank -inf off the candidates)."""
    probs = filtered_probs(logits[candidates], temperature=temperature, top_p=top_p, top_k=top_k)  # [N, V]
    counts = candidates.sum(1).tolist()
    if temperature > 0:
        x0 = torch.cat([torch.multinomial(part, 1, generator=generators[r]).squeeze(-1)
                        for part, r in zip(probs.split(counts), rows.tolist()) if len(part)])
        p = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        p, x0 = probs.max(dim=-1)
    if alg == "origin":
        rank = torch.cat([torch.rand(n, generator=generators[r], device=probs.device)
                          for n, r in zip(counts, rows.tolist()) if n])
    else:
        rank = alg_confidence(probs, p, alg)
    full = lambda values, fill: torch.full(candidates.shape, fill, dtype=values.dtype,  # noqa: E731
                                           device=values.device).masked_scatter_(candidates, values)
    return full(x0, 0), full(p, -torch.inf), full(rank, -torch.inf)


def _accept(p: torch.Tensor, rank: torch.Tensor, candidates: torch.Tensor, threshold: float,
            factor: float | None, min_tokens: int = 1) -> torch.Tensor:
    """Which candidates [R, W] to reveal: the threshold (or factor) rule plus each row's top-ranked one (the
    `min_tokens` top-ranked ones)."""
    if factor is None:
        accept = candidates & (p >= threshold)
        best = rank.argmax(dim=1)  # the first of equal maxima: the leftmost
    else:
        sorted_p, by_p = torch.sort(p, dim=1, descending=True, stable=True)  # ties: leftmost first
        n = torch.arange(1, p.shape[1] + 1, device=p.device, dtype=p.dtype)
        prefix = (sorted_p >= 1 - factor / (n + 1)).long().cumprod(dim=1).bool()
        accept = torch.zeros_like(candidates).scatter_(1, by_p, prefix) & candidates
        best = by_p[:, 0]
    accept.scatter_(1, best[:, None], True)
    if min_tokens > 1:
        accept.scatter_(1, leftmost_topk(rank, min(min_tokens, rank.shape[1])), True)
    return accept & candidates


@torch.no_grad()
def generate_fast(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "entropy",
    threshold: float = 0.9,
    factor: float | None = None,
    block_length: int | None = None,
    cache: str = "none",
    min_tokens: int = 1,
    stop_at_end: bool = True,
    seed: int | list[int] | None = None,
    family=DREAM,
) -> GenerateResult:
    """prompts: chat-formatted strings or token-id lists -> GenerateResult (see the module docstring).

    seed: one per row, or one for the call (row r gets derived_seed(seed, "row", r)), or None (random).
    family: the model's (DREAM, or llada_decoding.LLADA).
    `order` holds the forward index at which each position was revealed; `forwards` counts batch forwards."""
    _check_options(max_new_tokens, 1, alg, temperature, top_p, top_k)
    _check_fast_options(threshold, factor, block_length, cache, min_tokens)
    started = time.perf_counter()
    device = next(model.parameters()).device
    mask_id, fill_id = family.mask_id(model, tokenizer), tokenizer.eos_token_id
    ends = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END))
    end_ids = torch.tensor([i for i in ends if i is not None], device=device)
    prompt_ids, canvas, attention_mask = start_canvas(tokenizer, prompts, max_new_tokens, device)  # [B, P+K]
    batch, length = canvas.shape[0], max_new_tokens
    width = canvas.shape[1] - length  # P, the padded prompt
    position_ids = position_ids_from_mask(attention_mask)
    generators = _row_generators(seed, batch, device)
    masked = torch.ones(batch, length, dtype=torch.bool, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    order = torch.full((batch, length), -1, dtype=torch.long, device=device)
    row_forwards = torch.zeros(batch, dtype=torch.long, device=device)
    row_tokens = torch.zeros(batch, dtype=torch.long, device=device)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, alg=alg)
    block = block_length or length
    forwards = 0
    for start in range(0, length, block):
        end = min(start + block, length)
        w0 = width + start - family.shift  # the fed window [w0, w1): the block (after Dream's predecessor) ...
        w1 = width + end if cache == "dual" else width + length  # ... and, but for dual, everything after it
        keep = torch.arange(0, end - start, device=device)  # the window positions whose logits are read
        block_cache = None
        while True:
            rows = (~finished & masked[:, start:end].any(dim=1)).nonzero().squeeze(1)  # [R]
            if len(rows) == 0:
                break
            if block_cache is None or cache == "none":  # the block start (or no cache): the exact full forward
                kv = None if cache == "none" else _LayerKV()
                logits = family.full(model, canvas[rows], attention_mask[rows], position_ids[rows], keep + w0, kv)
                if kv is not None:
                    block_cache = _BlockCache(kv, rows, attention_mask[rows], w0, w1)
            else:
                kv, key_mask = block_cache.select(rows)
                keys = torch.cat([key_mask, attention_mask[rows, w0:w1].bool()], dim=1)  # [R, C+W]
                logits = family.window(model, canvas[rows, w0:w1], keys, position_ids[rows, w0:w1], keep, kv)
            logits = logits.float()
            logits[..., mask_id] = torch.finfo(logits.dtype).min
            candidates = masked[rows, start:end]  # [R, W]
            x0, p, rank = _choose(logits, candidates, rows, generators, **sampling)
            accept = _accept(p, rank, candidates, threshold, factor, min_tokens)
            completion = canvas[rows, width + start:width + end]
            canvas[rows, width + start:width + end] = torch.where(accept, x0, completion)
            order[rows, start:end] = torch.where(accept, forwards, order[rows, start:end])
            masked[rows, start:end] = candidates & ~accept
            row_tokens[rows] += accept.sum(dim=1)
            row_forwards[rows] += 1
            if stop_at_end:
                _finish_at_end(canvas, masked, order, rows, width, end_ids, fill_id, forwards)
            finished |= ~masked.any(dim=1)
            forwards += 1
    return finish(tokenizer, prompt_ids, canvas, attention_mask, order, started, steps=forwards, forwards=forwards,
                  row_forwards=row_forwards.tolist(), row_tokens=row_tokens.tolist())


def _finish_at_end(canvas, masked, order, rows, width, end_ids, fill_id, forward_index) -> None:
    """Rows of `rows` with a revealed end token and nothing masked before it: fill the rest with `fill_id`."""
    completion = canvas[rows, width:]  # [R, K]
    revealed_end = torch.isin(completion, end_ids) & ~masked[rows]
    first_end = torch.where(revealed_end.any(dim=1), revealed_end.float().argmax(dim=1), completion.shape[1])
    positions = torch.arange(completion.shape[1], device=canvas.device)
    settled = revealed_end.any(dim=1) & ~(masked[rows] & (positions < first_end[:, None])).any(dim=1)
    if not settled.any():
        return
    done = rows[settled]
    fill = masked[done]  # only positions after the end token are still masked
    canvas[done, width:] = torch.where(fill, fill_id, canvas[done, width:])
    order[done] = torch.where(fill, forward_index, order[done])
    masked[done] = False


__all__ = ["ALGORITHMS", "CACHES", "DREAM", "DreamFast", "generate_fast"]
