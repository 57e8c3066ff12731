"""Which decoder, with which settings: one `DecoderSettings` for rollouts, `diffurl eval` and the benchmark.

    reference  the exact decoder of the paper (`decoding.generate`): `steps` denoising steps, one batch RNG
    fast       confidence-threshold parallel decoding with blocks and a KV cache (`fast_decoding.generate_fast`)
"""

from __future__ import annotations

from dataclasses import dataclass

from .decoding import GenerateResult, generate
from .fast_decoding import generate_fast
from .seeding import derived_seed

DECODERS = ("reference", "fast")


@dataclass(frozen=True)
class DecoderSettings:
    decoder: str = "reference"
    max_new_tokens: int = 48
    steps: int | None = None  # reference: denoising steps (None: max_new_tokens, one token per step)
    alg: str = "entropy"
    alg_temp: float = 0.0  # reference only
    top_p: float | None = None
    top_k: int | None = None
    threshold: float = 0.9  # fast: reveal every position at least this probable (> 1: one per forward)
    factor: float | None = None  # fast: the factor rule instead of the threshold
    block_length: int | None = None  # fast: None = one block, the whole completion
    cache: str = "none"  # fast: none | prefix | dual

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")


def decode(model, tokenizer, prompts: list, settings: DecoderSettings, *, temperature: float,
           seeds: list[int]) -> GenerateResult:
    """Decode `prompts` (one seed per row) in one batched call of the chosen decoder.

    fast: row r samples from its own generator seeded seeds[r], so a row's completion does not depend on its
    batch. reference: one generator for the batch (the paper's decoder), seeded by a hash of all the seeds."""
    top_p = settings.top_p if temperature > 0 else None
    top_k = settings.top_k if temperature > 0 else None
    if settings.decoder == "fast":
        return generate_fast(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                             temperature=temperature, top_p=top_p, top_k=top_k, alg=settings.alg,
                             threshold=settings.threshold, factor=settings.factor,
                             block_length=settings.block_length, cache=settings.cache, seed=list(seeds))
    seed = seeds[0] if len(set(seeds)) == 1 else derived_seed("batch", *seeds)
    return generate(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                    steps=settings.steps or settings.max_new_tokens, temperature=temperature, top_p=top_p,
                    top_k=top_k, alg=settings.alg, alg_temp=settings.alg_temp, seed=seed)
