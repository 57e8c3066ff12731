"""Byte-level BPE tokenizer with the DiffuCoder special tokens and chat template.

`train_tokenizer` builds a small in-repo vocabulary (tests, demo); `build_tokenizer` loads a saved
directory or trains one from a request dict. Every tokenizer returned here has `mask_token`,
`pad_token` (= eos = `<|endoftext|>`) and a Qwen-shaped chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

EOS = "<|endoftext|>"
MASK = "<|mask|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DLM_PAD = "<|dlm_pad|>"
SPECIAL_TOKENS = [EOS, MASK, IM_START, IM_END, DLM_PAD]

SYSTEM_PROMPT = "You are a helpful assistant."  # the system prompt of the DiffuCoder coupled-GRPO recipe

# Qwen2.5 / DiffuCoder-Instruct shape: a default system turn, then <|im_start|>role\ncontent<|im_end|>\n.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def end_token_ids(tokenizer) -> list[int]:
    """The ids a completion ends at: <|im_end|>, then <|endoftext|>."""
    return [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, EOS)]


def train_tokenizer(texts: list[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (list of str) with the DiffuCoder special tokens."""
    if not texts:
        raise ValueError("train_tokenizer: texts is empty; give at least one training string")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS,
        pad_token=EOS,
        mask_token=MASK,
        additional_special_tokens=[IM_START, IM_END, DLM_PAD],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _read_train_files(paths: list[str]) -> list[str]:
    texts = []
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer train_files: {path!r} is not a file")
        texts.append(file.read_text(encoding="utf-8"))
    return texts


def _load_dir(path: Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer without ever running remote code.

    A Dream/DiffuCoder directory names a remote tokenizer class (auto_map); its files are a standard
    tokenizer.json, or Qwen2's vocab.json + merges.txt, so they load with the built-in classes.
    """
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if "auto_map" not in config:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    elif (path / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tokenizer = Qwen2Tokenizer.from_pretrained(str(path))
    if tokenizer.mask_token is None and MASK in tokenizer.get_vocab():
        tokenizer.mask_token = MASK
    if tokenizer.mask_token_id is None:
        raise ValueError(f"tokenizer at {str(path)!r} has no mask token; expected {MASK!r} in its vocabulary")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tokenizer(spec: str | Path | dict) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory, or train one from {"train_texts" | "train_files", "vocab_size"}."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer: {str(spec)!r} is not a directory")
        return _load_dir(path)
    if isinstance(spec, dict):
        unknown = set(spec) - {"train_texts", "train_files", "vocab_size"}
        if unknown:
            raise ValueError(f"tokenizer spec: unknown keys {sorted(unknown)}; accepted: train_texts, train_files, vocab_size")
        texts = list(spec.get("train_texts") or []) + _read_train_files(list(spec.get("train_files") or []))
        return train_tokenizer(texts, vocab_size=int(spec.get("vocab_size", 4096)))
    raise TypeError(f"tokenizer spec must be a directory path or a dict, got {type(spec).__name__}")
