"""The one prompt module: every prompt text, the chat messages built from a problem, and their token ids.

    build_chat_prompt(problem)  training, rollouts, the warm start and `diffurl eval` on `question` problems:
                                [system SYSTEM_PROMPT, user question + ANSWER_INSTRUCTION]
    eval_messages(problem)      the above, or for a HumanEval problem (`prompt` = signature + docstring) the
                                EvalPlus instruct template the DiffuCoder / Qwen2.5-Coder evaluation uses
    encode_prompt(tokenizer, messages, max_prompt_tokens)   chat template -> prompt ids, left-truncated

SYSTEM_PROMPT is the chat template's default system turn (`actors.dllm.tokenizer`), so a conversation that
gives it and one that leaves it out read the same to the model.
"""
from __future__ import annotations

from actors.dllm.tokenizer import SYSTEM_PROMPT

ANSWER_INSTRUCTION = "Answer with one complete Python solution in a single ```python code block."
HUMANEVAL_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem "
                         "in a markdown code block:")

__all__ = ["ANSWER_INSTRUCTION", "HUMANEVAL_INSTRUCTION", "SYSTEM_PROMPT", "build_chat_prompt", "encode_prompt",
           "eval_messages"]


def build_chat_prompt(problem: dict) -> list[dict]:
    """Chat messages for one problem: the recipe's system prompt, then the question asking for one code block."""
    return _chat(f"{problem['question'].strip()}\n\n{ANSWER_INSTRUCTION}")


def eval_messages(problem: dict) -> list[dict]:
    """Chat messages: the training prompt for `question` problems, the EvalPlus template for HumanEval ones."""
    if "question" in problem:
        return build_chat_prompt(problem)
    return _chat(f"{HUMANEVAL_INSTRUCTION}\n```\n{problem['prompt'].strip()}\n```\n")


def encode_prompt(tokenizer, messages: list[dict], max_prompt_tokens: int) -> list[int]:
    """Apply the chat template (with the assistant turn opened) and keep the last `max_prompt_tokens` ids.

    Left truncation, as the released recipe does: the end of the prompt (the question and the opened
    assistant turn) is what the first completion token is predicted from.
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_tokens:]


def _chat(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
