"""The one seed hash: every seed in diffurl (prompt order, rollout groups, diffusion masks, SFT and eval
decoding) is `derived_seed(run_seed, purpose, *indices)`.

A SHA-256 of the parts joined by ":" and cut to 63 bits, so seeds of different purposes or indices never
collide by arithmetic accident (as `seed * 1_000_003 + step` can) and do not depend on Python's hash salt.
"""
from __future__ import annotations

import hashlib


def derived_seed(*parts) -> int:
    """A non-negative 63-bit seed, a pure function of `parts` (their `str` forms, in order)."""
    key = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def batch_seed(seeds: list[int]) -> int:
    """The seed of a decoder that draws from one generator per call, from its rows' own seeds: the common seed
    when every row has the same, else derived_seed("batch", *seeds) (actors/engines.py states the rule)."""
    return seeds[0] if len(set(seeds)) == 1 else derived_seed("batch", *seeds)
