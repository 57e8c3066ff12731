"""Warm start for the demo: an in-repo BPE tokenizer and a tiny bidirectional Qwen2 dLLM trained from scratch
with the masked-diffusion SFT loss (`actors.dllm.sft_loss`) on demonstrations of the training split, half of
them buggy (`buggy_fraction`: the reference with one operator swapped, `orchestrator.demo.tasks.buggy_reference`).

    model_dir = warm_start(WarmStartSettings(), cache_root=".cache/diffurl", train_path="train.jsonl")

Prompt = the chat template of the problem (`build_chat_prompt` + `encode_prompt`, exactly what rollouts
use); completion = the demonstration in the DiffuCoder answer format (one ```python block, closing fence and
newline), then `<|im_end|>`, then `<|endoftext|>` filling the canvas up to `completion_tokens`, so the
model learns to end where a rollout's decoder cuts. The policy ends partly right: it holds the right and the
buggy answer of every template, and only execution rewards tell them apart. Training stops after a fixed
number of steps (chosen on the RL split, before any RL, when the demonstrations were all correct).

The model is of `model.family`'s policy (actors/policy.py): a tiny Dream or LLaDA trained with the masked-diffusion
SFT loss under its head, or (`causal`) the AR-GRPO baseline's causal Qwen2, trained the same way (same tokenizer
recipe, prompts and demonstrations, buggy half included) with next-token cross entropy up to <|im_end|>.

The result is cached in `<cache_root>/warmstart-<hash>/`, the hash covering the settings, the task family
version and the training file, so a second demo skips it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.dllm import derived_seed, left_pad, lr_lambda
from actors.policy import policy_for
from actors.dllm.tokenizer import EOS, IM_END, end_token_ids
from actors.prompts import build_chat_prompt, encode_prompt
from orchestrator.config import TinyModelConfig
from orchestrator.data import load_prompts
from orchestrator.demo.tasks import FAMILY_VERSION, answer_text, buggy_reference, is_buggy_demo
from orchestrator.errors import UserError
from orchestrator.placement import CPU_KERNELS

DONE_FILE = "warmstart.json"
RECIPE_VERSION = 6  # bump when the training recipe changes, so stale caches are not reused (6: CPU kernels pinned)
LR_FLOOR = 0.1  # the cosine schedule ends at this fraction of `lr`


@dataclass(frozen=True)
class WarmStartSettings:
    seed: int = 0
    model: TinyModelConfig = field(default_factory=lambda: TinyModelConfig(
        hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, vocab_size=4096))
    max_prompt_tokens: int = 128
    completion_tokens: int = 48  # K: the canvas rollouts decode (rollout.max_new_tokens)
    # past the steep part of the curve measured on the RL split with all-correct demonstrations (1100 steps -> 2% pass@1
    # at T=0, 1300 -> 35%, 1500 -> 76%); with the buggy half, greedy pass@1 on the RL split of seeds 0/1/2 is 40/6/61%
    # at 1800. README "The warm start's length" has the held-out results against 1300's
    steps: int = 1800
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    threads: int = 2
    # this fraction of the demonstrations carries one plausible bug (`orchestrator.demo.tasks.buggy_reference`), so the
    # policy holds the right and the buggy answer of every template and execution rewards have something to fix
    buggy_fraction: float = 0.5

    def key(self, train_path: Path) -> str:
        # the CPU kernels this process trains with: a warm start trained unpinned (a library caller that did not set
        # CPU_KERNELS, a user who chose other kernels) has other weights and must not be reused by a pinned run
        kernels = {name: os.environ.get(name) for name in sorted(CPU_KERNELS)}
        payload = json.dumps({"settings": dataclasses.asdict(self), "family": FAMILY_VERSION, "recipe": RECIPE_VERSION,
                              "train": hashlib.sha256(train_path.read_bytes()).hexdigest(), "kernels": kernels},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_dir_for(settings: WarmStartSettings, cache_root: str | Path, train_path: str | Path) -> Path:
    return Path(cache_root) / f"warmstart-{settings.key(Path(train_path))}"


def warm_start(settings: WarmStartSettings, cache_root: str | Path, train_path: str | Path,
               log=print) -> Path:
    """The warm-start model directory (an HF dir `build_model` loads): from the cache, else trained now."""
    train_path = Path(train_path)
    out = cache_dir_for(settings, cache_root, train_path)
    if (out / DONE_FILE).is_file():
        log(f"warm start: cached in {out}")
        return out
    problems, skipped = load_prompts(train_path)
    if skipped:
        raise UserError(f"warm start: {train_path} has {len(skipped)} bad rows; first: {skipped[0]}")
    missing = [p["task_id"] for p in problems if not p.get("reference")]
    if missing:
        raise UserError(f"warm start: problem {missing[0]!r} in {train_path} has no reference solution")
    t0 = time.perf_counter()
    model, tokenizer, report = train_warm_start(settings, problems, log=log)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy_for(settings.model.family).save(model, tokenizer, tmp)
    report.update(settings=dataclasses.asdict(settings), train_path=str(train_path),
                  wall_s=round(time.perf_counter() - t0, 1))
    (tmp / DONE_FILE).write_text(json.dumps(report, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"warm start: saved to {out} ({report['wall_s']:.0f} s)")
    return out


def sft_texts(problem: dict, buggy_fraction: float = 0.0, seed: int = 0) -> tuple[list[dict], str]:
    """(chat messages of the prompt, completion text ending in <|im_end|>) for one problem; the demonstration
    is the buggy reference for the problems `is_buggy_demo(task_id, buggy_fraction, seed)` picks."""
    reference = problem["reference"]
    if is_buggy_demo(problem["task_id"], buggy_fraction, seed):
        reference = buggy_reference(reference) or reference
    return build_chat_prompt(problem), answer_text(reference) + IM_END


def train_warm_start(settings: WarmStartSettings, problems: list[dict], log=print):
    """Tokenizer + tiny model trained with the SFT loss on `problems`; returns (model, tokenizer, report)."""
    torch.set_num_threads(settings.threads)
    s = settings
    corpus = []
    for p in problems:
        messages, completion = sft_texts(p, s.buggy_fraction, s.seed)
        corpus += [m["content"] for m in messages] + [completion]
    policy = policy_for(s.model.family)  # Dream, LLaDA or the AR baseline's causal Qwen2
    model, tokenizer = policy.build_tiny(s.model.spec(corpus, s.seed))
    with tempfile.TemporaryDirectory() as saved:
        # Train on the tokenizer exactly as rollout workers and `diffurl eval` will load it from the model dir
        # (a reloaded dir may tokenize differently from the in-memory tokenizer, e.g. digits one by one).
        policy.save(model, tokenizer, saved)
        model, tokenizer = policy.load(saved)
    end_ids = end_token_ids(tokenizer)
    prompts, completions = encode_examples(tokenizer, problems, s.max_prompt_tokens, s.completion_tokens,
                                           s.buggy_fraction, s.seed)
    log(f"warm start: {len(problems)} problems, vocab {len(tokenizer)}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {s.steps} SFT steps of {s.batch_size}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.99), weight_decay=s.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup=s.warmup_steps, total=s.steps,
                                                                      floor=LR_FLOOR))
    order = random.Random(s.seed)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(s.steps):
        rows = order.sample(range(len(prompts)), s.batch_size)
        prompt_ids, prompt_mask = left_pad([prompts[r] for r in rows], tokenizer.pad_token_id)  # [B, P]
        completion_ids = completions[rows]  # [B, K]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+K]
        attention_mask = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)  # [B, P+K]
        loss = policy.sft_loss(model, input_ids, attention_mask, completion_ids, seed=derived_seed(s.seed, "sft", step),
                               end_ids=end_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % max(1, s.steps // 10) == 0 or step + 1 == s.steps:
            recent = sum(losses[-20:]) / len(losses[-20:])
            log(f"warm start: step {step + 1}/{s.steps}  loss {recent:.3f}  {time.perf_counter() - t0:.0f} s")
    model.eval()
    window = max(1, min(20, s.steps // 4))  # loss averaged over the first / last `window` steps
    return model, tokenizer, {"first_loss": sum(losses[:window]) / window,
                              "final_loss": sum(losses[-window:]) / window, "steps": s.steps}


def encode_examples(tokenizer, problems: list[dict], max_prompt_tokens: int, completion_tokens: int,
                    buggy_fraction: float = 0.0, seed: int = 0):
    """(prompt id lists, completion ids [N, K]): each completion padded with <|endoftext|> to K tokens."""
    prompts, completions = [], []
    for p in problems:
        messages, completion = sft_texts(p, buggy_fraction, seed)
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if len(ids) > completion_tokens:
            raise UserError(f"warm start: the answer of {p['task_id']!r} takes {len(ids)} tokens, more than "
                            f"completion_tokens={completion_tokens}; raise it (and rollout.max_new_tokens)")
        prompts.append(encode_prompt(tokenizer, messages, max_prompt_tokens))
        completions.append(ids + [tokenizer.convert_tokens_to_ids(EOS)] * (completion_tokens - len(ids)))
    return prompts, torch.tensor(completions, dtype=torch.long)
