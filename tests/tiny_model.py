"""The tiny bidirectional Qwen2 dLLM the tests build: one spec, one builder, one random-token helper.

`tiny_spec()` is the spec `build_model` takes; keyword arguments override Qwen2 config keys (e.g.
`initializer_range=0.3`, `num_hidden_layers=1`), and `texts` / `vocab_size` / `seed` the rest.
"""

from __future__ import annotations

import torch

from actors.dllm import build_model
from actors.dllm.tokenizer import SPECIAL_TOKENS

TEXTS = ["def add(a, b):\n    return a + b\n", "Write a function that adds two numbers.", "print(sum([1, 2, 3]))"] * 10
CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=128,
)
VOCAB_SIZE = 320
PEAKED = dict(initializer_range=0.3)  # peaked logits: no near-ties for float noise to flip at temperature 0
FIRST_ORDINARY_ID = len(SPECIAL_TOKENS)  # the special tokens take ids 0..4


def tiny_spec(*, texts: list[str] = TEXTS, vocab_size: int = VOCAB_SIZE, seed: int = 0, **config) -> dict:
    """The `build_model` spec of the tiny model; `config` overrides keys of CONFIG."""
    return {"config": {**CONFIG, **config}, "tokenizer": {"train_texts": texts, "vocab_size": vocab_size}, "seed": seed}


def build_tiny(*, dtype: torch.dtype | None = None, **spec_options):
    """(model, tokenizer) of `tiny_spec(**spec_options)`, in train mode as `build_model` returns it."""
    return build_model(tiny_spec(**spec_options), dtype=dtype)


def random_rows(tokenizer, lengths, seed: int = 0) -> list[list[int]]:
    """One row of ordinary (non-special) token ids per length, drawn in order from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(FIRST_ORDINARY_ID, len(tokenizer), (n,), generator=generator).tolist() for n in lengths]


def tiny_llada(tokenizer, seed: int = 0, std: float = 0.3):
    """A 2-layer LLaDA (llama blocks, grouped-query attention, untied head, the release's RoPE theta) over the
    tiny tokenizer, in eval mode; std 0.3: peaked logits, so argmaxes do not flip on float noise."""
    from actors.dllm.llada import LladaModel, tiny_llada_config

    config = tiny_llada_config(dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                    intermediate_size=64, max_position_embeddings=256, rope_theta=500000.0), tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LladaModel(config)
        for param in model.parameters():
            torch.nn.init.normal_(param, std=std) if param.dim() > 1 else torch.nn.init.ones_(param)
    return model.eval()
