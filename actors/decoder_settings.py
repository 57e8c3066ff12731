"""The decoder settings every caller shares (rollouts, `diffurl eval`, the benchmarks), in plain Python so that the
config reads them without importing torch; the decoders themselves are actors/dllm/decoders.py's.

`DecoderSettings` is the one type, the one validator and the one set of defaults: the config's rollout section
(orchestrator/config.py `decoder_settings`) and eval's flags (orchestrator/evaluate.py) are read into it by field
name, and a bad value is a `SettingsError` naming the field, which each caller words with its own key (rollout.X
or --X). A family's own limits (LLaDA's decoder) are its Policy's `check_settings` (actors/policy.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DECODERS = ("reference", "fast")
ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")  # which masked positions are revealed first
CACHES = ("none", "prefix", "dual")  # the fast decoder's approximate KV cache
FAST_ONLY = ("threshold", "factor", "cache")  # knobs only the fast decoders read
REFERENCE_ONLY = ("steps", "alg_temp")  # knobs only the reference decoders read


class SettingsError(ValueError):
    """A decoder setting out of range: `field` (a DecoderSettings field name), its `value` and `why`."""

    def __init__(self, field: str, value, why: str):
        super().__init__(f"{field}={value!r}: {why}")
        self.field, self.value, self.why = field, value, why


@dataclass(frozen=True)
class DecoderSettings:
    decoder: str = "reference"
    max_new_tokens: int = 48
    steps: int | None = None  # reference: denoising steps (None: max_new_tokens, one token per step)
    alg: str = "entropy"  # which masked positions to reveal first (LLaDA: maskgit_plus = low confidence)
    alg_temp: float = 0.0  # reference only
    top_p: float | None = 0.95  # nucleus sampling at T > 0 (None or 1: the full distribution)
    top_k: int | None = None
    threshold: float = 0.9  # fast: reveal every position at least this probable (> 1: one per forward)
    factor: float | None = None  # fast: the factor rule instead of the threshold
    block_length: int | None = None  # semi-autoregressive blocks (fast; LLaDA's reference); None: one block
    cache: str = "prefix"  # fast: none | prefix | dual (approximate KV cache; README "Fast decoding")

    def __post_init__(self):
        for field, ok, why in self._checks():
            if not ok:
                raise SettingsError(field, getattr(self, field), why)

    def _checks(self):
        n = self.max_new_tokens
        return (
            ("decoder", self.decoder in DECODERS, f"must be one of {', '.join(DECODERS)}"),
            ("cache", self.cache in CACHES, f"must be one of {', '.join(CACHES)}"),
            ("alg", self.alg in ALGORITHMS, f"must be one of {', '.join(ALGORITHMS)}"),
            ("max_new_tokens", n >= 1, "must be >= 1"),
            ("steps", self.steps is None or 1 <= self.steps <= n, f"must be in 1..max_new_tokens={n}"),
            ("alg_temp", self.alg_temp >= 0, "must be >= 0"),
            ("alg_temp", self.decoder == "reference" or self.alg_temp == 0,
             "must be 0 with the fast decoder (it reveals the top-ranked position)"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k is None or self.top_k >= 1, "must be null or >= 1"),
            ("threshold", self.threshold > 0, "must be > 0 (> 1: one token per forward)"),
            ("factor", self.factor is None or self.factor > 0, "must be null or > 0"),
            ("block_length", self.block_length is None or 1 <= self.block_length <= n,
             f"must be null (one block, the whole completion) or in 1..max_new_tokens={n}"),
        )

    @classmethod
    def from_values(cls, values) -> DecoderSettings:
        """Settings from any object or dict holding (some of) the fields by name; the others keep their defaults."""
        get = values.get if isinstance(values, dict) else (lambda name, default: getattr(values, name, default))
        missing = object()
        picked = {f.name: get(f.name, missing) for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in picked.items() if value is not missing})

    def unread(self, given) -> list[str]:
        """The fields among `given` that this settings' decoder does not read (FAST_ONLY, REFERENCE_ONLY)."""
        skipped = FAST_ONLY if self.decoder == "reference" else REFERENCE_ONLY
        return [name for name in given if name in skipped]
