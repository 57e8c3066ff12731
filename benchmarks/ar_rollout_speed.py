"""AR rollout speed: vLLM (the `rollout.engine: vllm` path) against HF `generate`, side by side in one process.

Not a test: it prints the ratio measured in this process and asserts nothing.

The same tiny causal Qwen2 (the AR demo's warm start when --model is given, else a random-init one with the demo's
shape and a BPE trained on the task family), the same prompts (the demo's RL split through the rollout chat
prompt), G=16 completions per prompt at the rollout temperature (1.0, top-p 0.95), 48 new tokens, stop at
<|im_end|>. vLLM: one `generate` of all prompts x G requests (each its own seed), as a rollout worker issues
them. HF: `generate` of each prompt's G rows as one batch (num_return_sequences=G, KV cache on), the usual
HF rollout loop. Tokens/s counts sampled tokens, up to and including the stop token. One warm-up call each.

    .venv/bin/python benchmarks/ar_rollout_speed.py [--model .cache/diffurl/warmstart-KEY] [--prompts 8] [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a causal model directory (default: a random-init tiny one)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    from actors.causal import build_causal_model
    from actors.dllm import save_model
    from actors.dllm.tokenizer import end_token_ids
    from actors.prompts import build_chat_prompt, encode_prompt
    from actors.vllm_engine import VllmEngine
    from orchestrator.config import TinyModelConfig
    from orchestrator.data import load_prompts
    from orchestrator.demo.tasks import write_splits
    from orchestrator.run import tokenizer_corpus

    tmp = Path(tempfile.mkdtemp(prefix="ar-bench-"))
    splits = write_splits(tmp / "tasks", 0)
    problems = load_prompts(splits["rl"])[0][:args.prompts]
    model_dir = args.model
    if model_dir is None:
        shape = TinyModelConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=256, vocab_size=4096)
        model, tokenizer = build_causal_model(shape.spec(tokenizer_corpus(load_prompts(splits["train"])[0]), 0))
        model_dir = tmp / "model"
        save_model(model, tokenizer, model_dir)
    model, tokenizer = build_causal_model(model_dir)
    model.eval()
    prompts = [encode_prompt(tokenizer, build_chat_prompt(p), 128) for p in problems]
    ends, G, K = end_token_ids(tokenizer), args.group, args.max_new_tokens
    print(f"model {model_dir}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
          f"{len(prompts)} prompts x G={G}, {K} new tokens, T=1.0 top-p 0.95; torch threads {torch.get_num_threads()}")

    engine = VllmEngine(str(model_dir), max_model_len=128 + K, kv_cache_mb=256)

    def run_vllm() -> int:
        rows = engine.generate([p for p in prompts for _ in range(G)], temperature=1.0, top_p=0.95, max_tokens=K,
                               seeds=list(range(len(prompts) * G)), stop_ids=ends)
        return sum(len(r.token_ids) for r in rows)

    @torch.no_grad()
    def run_hf() -> int:
        tokens = 0
        for p in prompts:
            ids = torch.tensor([p])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_p=0.95, max_new_tokens=K, num_return_sequences=G, eos_token_id=ends,
                                 pad_token_id=tokenizer.pad_token_id)
            for row in out[:, len(p):].tolist():
                cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
                tokens += cut
        return tokens

    results = {}
    for name, fn in (("vLLM", run_vllm), ("HF generate", run_hf)):
        fn()  # warm-up
        seconds, tokens = 0.0, 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tokens += fn()
            seconds += time.perf_counter() - t0
        results[name] = tokens / seconds
        print(f"{name:12s} {tokens:7d} tokens in {seconds:6.2f} s: {tokens / seconds:8.0f} tokens/s")
    print(f"ratio vLLM / HF generate: {results['vLLM'] / results['HF generate']:.2f}x")


if __name__ == "__main__":
    main()
