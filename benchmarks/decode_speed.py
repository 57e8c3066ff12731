"""Decoding speed: the reference decoder vs the fast one (threshold, blocks, KV cache), side by side.

Not a test: it prints ratios measured in one process and asserts nothing.

(a) The demo's checkpoints (`make demo`: the warm start and the trained run) on the demo's held-out split, with
    the demo's decoding settings (configs/demo.yaml: 48 positions, alg entropy, top_p 0.95). For each
    checkpoint: the reference decoder (steps = max_new_tokens) and fast configurations (thresholds x caches x
    block lengths), at T=0 (n=1) and at the rollout temperature (n=--samples): decode seconds, forwards,
    tokens/s, tokens per row-forward, the speed ratio to the reference at the same T, and pass@1 in the real
    sandbox (`orchestrator.evaluate.evaluate`, the `diffurl eval` path).
(b) A random-init DiffuCoder-shaped model (Qwen2 layout, bidirectional; default hidden 512, 12 layers, 8 heads,
    2 KV heads, vocab 8192: about DiffuCoder-7B's head-to-body cost ratio), a prompt of 200 random ordinary
    tokens, a 256-position canvas in blocks of 32, threshold 1.5 (a random model is never that confident:
    exactly one token per forward): tokens/s with cache none, prefix and dual, all at the same forwards
    (printed), and each one's ratio to none. `generate_fast` is called with stop_at_end=False so that an end
    token sampled by the random model cannot end a row early and make the forwards differ.

    .venv/bin/python benchmarks/decode_speed.py --part a --warm .cache/diffurl/warmstart-KEY --trained runs/demo-STAMP
    .venv/bin/python benchmarks/decode_speed.py --part a ... --thresholds 0.9,0.7,0.5 --block-lengths whole,16 --out a.json
    .venv/bin/python benchmarks/decode_speed.py --part b [--hidden 512 --layers 12 --heads 8 --kv-heads 2 --batch 1]
    .venv/bin/python benchmarks/decode_speed.py --part b --layers 2 --hidden 128      # smoke: seconds

--warm / --trained take what `diffurl eval` takes (an HF model dir, a run dir, checkpoints/stepNNNNNN).
Torch uses every core this process may run on (torch.set_num_threads); on a shared machine the ratios are
steadier than the absolute tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _csv(text: str, cast=float) -> list:
    return [cast(item) for item in text.split(",") if item.strip()]


def _block_lengths(text: str) -> list[int | None]:
    return [None if item.strip() in ("whole", "none") else int(item) for item in text.split(",") if item.strip()]


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table of `rows` with (header, key, format) columns."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format(row[key], fmt) if row[key] is not None else "-"
                                       for _, key, fmt in columns) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- (a) demo checkpoints

def _label(decode) -> str:
    if decode.decoder == "reference":
        return f"reference ({decode.steps} steps)"
    rule = f"factor {decode.factor:g}" if decode.factor is not None else f"threshold {decode.threshold:g}"
    block = f"block {decode.block_length}" if decode.block_length else "one block"
    return f"fast {rule}, {block}, cache {decode.cache}"


def part_a(args) -> list[dict]:
    import ray

    from orchestrator.config import load_config
    from orchestrator.demo.flow import DEFAULT_CACHE, _task_splits
    from actors.decoder_settings import DecoderSettings
    from orchestrator.evaluate import EvalOptions, evaluate, load_eval_problems, resolve_checkpoint
    from sandbox_workers import SandboxPool

    checkpoints = {name: resolve_checkpoint(path) for name, path in (("warm", args.warm), ("trained", args.trained))
                   if path}
    if not checkpoints:
        raise SystemExit("part a: give --warm DIR and/or --trained DIR (what `make demo` wrote)")
    problems_path = args.problems or _task_splits(DEFAULT_CACHE, 0, lambda *_: None)["heldout"]
    problems = load_eval_problems(str(problems_path), args.limit)
    cfg = load_config(args.config)
    ro = cfg.rollout
    reference = DecoderSettings(max_new_tokens=ro.max_new_tokens, steps=ro.max_new_tokens, alg=ro.alg, top_p=ro.top_p)
    options = EvalOptions(max_prompt_tokens=cfg.data.max_prompt_tokens, batch_size=args.batch_size, seed=cfg.run.seed)
    settings = [reference] + [replace(reference, decoder="fast", threshold=threshold, block_length=block, cache=cache)
                              for block in _block_lengths(args.block_lengths) for threshold in _csv(args.thresholds)
                              for cache in args.caches.split(",")]
    temperatures = [0.0, ro.temperature] if ro.temperature > 0 else [0.0]
    print(f"part a: {len(problems)} problems from {problems_path}, {ro.max_new_tokens} positions, "
          f"T={','.join(f'{t:g}' for t in temperatures)} (n=1, {args.samples}), {torch.get_num_threads()} threads",
          file=sys.stderr)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="diffurl-bench")
    pool = SandboxPool(num_workers=args.sandbox_workers, require_format=False, name_prefix="bench-sandbox",
                       test_timeout_s=cfg.sandbox.test_timeout_s, memory_mb=cfg.sandbox.memory_mb)
    rows = []
    try:
        _warm_up(next(iter(checkpoints.values())), problems[:2], pool, settings, options)
        for name, model_dir in checkpoints.items():
            for decode in settings:
                results = evaluate(model_dir, problems, pool, temperatures=temperatures, samples=args.samples,
                                   settings=decode, options=options, log=lambda *_: None)
                for res in results:
                    rows.append({"checkpoint": name, "decoder": _label(decode), "T": res.temperature,
                                 "n": res.samples, "decode_s": res.decode_s, "forwards": res.forwards,
                                 "tokens_per_s": res.tokens_per_s, "tokens_per_forward": res.tokens_per_forward,
                                 "pass_at_1": res.pass_at[1], "format_rate": res.format_rate,
                                 "settings": asdict(decode)})
                    print(f"  {name} {_label(decode)} T={res.temperature:g}: {res.decode_s:.2f} s, "
                          f"{res.forwards} forwards, pass@1 {res.pass_at[1]:.3f}", file=sys.stderr)
    finally:
        pool.shutdown()
        if started:
            ray.shutdown()
    for row in rows:
        ref = next(r for r in rows if r["checkpoint"] == row["checkpoint"] and r["T"] == row["T"]
                   and r["settings"]["decoder"] == "reference")
        row["speedup"] = ref["decode_s"] / max(row["decode_s"], 1e-9)
    print(_table(rows, [("checkpoint", "checkpoint", ""), ("decoder", "decoder", ""), ("T", "T", "g"), ("n", "n", "d"),
                        ("decode s", "decode_s", ".2f"), ("forwards", "forwards", "d"),
                        ("tokens/s", "tokens_per_s", ".0f"), ("tokens/forward", "tokens_per_forward", ".2f"),
                        ("speed vs reference", "speedup", ".2f"), ("pass@1", "pass_at_1", ".3f")]))
    return rows


def _warm_up(model_dir, problems, pool, settings, options) -> None:
    """One untimed eval of two problems per decoder setting: one-time costs out of the first measured row."""
    from orchestrator.evaluate import evaluate

    for decode in {(s.decoder, s.cache): s for s in settings}.values():
        evaluate(model_dir, problems, pool, temperatures=[0.0], samples=1, settings=decode, options=options,
                 log=lambda *_: None)


# ----------------------------------------------------------------------------------------- (b) cache speed

def _random_texts(count: int, seed: int = 0) -> list[str]:
    """Code-like random text: enough distinct pairs for the BPE trainer to reach a vocab of several thousand."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz_()=:.,+-*0123456789"
    return [" ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9))) for _ in range(200))
            for _ in range(count)]


def part_b(args) -> list[dict]:
    from actors.dllm import build_model, generate_fast
    from actors.dllm.tokenizer import SPECIAL_TOKENS

    intermediate = args.intermediate or max(64, round(args.hidden * 37 / 7 / 64) * 64)  # DiffuCoder-7B: 18944/3584
    config = dict(hidden_size=args.hidden, intermediate_size=intermediate, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                  max_position_embeddings=max(512, args.prompt + args.canvas))
    dtype = getattr(torch, args.dtype)
    model, tokenizer = build_model({"config": config, "tokenizer": {"train_texts": _random_texts(200),
                                                                     "vocab_size": args.vocab}, "seed": 0},
                                   dtype=dtype)
    model.to(args.device).eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(len(SPECIAL_TOKENS), len(tokenizer), (args.prompt,), generator=generator).tolist()
               for _ in range(args.batch)]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    canvas = args.forwards_limit or args.canvas
    print(f"part b: random model hidden {args.hidden}, {args.layers} layers, {args.heads} heads / {args.kv_heads} KV, "
          f"intermediate {intermediate}, vocab {len(tokenizer)}, {params:.1f}M parameters, {args.dtype} on "
          f"{args.device} ({torch.get_num_threads()} threads); batch {args.batch}, prompt {args.prompt}, "
          f"canvas {canvas}, block {args.block_length}, threshold {args.threshold:g}", file=sys.stderr)
    if args.forwards_limit:
        print(f"NOTE --forwards-limit {args.forwards_limit}: only a {canvas}-position canvas is decoded, "
              f"not the full {args.canvas}", file=sys.stderr)

    def run(cache: str, length: int):
        return generate_fast(model, tokenizer, prompts, max_new_tokens=length, temperature=0.0, alg="entropy",
                             threshold=args.threshold, block_length=args.block_length, cache=cache,
                             stop_at_end=False, seed=0)

    rows = []
    for cache in ("none", "prefix", "dual"):
        run(cache, min(canvas, args.block_length * 2))  # warm-up: one-time costs out of the timing
        best = None
        for _ in range(args.repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = run(cache, canvas)
            seconds = time.perf_counter() - t0  # texts are decoded on the host: the device work is done
            best = seconds if best is None else min(best, seconds)
        rows.append({"cache": cache, "forwards": out.forwards, "seconds": best,
                     "tokens_per_s": args.batch * canvas / best, "tokens_per_forward": out.tokens_per_forward})
        print(f"  cache {cache}: {best:.2f} s, {out.forwards} forwards", file=sys.stderr)
    for row in rows:
        row["vs_none"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(_table(rows, [("cache", "cache", ""), ("forwards", "forwards", "d"), ("seconds", "seconds", ".2f"),
                        ("tokens/s", "tokens_per_s", ".1f"), ("tokens/forward", "tokens_per_forward", ".2f"),
                        ("tokens/s vs none", "vs_none", ".2f")]))
    if len({row["forwards"] for row in rows}) != 1:
        print("NOTE: the forwards differ between caches, so the ratios are not at equal forwards", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--out", help="write the rows as JSON here ({'a': [...], 'b': [...]})")
    parser.add_argument("--threads", type=int, default=_cores(), help="torch threads (default: every usable core)")
    a = parser.add_argument_group("part a: demo checkpoints")
    a.add_argument("--warm", help="the warm start: HF model dir, run dir or checkpoint")
    a.add_argument("--trained", help="the trained policy: HF model dir, run dir or checkpoint")
    a.add_argument("--problems", help="problems JSONL (default: the demo's held-out split)")
    a.add_argument("--limit", type=int, default=None, help="only the first N problems")
    a.add_argument("--samples", type=int, default=4, help="samples per problem at the rollout temperature")
    a.add_argument("--config", default=str(REPO_ROOT / "configs" / "demo.yaml"),
                   help="decoding settings come from its rollout section (default configs/demo.yaml)")
    a.add_argument("--thresholds", default="0.9,0.7,0.5")
    a.add_argument("--caches", default="none,prefix")
    a.add_argument("--block-lengths", default="whole", help="comma-separated; 'whole' = one block, e.g. whole,16")
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--sandbox-workers", type=int, default=1)
    b = parser.add_argument_group("part b: random DiffuCoder-shaped model")
    b.add_argument("--hidden", type=int, default=512)
    b.add_argument("--layers", type=int, default=12)
    b.add_argument("--heads", type=int, default=8)
    b.add_argument("--kv-heads", type=int, default=2)
    b.add_argument("--intermediate", type=int, default=None, help="default: hidden x 37/7, DiffuCoder-7B's ratio")
    b.add_argument("--vocab", type=int, default=8192, help="BPE vocab trained on random text (default 8192)")
    b.add_argument("--prompt", type=int, default=200, help="prompt tokens (random ordinary tokens)")
    b.add_argument("--canvas", type=int, default=256, help="completion positions")
    b.add_argument("--block-length", type=int, default=32)
    b.add_argument("--threshold", type=float, default=1.5, help="> 1: one token per forward")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--repeat", type=int, default=1, help="timed decodes per cache (best is reported)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    b.add_argument("--forwards-limit", type=int, default=None,
                   help="SHORTCUT: decode only this many positions (labelled in the output); default the full canvas")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {}
    if args.part == "a" or (args.part == "all" and (args.warm or args.trained)):
        result["a"] = part_a(args)
    elif args.part == "all":
        print("part a skipped: no --warm / --trained checkpoint given", file=sys.stderr)
    if args.part in ("b", "all"):
        result["b"] = part_b(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
