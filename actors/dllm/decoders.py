"""Which decoder, with which settings: one `DecoderSettings` for rollouts, `diffurl eval` and the benchmarks.

    reference  the exact decoder of the paper (`decoding.generate`): `steps` denoising steps, one batch RNG
    fast       confidence-threshold parallel decoding with blocks and a KV cache (`fast_decoding.generate_fast`)

`DecoderSettings`, the one settings type, validator and set of defaults, is actors/decoder_settings.py's (plain
Python, so that the config reads it without torch); this module re-exports it.
"""

from __future__ import annotations

from ..decoder_settings import DECODERS, FAST_ONLY, REFERENCE_ONLY, DecoderSettings, SettingsError
from .decoding import GenerateResult, generate
from .fast_decoding import DREAM, generate_fast
from .seeding import batch_seed

def decode(model, tokenizer, prompts: list, settings: DecoderSettings, *, temperature: float,
           seeds: list[int]) -> GenerateResult:
    """Decode `prompts` (one seed per row) in one batched call of the chosen decoder.

    fast: row r samples from its own generator seeded seeds[r], so a row's completion does not depend on its
    batch. reference: one generator for the batch (the paper's decoder), seeded by a hash of all the seeds."""
    if settings.decoder == "fast":
        return decode_fast(model, tokenizer, prompts, settings, temperature=temperature, seeds=seeds)
    top_p = settings.top_p if temperature > 0 else None
    top_k = settings.top_k if temperature > 0 else None
    return generate(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                    steps=settings.steps or settings.max_new_tokens, temperature=temperature, top_p=top_p,
                    top_k=top_k, alg=settings.alg, alg_temp=settings.alg_temp, seed=batch_seed(seeds))


def decode_fast(model, tokenizer, prompts: list, settings: DecoderSettings, *, temperature: float,
                seeds: list[int], family=DREAM) -> GenerateResult:
    """The fast decoder with `settings` (steps and alg_temp unused), row r from its own generator seeded
    seeds[r]; `family`: the model's adapter (DREAM, or llada_decoding.LLADA)."""
    sampled = temperature > 0
    return generate_fast(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens, temperature=temperature,
                         top_p=settings.top_p if sampled else None, top_k=settings.top_k if sampled else None,
                         alg=settings.alg, threshold=settings.threshold, factor=settings.factor,
                         block_length=settings.block_length, cache=settings.cache, seed=list(seeds), family=family)


__all__ = ["DECODERS", "FAST_ONLY", "REFERENCE_ONLY", "DecoderSettings", "SettingsError", "decode", "decode_fast"]
