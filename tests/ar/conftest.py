"""A tiny causal Qwen2 with the project's tokenizer: what AR-GRPO trains and vLLM serves (head size 32, the
smallest vLLM's CPU attention runs)."""
from __future__ import annotations

import pytest

from actors.causal import build_causal_model
from actors.dllm import save_model

TEXTS = ["def add(a, b):\n    return a + b\n", "```python\nprint('hi')\n```\n", "Write a function that adds."] * 20
CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=256)


def tiny_causal(seed: int = 0):
    return build_causal_model({"config": CONFIG, "tokenizer": {"train_texts": TEXTS, "vocab_size": 512},
                               "seed": seed})


@pytest.fixture(scope="session")
def causal_dir(tmp_path_factory):
    model, tokenizer = tiny_causal()
    path = tmp_path_factory.mktemp("causal") / "model"
    save_model(model, tokenizer, path)
    return path
