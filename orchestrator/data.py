"""Prompt datasets: the one row reader (JSON lines or a JSON array, gzipped or not, and Parquet), problems, and
the AceCode-87K converter (`diffurl data convert --hard-subset`). Which format a file is in, and how its rows
become problems: orchestrator/formats.py. Chat prompts are built in `actors.prompts`.

A problem (the schema `diffurl sandbox score` takes) is a dict with
    task_id: str, question: str (the task, with the function signature), entry_point: str,
    tests: list[str] (`assert f(...) == literal` lines), reference: str | None (a correct solution).
Bad rows are skipped and reported with their line (JSONL) or row (Parquet) number, never a crash.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.errors import UserError
from sandbox_workers.judge import compile_problem

REQUIRED_FIELDS = {"task_id": str, "question": str, "entry_point": str, "tests": list}
JSON_LINES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")  # one JSON object per line, or one JSON array
FORMATS = ".jsonl, .json (lines or an array), either gzipped (.gz), or .parquet"
SIGNATURE_PREFIX = "Please complete the following problem:"  # DiffuCoder's signature copies of AceCode rows
SIGNATURE_SUFFIX = "/signature"  # ... keep their row's id: here they are `{id}/signature`

# AceCode hard subset, as apple/ml-diffucoder `recipes/process_data.py` (difficulty="hard") selects it.
ACECODE_MODELS = ("qwen_coder_2.5", "llama3_instruct")
HARD_MEAN_PERCENTILE = 20  # keep rows whose mean pass rate is <= this percentile of all means
HARD_STD_PERCENTILE = 40  # ... and whose pass-rate std is >= this percentile of all stds


def load_prompts(path: str | Path, fmt: str = "auto", log=print) -> tuple[list[dict], list[str]]:
    """Training problems from a file in any known format (`orchestrator.formats`: the project's own, AceCode,
    HumanEval, MBPP, EvalPlus; recognised from its columns, or `fmt` as data.format names it), and the skipped
    rows' reasons. One line naming the format goes to `log`."""
    from orchestrator.formats import load_problems

    problems, skipped, _ = load_problems(path, fmt, log=log, what="data.format")
    return problems, skipped


class RowPlace(NamedTuple):
    """Where a row stands in its file, counted from 1; prints as `line 3` (JSON lines), `item 3` (a JSON array)
    or `row 3` (Parquet)."""
    unit: str  # "line" | "item" | "row"
    number: int

    def __str__(self) -> str:
        return f"{self.unit} {self.number}"


def read_rows(path: str | Path) -> Iterator[tuple[RowPlace, dict | str]]:
    """(where, row) per non-blank row of a JSON-lines or JSON-array (.jsonl, .json, .jsonl.gz, .json.gz) or Parquet
    file, in file order;
    `row` is the reason string instead when that row is not a JSON object. A file that cannot be read at all
    (missing, another format, not UTF-8, broken Parquet) is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset {path}: not found; expected a {FORMATS} file")
    name = path.name.lower()
    if name.endswith(JSON_LINES):
        yield from _read_jsonl(path)
    elif name.endswith(".parquet"):
        yield from _read_parquet(path)
    else:
        raise UserError(f"dataset {path}: unsupported format {path.suffix.lower() or '(no suffix)'!r}; "
                        f"expected {FORMATS}")


def infer_entry_point(tests: list[str]) -> str | None:
    """The function the tests call most often, ignoring builtins: `assert add(1, 2) == 3` -> 'add'."""
    calls: Counter[str] = Counter()
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
                calls[node.func.id] += 1
    return calls.most_common(1)[0][0] if calls else None


@dataclass
class ConversionReport:
    read: int = 0
    written: int = 0
    hard_kept: int = 0  # rows passing the hard filter (before signature variants are added)
    thresholds: dict = field(default_factory=dict)  # {"mean_max": ..., "std_min": ...} when hard_only
    skipped: list[str] = field(default_factory=list)


def convert_acecode(in_path: str | Path, out_path: str | Path, hard_only: bool = True,
                    signature_variants: bool = True) -> ConversionReport:
    """AceCode-87K rows (local JSONL or Parquet) -> problems JSONL, optionally only the hard subset.

    Hard subset, as apple/ml-diffucoder `recipes/process_data.py` (the script behind the paper's 21K hard
    prompts) selects it: for each row, `accs` = the pass rates of the inferences by the models
    `qwen_coder_2.5` and `llama3_instruct`; thresholds over the whole input: mean_max = 20th percentile of
    mean(accs), std_min = 40th percentile of std(accs) (population std); keep rows with
    mean(accs) <= mean_max and std(accs) >= std_min. Rows without those models' pass rates are skipped.

    `signature_variants` (the same script's `transform_question_format`): for each kept row whose question
    does not say "you", also emit a copy whose question is wrapped under the signature of the best-passing
    inference (`Please complete the following problem:` + `def ...:` + the question as its docstring).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    report = ConversionReport()
    candidates: list[tuple[dict, list[float]]] = []
    for where, row in read_rows(in_path):
        report.read += 1
        if isinstance(row, str):
            report.skipped.append(f"{where}: {row}")
            continue
        problem, accs, reason = _acecode_problem(row)
        if reason is not None:
            report.skipped.append(f"{where}: {reason}")
            continue
        if hard_only and not accs:
            report.skipped.append(f"{where}: no pass rates from {', '.join(ACECODE_MODELS)}")
            continue
        candidates.append(((problem, row), accs))
    if hard_only and candidates:
        means = np.array([np.mean(a) for _, a in candidates])
        stds = np.array([np.std(a) for _, a in candidates])
        mean_max, std_min = np.percentile(means, HARD_MEAN_PERCENTILE), np.percentile(stds, HARD_STD_PERCENTILE)
        report.thresholds = {"mean_max": float(mean_max), "std_min": float(std_min)}
        candidates = [c for c, m, s in zip(candidates, means, stds) if m <= mean_max and s >= std_min]
    report.hard_kept = len(candidates)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as out:
        for (problem, row), _ in candidates:
            variants = [problem]
            if signature_variants and (signature := _signature_variant(problem, row)) is not None:
                variants.append(signature)
            for p in variants:
                out.write(json.dumps(p) + "\n")
                report.written += 1
    return report


def convert(src: str | Path, out: str | Path, fmt: str = "auto", hard_subset: bool = False,
            log=print) -> ConversionReport:
    """`diffurl data convert`: a file in any known format -> the project's training JSONL at `out`. With
    `hard_subset`, raw AceCode rows through `convert_acecode` (the paper's hard subset and its signature copies,
    as DiffuCoder's process_data.py makes acecode_hard.jsonl); any other format is refused (no `inferences`)."""
    from orchestrator.formats import load_problems, recognise

    chosen = recognise(src, fmt)
    if hard_subset:
        if chosen.name != "acecode":
            already = " (already DiffuCoder's hard subset)" if chosen.name == "acecode-hard" else ""
            raise UserError(f"--hard-subset: {src} holds {chosen.name} rows{already}, without 'inferences'; the hard "
                            f"subset is chosen by the pass rates of {' and '.join(ACECODE_MODELS)} in raw "
                            "AceCode-87K/89K rows (columns id, question, test_cases, inferences)")
        log(f"dataset {src}: {chosen.title} ({chosen.name})")
        return convert_acecode(src, out)
    problems, skipped, _ = load_problems(src, chosen.name, log=log)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for problem in problems:
            f.write(json.dumps(problem) + "\n")
    return ConversionReport(read=len(problems) + len(skipped), written=len(problems), skipped=skipped)


def _acecode_problem(row: dict) -> tuple[dict | None, list[float], str | None]:
    missing = [k for k in ("id", "question", "test_cases") if not row.get(k)]
    if missing:
        return None, [], f"missing field {missing[0]!r}"
    if not isinstance(row["question"], str):
        return None, [], "question is not a string"
    tests = row["test_cases"]
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        return None, [], "test_cases is not a list of strings"
    entry_point = infer_entry_point(tests)
    if entry_point is None:
        return None, [], "cannot infer the entry point from test_cases"
    inferences = [i for i in row.get("inferences") or [] if isinstance(i, dict)]
    accs = [float(i["pass_rate"]) for i in inferences
            if i.get("model_name") in ACECODE_MODELS and i.get("pass_rate") is not None]
    passing = [i for i in inferences if i.get("pass_rate") == 1.0 and i.get("completion")]
    task_id = str(row["id"])
    if row["question"].lstrip().startswith(SIGNATURE_PREFIX):  # a signature copy: same id, a distinct prompt
        task_id += SIGNATURE_SUFFIX
    problem = {"task_id": task_id, "question": row["question"], "entry_point": entry_point,
               "tests": list(tests), "reference": passing[0]["completion"] if passing else None,
               "source": row.get("source")}
    return problem, accs, None


def _signature_variant(problem: dict, row: dict) -> dict | None:
    if "you" in problem["question"].lower():
        return None
    inferences = [i for i in row.get("inferences") or [] if isinstance(i, dict) and i.get("completion")]
    if not inferences:
        return None
    best = max(inferences, key=lambda i: i.get("pass_rate") or 0.0)["completion"]
    signature = best.split(":\n")[0].strip()
    if not signature.startswith("def "):
        return None
    question = (f"{SIGNATURE_PREFIX}\n```\n{signature}:\n    \"\"\"\n    {problem['question']}\n"
                f"    \"\"\"\n```\n")
    return {**problem, "task_id": problem["task_id"] + SIGNATURE_SUFFIX, "question": question}


def _as_problem(row: dict) -> tuple[dict | None, str | None]:
    if isinstance(row.get("task_id"), int) and not isinstance(row["task_id"], bool):
        row = {**row, "task_id": str(row["task_id"])}
    for name, kind in REQUIRED_FIELDS.items():
        if row.get(name) in (None, "", []):
            return None, f"missing field {name!r}"
        if not isinstance(row[name], kind):
            return None, f"field {name!r} must be a {kind.__name__}, got {type(row[name]).__name__}"
    if not all(isinstance(t, str) and t.strip() for t in row["tests"]):
        return None, "field 'tests' must be a list of non-empty strings"
    if not row["entry_point"].isidentifier():
        return None, f"entry_point {row['entry_point']!r} is not a Python identifier"
    reference = row.get("reference")
    if reference is not None and not isinstance(reference, str):
        return None, f"field 'reference' must be a string or null, got {type(reference).__name__}"
    problem = {**row, "reference": reference}
    try:
        compile_problem(problem)  # what the sandbox will judge: tests that parse and call the entry point
    except ValueError as exc:
        return None, str(exc)
    return problem, None


def _read_jsonl(path: Path) -> Iterator[tuple[RowPlace, dict | str]]:
    """JSON lines, or (a file whose text starts with `[`) one JSON array, its items counted as `item N`."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            head = f.read(4096).lstrip("\ufeff \t\r\n")
            f.seek(0)
            if head.startswith("["):
                yield from _read_json_array(path, f)
                return
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    row = f"not valid JSON ({exc.msg})"
                else:
                    row = row if isinstance(row, dict) else f"expected an object, got {type(row).__name__}"
                yield RowPlace("line", number), row
    except UnicodeDecodeError:
        raise UserError(f"dataset {path}: not UTF-8 text; expected JSON lines") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise UserError(f"dataset {path}: unreadable gzip ({exc})") from None


def _read_json_array(path: Path, f) -> Iterator[tuple[RowPlace, dict | str]]:
    try:
        items = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"dataset {path}: not valid JSON ({exc.msg}, line {exc.lineno}); expected JSON lines "
                        "or one JSON array of objects") from None
    if not isinstance(items, list):
        raise UserError(f"dataset {path}: expected JSON lines or one JSON array of objects")
    for number, row in enumerate(items, start=1):
        why = f"expected an object, got {type(row).__name__}"
        yield RowPlace("item", number), row if isinstance(row, dict) else why


def _read_parquet(path: Path) -> Iterator[tuple[RowPlace, dict | str]]:
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"dataset {path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield RowPlace("row", number), row
