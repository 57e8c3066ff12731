"""LLaDA's decoders in pure torch: its own reference decoder, as the released `generate.py` does it, and the
fast decoder (Fast-dLLM) through `LLADA`, LLaDA's adapter of fast_decoding.generate_fast.

`decode_llada` is what `actors.dllm.decode` is for Dream: DecoderSettings.decoder "reference" runs
`generate_llada` below (one generator for the batch), "fast" runs fast_decoding.generate_fast with `LLADA`
(threshold / factor rule, blocks, cache none | prefix | dual, one generator per row seeded by its own seed),
as NVlabs/Fast-dLLM's llada/generate.py (`generate_with_prefix_cache`, `generate_with_dual_cache`,
`get_transfer_index` with threshold / factor) does it: no logit shift, so a block's window is the block alone;
prefix feeds the block and everything after it, dual the block only, the other keys/values recorded by the
block's first (full, exact) forward. Where ours differs from Fast-dLLM's: sampling is fast_decoding's (the
filtered distribution drawn per row, not Gumbel-max from the global RNG), the mask token's logit is removed,
a finished row (end token with nothing masked before it) leaves the batch, positions come from the padding
mask (left padding, as `forward_from_mask`), and keys/values are cached per layer before the grouped kv heads
are repeated. A row's end tokens are the tokenizer's eos and `<|im_end|>` when it has one (LLaDA-8B's
`<|eot_id|>` is not among them: such a row goes on until eos or its last mask).

The reference decoder follows ML-GSAI/LLaDA `generate.py` at its newest stored version (commit 65cbed2, "debug
model name in generate.py", the one whose `generate` takes `attention_mask`, `logits_eos_inf` and
`confidence_eos_eot_inf`). Written from reading that file, not copied. What matches it, step for step:

- canvas = prompt ++ gen_length mask tokens; an attention mask, when given, is extended with ones;
- gen_length // block_length blocks, left to right, steps // num_blocks steps each; the tokens revealed per
  row at each step come from `num_transfer_tokens` (the block's mask count split evenly, the remainder to
  the first steps);
- cfg_scale > 0: the conditional canvas and an unconditional one (prompt positions masked) go through the
  model in ONE batched call, logits = un + (cfg_scale + 1) * (cond - un);
- Gumbel-max in float64 (`add_gumbel_noise`; at temperature 0 the logits come back untouched and nothing is
  drawn), x0 = argmax; confidence = softmax(logits) at x0, in the logits' own dtype (the release dropped the
  float64 softmax in f51cb17), or a uniform float draw (`random`);
- confidence -inf beyond the current block and on every unmasked position; per row the top-k of the row's
  confidence (one ranking per row, as the release does) are revealed and never remasked; equal confidences
  are taken leftmost first (`leftmost_topk`), what the release's `torch.topk` does on CPU over its rows of 64 or
  more positions, here at any width and on any device. No logit shift: logits at position i predict token i. As in the release, nothing stops x0 from
  being mask_id itself: such a "reveal" leaves the position masked (it stays a candidate; `order` keeps -1
  until a real token lands there, and it can end masked).
- random draws: the same calls in the same order, shapes and dtypes (Gumbel noise [B, L, V] float64, then
  the `random` confidence [B, L] in the default dtype), from `generator`, or from the global RNG when it is
  None, so `torch.manual_seed(s)` before the release and before this gives the same tokens.

Differences: the model is called as `model(input_ids=x, attention_mask=mask)` and the canvas lives on the
prompt's device; with cfg and no attention mask the release's `attention_mask_` is unbound (a NameError),
here None is passed; a prompt holding `mask_id` is refused (the release would decode it as well);
`logits_eos_inf` / `confidence_eos_eot_inf` (hard-coded LLaDA-8B token ids) are not offered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from .decoders import decode_fast
from .decoding import GenerateResult, finish, leftmost_topk, start_canvas
from .llada import forward_from_mask
from .seeding import batch_seed

REMASKING = ("low_confidence", "random")


@dataclass
class LladaGeneration:
    sequences: torch.Tensor  # [B, P+gen] prompt ++ completion
    completion_ids: torch.Tensor  # [B, gen]
    order: torch.Tensor  # [B, gen] global step (0-based) at which each completion position was revealed; -1: never
    forwards: int  # model calls (a cfg step is one batched call)
    steps: int  # denoising steps over all blocks


def num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """mask_index [B, N] bool -> [B, steps] int64: each row's mask count split evenly, the remainder first."""
    if steps < 1:
        raise ValueError(f"num_transfer_tokens: steps must be >= 1, got {steps}")
    masked = mask_index.sum(dim=1, keepdim=True)  # [B, 1]
    base, remainder = masked // steps, masked % steps
    first = torch.arange(steps, device=mask_index.device)[None, :] < remainder  # [B, steps]
    return (base + first.long()).to(torch.int64)


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-max scores exp(logits) / (-log u)^T in float64; argmax samples softmax(logits / T). T = 0: logits."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.empty_like(logits, dtype=torch.float64).uniform_(0, 1, generator=generator)  # = rand_like
    return logits.exp() / (-torch.log(noise)) ** temperature


def _check_arguments(prompt_ids, attention_mask, mask_id, steps, gen_length, block_length, temperature,
                     cfg_scale, remasking) -> None:
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be [B, P], got shape {tuple(prompt_ids.shape)}")
    if (prompt_ids == mask_id).any():
        raise ValueError(f"prompt_ids holds mask_id {mask_id}: pad with another id")
    if attention_mask is not None and attention_mask.shape != prompt_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != prompt_ids shape "
                         f"{tuple(prompt_ids.shape)}")
    if gen_length < 1 or block_length < 1:
        raise ValueError(f"gen_length and block_length must be >= 1, got {gen_length}, {block_length}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps < 1 or steps % num_blocks:
        raise ValueError(f"steps {steps} must be a positive multiple of the number of blocks {num_blocks}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")


def _step_logits(model, x: torch.Tensor, attention_mask, prompt_index: torch.Tensor, mask_id: int,
                 cfg_scale: float) -> torch.Tensor:
    """One model call over the canvas -> logits [B, L, V]; with cfg, cond and uncond rows in one batch."""
    if cfg_scale == 0:
        return model(input_ids=x, attention_mask=attention_mask).logits
    unconditional = x.clone()
    unconditional[prompt_index] = mask_id
    both = model(input_ids=torch.cat([x, unconditional], dim=0), attention_mask=attention_mask).logits
    conditional, unconditional_logits = torch.chunk(both, 2, dim=0)
    return unconditional_logits + (cfg_scale + 1) * (conditional - unconditional_logits)


@torch.no_grad()
def generate_llada(model, prompt_ids: torch.Tensor, *, mask_id: int, attention_mask: torch.Tensor | None = None,
                   steps: int, gen_length: int, block_length: int, temperature: float = 0.0,
                   cfg_scale: float = 0.0, remasking: str = "low_confidence",
                   generator: torch.Generator | None = None) -> LladaGeneration:
    """Decode gen_length tokens after prompt_ids [B, P] as LLaDA's released `generate` does (module docstring)."""
    _check_arguments(prompt_ids, attention_mask, mask_id, steps, gen_length, block_length, temperature,
                     cfg_scale, remasking)
    batch, prompt_length = prompt_ids.shape
    device = prompt_ids.device
    x = torch.full((batch, prompt_length + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = prompt_ids
    if attention_mask is not None:
        ones = torch.ones((batch, gen_length), dtype=attention_mask.dtype, device=attention_mask.device)
        attention_mask = torch.cat([attention_mask, ones], dim=-1)
        if cfg_scale > 0:
            attention_mask = torch.cat([attention_mask, attention_mask], dim=0)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    block_steps = steps // num_blocks
    order = torch.full((batch, gen_length), -1, dtype=torch.long, device=device)
    forwards = 0
    for block in range(num_blocks):
        block_end = prompt_length + (block + 1) * block_length
        counts = num_transfer_tokens(x[:, block_end - block_length:block_end] == mask_id, block_steps)
        for i in range(block_steps):
            mask_index = x == mask_id
            logits = _step_logits(model, x, attention_mask, prompt_index, mask_id, cfg_scale)
            forwards += 1
            x0 = torch.argmax(add_gumbel_noise(logits, temperature, generator), dim=-1)  # [B, L]
            if remasking == "low_confidence":
                x0_p = torch.gather(F.softmax(logits, dim=-1), -1, x0[..., None]).squeeze(-1)
            else:
                x0_p = torch.rand(x0.shape, device=x0.device, generator=generator)
            x0_p[:, block_end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            transfer = torch.zeros_like(mask_index)
            for row in range(batch):
                transfer[row, leftmost_topk(confidence[row], int(counts[row, i]))] = True
            x[transfer] = x0[transfer]
            revealed = transfer & (x != mask_id)  # a predicted mask_id leaves the position masked, as in the release
            order[revealed[:, prompt_length:]] = block * block_steps + i
    return LladaGeneration(sequences=x, completion_ids=x[:, prompt_length:].clone(), order=order,
                           forwards=forwards, steps=num_blocks * block_steps)


# rollout.alg -> generate.py's remasking (the reference decoder): maskgit_plus keeps the most probable x0 (its
# low_confidence rule), origin a uniform draw (its random rule); Dream's entropy and top-k margin rankings have no
# generate.py twin. The fast decoder takes every alg (fast_decoding ranks by it; maskgit_plus is Fast-dLLM's).
REMASKING_OF_ALG = {"maskgit_plus": "low_confidence", "origin": "random"}


class LladaFast:
    """LLaDA's adapter of the fast decoder (see fast_decoding.DreamFast for the attributes): no shift (logits at
    position j predict token j), the config's mask_token_id, and one call `model(ids, key mask, positions,
    past_key_values, logits_to_keep)` for the whole canvas and a window alike (LladaModel masks padded keys
    only, as the release does)."""

    shift = 0

    def mask_id(self, model, tokenizer) -> int:
        mask_id = model.config.mask_token_id
        if mask_id != tokenizer.mask_token_id:
            raise ValueError(f"LLaDA: config mask_token_id {mask_id} != tokenizer mask_token_id "
                             f"{tokenizer.mask_token_id}")
        return mask_id

    def full(self, model, input_ids, attention_mask, position_ids, keep, kv):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     past_key_values=kv, logits_to_keep=keep).logits

    window = full  # key_mask [R, C+W] in place of the attention mask


LLADA = LladaFast()


def check_llada_settings(settings) -> str | None:
    """The generate.py remasking of a DecoderSettings (None for decoder=fast), or ValueError naming what LLaDA's
    decoders lack."""
    if settings.decoder == "fast":  # DecoderSettings has range-checked every knob (alg_temp 0 included); the
        return None  # fast decoder reads them all for LLaDA as for Dream (steps and alg_temp are unread)
    if settings.decoder != "reference":
        raise ValueError(f"decoder {settings.decoder!r}: LLaDA decodes with decoder=reference (generate.py) or fast")
    if settings.alg not in REMASKING_OF_ALG:
        raise ValueError(f"alg {settings.alg!r}: LLaDA's decoder remasks by low confidence (alg maskgit_plus) or at "
                         f"random (alg origin)")
    if (settings.top_p is not None and settings.top_p < 1) or settings.top_k is not None:
        raise ValueError("top_p / top_k: LLaDA's decoder samples the full distribution (Gumbel-max); set top_p=1 "
                         "and no top_k")
    length = settings.max_new_tokens
    block = settings.block_length or length
    if length % block:
        raise ValueError(f"block_length {block}: must divide max_new_tokens {length} for LLaDA's decoder")
    if (settings.steps or length) % (length // block):
        raise ValueError(f"steps {settings.steps or length}: must be a multiple of the {length // block} blocks "
                         f"for LLaDA's decoder")
    return REMASKING_OF_ALG[settings.alg]


def decode_llada(model, tokenizer, prompts: list, settings, *, temperature: float, seeds: list[int]) -> GenerateResult:
    """What `actors.dllm.decode` is for Dream: `prompts` (chat strings or id lists) left-padded into one batch.
    decoder=fast: fast_decoding.generate_fast with LLaDA's adapter, row r from its own generator seeded seeds[r].
    decoder=reference: `generate_llada` with settings.max_new_tokens, steps (None: one per token) and block_length
    (None: one block), one generator for the batch seeded as the reference Dream decoder's is."""
    remasking = check_llada_settings(settings)
    if settings.decoder == "fast":
        return decode_fast(model, tokenizer, prompts, settings, temperature=temperature, seeds=seeds, family=LLADA)
    started = time.perf_counter()
    length = settings.max_new_tokens
    device = next(model.parameters()).device
    prompt_ids, canvas, attention_mask = start_canvas(tokenizer, prompts, length, device)
    width = canvas.shape[1] - length
    seed = batch_seed(seeds)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = generate_llada(partial(forward_from_mask, model), canvas[:, :width], mask_id=tokenizer.mask_token_id,
                         attention_mask=attention_mask[:, :width], steps=settings.steps or length, gen_length=length,
                         block_length=settings.block_length or length, temperature=temperature, remasking=remasking,
                         generator=generator)
    return finish(tokenizer, prompt_ids, out.sequences, attention_mask, out.order, started, steps=out.steps,
                  forwards=out.forwards, row_forwards=[out.forwards] * len(prompt_ids),
                  row_tokens=(out.order >= 0).sum(dim=1).tolist())
