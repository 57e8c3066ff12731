"""Chat messages -> prompt token ids, the one place rollouts, scoring and evaluation tokenize a prompt."""
from __future__ import annotations


def encode_prompt(tokenizer, messages: list[dict], max_prompt_tokens: int) -> list[int]:
    """Apply the chat template (with the assistant turn opened) and keep the last `max_prompt_tokens` ids.

    Left truncation, as the released recipe does: the end of the prompt (the question and the opened
    assistant turn) is what the first completion token is predicted from.
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_tokens:]
