"""The reference masked-diffusion decoder (ALGORITHM.md section 2; Dream's `diffusion_generate`).

Canvas = left-padded prompt ++ [MASK] * K. At step i (t = ts[i], s = ts[i+1], ts = linspace(1, eps, steps+1))
the whole canvas is forwarded, the shifted logits of still-masked positions are tempered / top-p / top-k
filtered, x0 is sampled (argmax at temperature 0) and a confidence computed; `origin` reveals each masked
position with prob 1 - s/t, the other algorithms reveal n = floor(masked_per_row * (1 - s/t)) positions
(all remaining at the last step) chosen by confidence. Revealed tokens are never re-masked.

One deliberate difference from Dream: the `<|mask|>` logit is removed before sampling, so a revealed
position always holds a real token (Dream could "reveal" MASK, which silently re-masks the position).
With steps == max_new_tokens the reference schedule reveals 0 tokens at step 0, 1 per step after, and 2
at the last step (floor of float32 ratios); this decoder keeps that schedule exactly.

Ties: positions of equal confidence are revealed leftmost first (`leftmost_topk`), so the order does not depend
on the canvas width or the device (`torch.topk` leaves ties unordered; on CPU it happens to break them leftmost
only from width 64 on, which is what Dream's release, ranking over the whole canvas, gets).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..decoder_settings import ALGORITHMS
from .model import completion_logits
from .padding import left_pad
from .tokenizer import IM_END



@dataclass
class GenerateResult:
    sequences: torch.Tensor  # [B, P+K] left-padded prompt ++ completion
    prompt_ids: list[list[int]]  # unpadded prompts
    completion_ids: torch.Tensor  # [B, K]
    attention_mask: torch.Tensor  # [B, P+K], 0 on left padding
    texts: list[str]  # completions decoded up to the first end token, special tokens stripped
    order: torch.Tensor  # [B, K] forward (step) index at which each completion position was revealed
    steps: int  # reference: denoising steps; fast: forwards of the whole call (= forwards)
    elapsed_s: float
    forwards: int = 0  # model forwards of the batch (NFE)
    row_forwards: list[int] = field(default_factory=list)  # [B] forwards each row took part in
    row_tokens: list[int] = field(default_factory=list)  # [B] positions the model decided (not the end fill)

    @property
    def tokens_per_forward(self) -> float:
        """Positions the model decided per row-forward, over the batch (about 1 for the reference decoder)."""
        return sum(self.row_tokens) / max(sum(self.row_forwards), 1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits [M, V] -> logits with everything outside the smallest prefix of prob >= top_p set to min."""
    sorted_logits, sorted_index = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove_sorted = cumulative > top_p
    remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()  # keep the token that crosses top_p
    remove_sorted[..., 0] = False  # the first token is always kept
    remove = torch.zeros_like(remove_sorted).scatter_(-1, sorted_index, remove_sorted)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def _top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth_best = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]  # [M, 1]
    return logits.masked_fill(logits < kth_best, torch.finfo(logits.dtype).min)


def filtered_probs(logits: torch.Tensor, *, temperature: float, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """logits [M, V] -> the tempered, top-p / top-k filtered distribution [M, V]."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p_filter(logits, top_p)
    if top_k is not None:
        logits = _top_k_filter(logits, top_k)
    return torch.softmax(logits, dim=-1)


def leftmost_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [..., k] of the k largest scores along the last dim; equal scores are taken leftmost first.

    A stable descending sort keeps equal scores in position order, which `torch.topk` does not promise."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def alg_confidence(probs: torch.Tensor, chosen_prob: torch.Tensor, alg: str) -> torch.Tensor:
    """The ranking confidence of `alg` (not `origin`) for distributions probs [M, V] whose chosen token has
    probability chosen_prob [M]: that probability, the top-2 margin, or the negative entropy."""
    if alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values  # [M, 2]
        return top2[:, 0] - top2[:, 1]
    if alg == "entropy":
        return (probs * torch.log(probs + 1e-10)).sum(-1)
    return chosen_prob


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    alg: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [M, V] -> (confidence [M], x0 [M]) per the table of ALGORITHM.md section 2."""
    probs = filtered_probs(logits, temperature=temperature, top_p=top_p, top_k=top_k)  # [M, V]
    if temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    return alg_confidence(probs, confidence, alg), x0


def _encode_prompts(tokenizer, prompts: list) -> list[list[int]]:
    if not prompts:
        raise ValueError("generate: prompts is empty")
    if all(isinstance(prompt, str) for prompt in prompts):
        return [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    return [[int(token) for token in prompt] for prompt in prompts]


def start_canvas(tokenizer, prompts: list, max_new_tokens: int, device) -> tuple[list[list[int]], torch.Tensor,
                                                                                 torch.Tensor]:
    """prompts -> (prompt id lists, canvas [B, P+K] = left-padded prompt ++ [MASK] * K, attention_mask [B, P+K])."""
    prompt_ids = _encode_prompts(tokenizer, prompts)
    prompt, prompt_mask = left_pad(prompt_ids, tokenizer.pad_token_id)  # [B, P]
    batch = prompt.shape[0]
    canvas = torch.cat([prompt, torch.full((batch, max_new_tokens), tokenizer.mask_token_id)], dim=1).to(device)
    attention_mask = torch.cat([prompt_mask, torch.ones(batch, max_new_tokens, dtype=torch.long)], dim=1).to(device)
    return prompt_ids, canvas, attention_mask


def finish(tokenizer, prompt_ids, canvas, attention_mask, order, started: float, *, steps: int, forwards: int,
           row_forwards: list[int], row_tokens: list[int]) -> GenerateResult:
    """The GenerateResult of a decoded canvas (the completion is its last order.shape[1] positions)."""
    completion = canvas[:, -order.shape[1]:]
    return GenerateResult(sequences=canvas, prompt_ids=prompt_ids, completion_ids=completion,
                          attention_mask=attention_mask, texts=decode_completions(tokenizer, completion), order=order,
                          steps=steps, elapsed_s=time.perf_counter() - started, forwards=forwards,
                          row_forwards=row_forwards, row_tokens=row_tokens)


def decode_completions(tokenizer, completion_ids: torch.Tensor) -> list[str]:
    """completion_ids [B, K] -> texts cut at the first <|im_end|> or eos token, special tokens stripped."""
    end_ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)}
    texts = []
    for row in completion_ids.tolist():
        cut = next((index for index, token in enumerate(row) if token in end_ids), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return texts


def _check_options(max_new_tokens: int, steps: int, alg: str, temperature: float, top_p, top_k) -> None:
    if alg not in ALGORITHMS:
        raise ValueError(f"generate: alg {alg!r} is not one of {', '.join(ALGORITHMS)}")
    if max_new_tokens < 1 or steps < 1:
        raise ValueError(f"generate: max_new_tokens ({max_new_tokens}) and steps ({steps}) must be >= 1")
    if temperature < 0:
        raise ValueError(f"generate: temperature {temperature} must be >= 0")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p {top_p} must be in (0, 1]")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k {top_k} must be >= 1")


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int,
    steps: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg: str = "entropy",
    alg_temp: float = 0.0,
    eps: float = 1e-3,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> GenerateResult:
    """prompts: chat-formatted strings or token-id lists -> GenerateResult (see the module docstring)."""
    _check_options(max_new_tokens, steps, alg, temperature, top_p, top_k)
    started = time.perf_counter()
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()  # non-deterministic, still without touching the global RNG
        else:
            generator.manual_seed(seed)
    mask_id = tokenizer.mask_token_id
    prompt_ids, canvas, attention_mask = start_canvas(tokenizer, prompts, max_new_tokens, device)
    batch, completion_len = canvas.shape[0], max_new_tokens
    completion = canvas[:, -completion_len:]  # [B, K] view into the canvas
    masked = torch.ones(batch, completion_len, dtype=torch.bool, device=device)  # still-masked positions
    order = torch.full((batch, completion_len), -1, dtype=torch.long, device=device)
    timesteps = torch.linspace(1, eps, steps + 1, device=device)
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, alg=alg, generator=generator)
    for step in range(steps):
        logits = completion_logits(model, canvas, attention_mask, completion_len).float()  # [B, K, V]
        logits[..., mask_id] = torch.finfo(logits.dtype).min
        t, s = timesteps[step], timesteps[step + 1]
        last = step == steps - 1
        if alg == "origin":
            p_transfer = 1.0 if last else float(1 - s / t)
            draw = torch.rand(masked.shape, generator=generator, device=device)
            reveal = masked & (draw < p_transfer)  # [B, K]
            if not reveal.any():
                continue
            _, tokens = sample_tokens(logits[reveal], **sampling)
        else:
            confidence, x0 = sample_tokens(logits[masked], **sampling)
            masked_per_row = masked.sum() / batch
            count = int(masked_per_row) if last else int(masked_per_row * (1 - s / t))
            if count == 0:
                continue
            full_confidence = torch.full(masked.shape, -torch.inf, device=device)
            full_confidence[masked] = confidence
            if alg_temp == 0:
                chosen = leftmost_topk(full_confidence, count)  # [B, count]
            else:
                weights = F.softmax(full_confidence / alg_temp, dim=-1)
                chosen = torch.multinomial(weights, count, generator=generator)
            proposal = torch.full_like(completion, mask_id)
            proposal[masked] = x0
            reveal = torch.zeros_like(masked).scatter_(1, chosen, True)
            tokens = proposal[reveal]
        completion[reveal] = tokens
        order[reveal] = step
        masked &= ~reveal
    return finish(tokenizer, prompt_ids, canvas, attention_mask, order, started, steps=steps, forwards=steps,
                  row_forwards=[steps] * batch, row_tokens=[completion_len] * batch)
