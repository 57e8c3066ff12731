"""CodeI/O as training problems: `diffurl data codeio --out DIR` (train.jsonl, heldout.jsonl, report.json).

CodeI/O (reasoning-gym, Apache-2.0: `reasoning_gym/data/codeio.jsonl.gz`, 3,002 rows as JSON lines, and
`codeio-hq.jsonl.gz`, 2,750 rows as one JSON array; 2,508 of the latter share their reference with a row of the
former, so 3,243 distinct tasks) gives each task a description, an input/output spec, a reference `main_solution`
and an input generator (`generate_inputs(rng)` / `generate_input(rng)`, rng a `random.Random`). A task becomes a
problem of the project's own format (orchestrator/data.py): entry point `main_solution`, tests
`assert _same(main_solution(**INPUT), OUTPUT)` with `_same` defined in a setup string (JSON-equal, floats within
a relative 1e-6 / absolute 1e-9), the reference as `reference`.

Nothing from the dataset runs on the trusted side. The inputs and outputs come from the sandbox: one data job per
task (`SandboxPool.outputs` -> `Scorer.output`) runs a driver program holding the task's code as text, which
draws `tests_per_task` distinct inputs from the task's generator under `random.Random(f"{seed}:{task_id}")` (the
global `random` seeded alike), runs the reference on each JSON round-tripped input, and prints one JSON object
(at most MAX_OUTPUT_BYTES) that is parsed here as untrusted data. Each task runs twice, on two different
sandboxes when there are two workers or more, and is kept only when both runs print the same cases. A task is
dropped, with its reason counted in report.json, when a row is malformed, its code imports a module outside the
standard library (the sandbox has nothing else), its generator or reference raises, times out, runs out of
memory, returns what JSON cannot hold, prints too much, is non-deterministic, or when its reference does not pass
its own tests through the judge (`unjudgeable_reason`, the path a candidate takes). Tests over MAX_TEST_CHARS
are left out (a task with none left is dropped).

The split is by task: held out when sha256(f"{seed}:{task_id}") falls under `heldout_fraction`, so a task's
side does not depend on which others convert or on --tasks. The data files are read from the installed
`reasoning_gym` package (located, never imported) or from --source: the wheel, a directory holding the files,
or one codeio*.jsonl.gz file.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import io
import json
import math
import sys
import time
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError

DATA_FILES = ("codeio.jsonl.gz", "codeio-hq.jsonl.gz")
WHEEL_DIR = "reasoning_gym/data/"
GET_DATA = ("pip install --no-deps reasoning-gym==0.1.25 (7 MB, its data files alone) or pass --source PATH (the "
            "reasoning-gym wheel, a directory holding codeio.jsonl.gz / codeio-hq.jsonl.gz, or one such file)")
MAX_FILE_BYTES = 256 << 20  # a data file, decompressed
MAX_OUTPUT_BYTES = 256 << 10  # what one data job may print
MAX_TEST_CHARS = 4000  # a longer test (a large generated input or output) is left out
DRAWS_PER_TEST = 4  # generator draws allowed per test wanted (repeated inputs are drawn again)
ENTRY_POINT = "main_solution"
DATA_CALL = "diffurl_codeio_data"
MARK = "\x1eDIFFURL-CODEIO-DATA\x1e"
REL_TOL, ABS_TOL = 1e-6, 1e-9
REQUIRED = ("task_description", "input_output_spec", "code_sample", "input_generator")
PROGRESS_EVERY_S = 10.0

# The setup string before every test: JSON-equal, floats (and ints against floats) within a tolerance.
SAME = f'''import json as _json
import math as _math


def _eq(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        if a != a or b != b:
            return a != a and b != b
        return _math.isclose(a, b, rel_tol={REL_TOL!r}, abs_tol={ABS_TOL!r})
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _same(got, want):
    try:
        got = _json.loads(_json.dumps(got))
    except (TypeError, ValueError, RecursionError):
        return False
    return _eq(got, want)
'''

# The data job's program (runs in a candidate box): the task's code is text here, executed only when the test box
# calls DATA_CALL, with stdout and stderr swallowed; the one line it writes to fd 1 is MARK + JSON.
DRIVER = '''import io as _io
import json as _json
import os as _os
import random as _random
import sys as _sys

_SOURCE = {source!r}
_GENERATOR = {generator!r}
_SEED = {seed!r}
_N = {n!r}
_DRAWS = {draws!r}
_MAX = {max_bytes!r}
_MARK = {mark!r}


def _why(exc):
    try:
        return (type(exc).__name__ + ": " + str(exc))[:300]
    except BaseException:
        return type(exc).__name__


def _cases():
    _random.seed(_SEED)
    scope = {{"__name__": "__codeio__", "Random": _random.Random}}
    try:
        exec(compile(_SOURCE, "main_solution.py", "exec"), scope)
    except BaseException as exc:
        return {{"error": "import", "detail": _why(exc)}}
    try:
        exec(compile(_GENERATOR, "input_generator.py", "exec"), scope)
    except BaseException as exc:
        return {{"error": "generator", "detail": _why(exc)}}
    generate = scope.get("generate_inputs") or scope.get("generate_input")
    solve = scope.get("main_solution")
    if not callable(generate) or not callable(solve):
        return {{"error": "import", "detail": "no generate_inputs / main_solution function"}}
    rng = _random.Random(_SEED)
    _random.seed(_SEED)
    cases, seen = [], set()
    for _ in range(_DRAWS):
        if len(cases) >= _N:
            break
        try:
            inputs = generate(rng)
        except BaseException as exc:
            return {{"error": "generator", "detail": _why(exc)}}
        if not isinstance(inputs, dict) or not all(isinstance(k, str) for k in inputs):
            return {{"error": "generator", "detail": "returned a " + type(inputs).__name__ + ", not a dict of arguments"}}
        try:
            text = _json.dumps(inputs)
        except BaseException as exc:
            return {{"error": "input-json", "detail": _why(exc)}}
        if text in seen:
            continue
        seen.add(text)
        try:
            output = solve(**_json.loads(text))
        except BaseException as exc:
            return {{"error": "reference", "detail": _why(exc)}}
        try:
            cases.append([text, _json.dumps(output)])
        except BaseException as exc:
            return {{"error": "output-json", "detail": _why(exc)}}
        try:
            again = _json.dumps(solve(**_json.loads(text)))
        except BaseException as exc:
            again = _why(exc)
        if again != cases[-1][1]:
            return {{"error": "nondeterministic", "detail": "the reference gives two outputs for one input"}}
    return {{"cases": cases}}


def {call}():
    saved = _sys.stdout, _sys.stderr
    _sys.stdout = _sys.stderr = _io.StringIO()
    try:
        result = _cases()
    except BaseException as exc:
        result = {{"error": "driver", "detail": _why(exc)}}
    finally:
        _sys.stdout, _sys.stderr = saved
    try:
        text = _json.dumps(result)
    except BaseException as exc:
        text = _json.dumps({{"error": "driver", "detail": _why(exc)}})
    if len(text) > _MAX - 64:
        text = _json.dumps({{"error": "too-large", "detail": str(len(text)) + " characters"}})
    data = (_MARK + text + "\\n").encode()
    while data:
        data = data[_os.write(1, data):]
'''

# The reasons a task is dropped, as report.json counts them.
REASONS = {
    "malformed": "malformed row (a field missing, code that does not parse, no main_solution or generator)",
    "module": "imports a module outside the standard library (the sandbox has nothing else)",
    "import": "its code raises when run",
    "generator": "the input generator raises",
    "reference": "the reference solution raises on a generated input",
    "input-json": "a generated input is not JSON",
    "output-json": "the reference's output is not JSON",
    "timeout": "over the time limit",
    "memory": "over the memory limit",
    "too-large": f"prints over {MAX_OUTPUT_BYTES >> 10} KiB of cases",
    "crashed": "the data job crashed or printed no data",
    "sandbox": "the sandbox failed",
    "nondeterministic": "non-deterministic (two calls of the reference, or two runs, differ)",
    "tests-too-large": f"every generated test is over {MAX_TEST_CHARS} characters",
    "unjudgeable": "its reference fails its own tests through the judge",
}


@dataclass(frozen=True)
class Task:
    task_id: str
    description: str
    spec: str
    code: str
    generator: str
    origin: str  # `codeio.jsonl.gz line 3` / `codeio-hq.jsonl.gz item 7`


@dataclass
class Conversion:
    problems: list[dict]
    dropped: list[dict]  # {task_id, reason (a REASONS key), detail}
    rows: int = 0


# ------------------------------------------------------------------------------------------- reading the data

def data_files(source: str | Path | None = None) -> list[tuple[str, bytes]]:
    """(name, compressed bytes) of CodeI/O's data files: from `source` (a wheel, a directory, or one file), else
    from the installed reasoning_gym package, found without importing it. A UserError, one line, when absent."""
    if source is None:
        spec = importlib.util.find_spec("reasoning_gym")  # a top-level package: located, not executed
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"CodeI/O data not found: {GET_DATA}")
        source = Path(list(spec.submodule_search_locations)[0]) / "data"
    path = Path(source)
    if path.is_dir():
        found = [(name, (path / name).read_bytes()) for name in DATA_FILES if (path / name).is_file()]
        if not found and (path / "data").is_dir():
            return data_files(path / "data")
    elif path.is_file() and path.name.endswith(".whl"):
        try:
            with zipfile.ZipFile(path) as wheel:
                names = set(wheel.namelist())
                found = [(name, wheel.read(WHEEL_DIR + name)) for name in DATA_FILES if WHEEL_DIR + name in names]
        except zipfile.BadZipFile:
            raise UserError(f"--source {path}: not a readable wheel") from None
    elif path.is_file():
        found = [(path.name, path.read_bytes())]
    else:
        raise UserError(f"--source {path}: not found; {GET_DATA}")
    if not found:
        raise UserError(f"CodeI/O data not found in {path} (no {' or '.join(DATA_FILES)}); {GET_DATA}")
    return found


def read_tasks(source: str | Path | None = None) -> tuple[list[Task], list[dict], int]:
    """(distinct tasks in file order, malformed rows as dropped entries, rows read). A task's id is
    `codeio/` + the first 12 hex digits of its reference's SHA-256; a later row with the same reference is the
    same task (codeio-hq repeats 2,508 of codeio's) and is not read again."""
    tasks, malformed, seen, rows = [], [], set(), 0
    for name, blob in data_files(source):
        for where, row in _rows(name, blob):
            rows += 1
            reason = _malformed(row)
            if reason is not None:
                malformed.append({"task_id": f"{name}:{where}", "reason": "malformed", "detail": reason})
                continue
            task_id = "codeio/" + hashlib.sha256(row["code_sample"].encode()).hexdigest()[:12]
            if task_id in seen:
                continue
            seen.add(task_id)
            tasks.append(Task(task_id, row["task_description"].strip(), row["input_output_spec"].strip(),
                              row["code_sample"], row["input_generator"], f"{name} {where}"))
    return tasks, malformed, rows


def _rows(name: str, blob: bytes):
    try:
        with gzip.open(io.BytesIO(blob)) if name.endswith(".gz") else io.BytesIO(blob) as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise UserError(f"CodeI/O data {name}: unreadable gzip ({exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"CodeI/O data {name}: over {MAX_FILE_BYTES >> 20} MiB decompressed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"CodeI/O data {name}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise UserError(f"CodeI/O data {name}: not valid JSON ({exc})") from None
        for number, row in enumerate(items if isinstance(items, list) else [], start=1):
            yield f"item {number}", row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"line {number}", json.loads(line)
            except (ValueError, RecursionError):
                yield f"line {number}", None


def _malformed(row) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    for key in REQUIRED:
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f"missing field {key!r}"
    code, generator = _parse(row["code_sample"]), _parse(row["input_generator"])
    if code is None or generator is None:
        return f"{'code_sample' if code is None else 'input_generator'} does not parse"
    if _signature(code) is None:
        return f"code_sample defines no top-level {ENTRY_POINT}"
    if not any(isinstance(n, ast.FunctionDef) and n.name in ("generate_inputs", "generate_input")
               for n in generator.body):
        return "input_generator defines no generate_inputs / generate_input"
    return None


def _parse(code: str) -> ast.Module | None:
    """The dataset code's syntax tree (never run here), quietly: its old escape sequences warn."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _signature(tree: ast.Module) -> str | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == ENTRY_POINT:
            return f"{ENTRY_POINT}({ast.unparse(node.args)})"
    return None


def outside_stdlib(task: Task) -> list[str]:
    """The top-level modules the task's code imports that the standard library does not have (sorted)."""
    names = set()
    for code in (task.code, task.generator):
        tree = _parse(code)
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(n for n in names if n not in sys.stdlib_module_names)


# ------------------------------------------------------------------------------------------- converting

def data_program(task: Task, tests_per_task: int, seed: int) -> str:
    """The data job's program for `task` (the driver above, the task's code inside it as text)."""
    return DRIVER.format(source=task.code, generator=task.generator, seed=f"{seed}:{task.task_id}",
                         n=tests_per_task, draws=DRAWS_PER_TEST * tests_per_task, max_bytes=MAX_OUTPUT_BYTES,
                         mark=MARK, call=DATA_CALL)


def convert_tasks(tasks: list[Task], pool, *, tests_per_task: int = 8, seed: int = 0, log=print) -> Conversion:
    """Problems (in task order) and dropped tasks with their reasons; `pool` a SandboxPool (its test timeout and
    memory are each data job's limits)."""
    started = time.monotonic()
    dropped: list[dict] = []
    runnable = []
    for task in tasks:
        modules = outside_stdlib(task)
        if modules:
            dropped.append({"task_id": task.task_id, "reason": "module", "detail": ", ".join(modules)})
        else:
            runnable.append(task)
    log(f"codeio: {len(tasks)} tasks, {len(tasks) - len(runnable)} import modules outside the standard library; "
        f"running {len(runnable)} twice in the sandbox ({tests_per_task} tests each, seed {seed})")
    programs = [data_program(t, tests_per_task, seed) for t in runnable]

    def run(indices: list[int], shift: int, phase: str) -> list[dict]:
        jobs = [{"program": programs[i], "call": f"{DATA_CALL}()\n", "entry_point": DATA_CALL,
                 "max_bytes": MAX_OUTPUT_BYTES, "worker": i + shift} for i in indices]
        return pool.outputs(jobs, progress=_progress(phase, started, log))

    first = run(list(range(len(runnable))), 0, "run 1")
    cases: dict[int, list] = {}
    for i, reply in enumerate(first):
        parsed = _parse_reply(reply)
        if isinstance(parsed, dict):
            dropped.append({"task_id": runnable[i].task_id, **parsed})
        else:
            cases[i] = parsed
    again = sorted(cases)
    for i, reply in zip(again, run(again, 1, "run 2")):
        parsed = _parse_reply(reply)
        if isinstance(parsed, dict):
            dropped.append({"task_id": runnable[i].task_id, "reason": "nondeterministic",
                            "detail": f"the second run: {REASONS[parsed['reason']]}: {parsed['detail']}"})
            del cases[i]
        elif parsed != cases[i]:
            dropped.append({"task_id": runnable[i].task_id, "reason": "nondeterministic",
                            "detail": "the two runs printed different cases"})
            del cases[i]
    problems = []
    for i in sorted(cases):
        problem, detail = to_problem(runnable[i], cases[i])
        if problem is None:
            dropped.append({"task_id": runnable[i].task_id, "reason": "tests-too-large", "detail": detail})
        else:
            problems.append(problem)
    problems = _judgeable(problems, pool, dropped, started, log)
    order = {t.task_id: n for n, t in enumerate(tasks)}
    dropped.sort(key=lambda d: order.get(d["task_id"], -1))
    return Conversion(problems, dropped)


def _parse_reply(reply: dict) -> list[tuple[str, str]] | dict:
    """The cases one data job printed, or {reason, detail} when it failed. The stdout is untrusted: bounded,
    parsed as JSON, checked for shape."""
    status, detail = reply.get("status"), str(reply.get("detail") or "")[:300]
    stdout = reply.get("stdout") if isinstance(reply.get("stdout"), str) else ""
    if status == "sandbox_error":
        return {"reason": "sandbox", "detail": detail}
    if status == "timeout":
        return {"reason": "timeout", "detail": detail}
    if status == "memory_limit":
        return {"reason": "memory", "detail": detail}
    if status == "output_limit" or reply.get("stdout_full"):
        return {"reason": "too-large", "detail": "printed over the cap"}
    at = stdout.rfind(MARK)
    if status != "passed" or at < 0:
        return {"reason": "crashed", "detail": f"{status}: {detail}" + (f"; stderr: {reply['stderr_tail'][-200:]}"
                                                                        if reply.get("stderr_tail") else "")}
    try:
        data = json.loads(stdout[at + len(MARK):])
    except (ValueError, RecursionError):
        return {"reason": "crashed", "detail": "printed unreadable data"}
    if isinstance(data, dict) and "error" in data:
        reason = data["error"] if data["error"] in REASONS else "crashed"
        return {"reason": reason, "detail": str(data.get("detail", ""))[:300]}
    cases = data.get("cases") if isinstance(data, dict) else None
    if (not isinstance(cases, list) or not cases
            or not all(isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in cases)):
        return {"reason": "crashed", "detail": "printed no cases" if cases == [] else "printed malformed cases"}
    return [tuple(c) for c in cases]


def to_problem(task: Task, cases: list[tuple[str, str]]) -> tuple[dict | None, str | None]:
    """The problem for `task` from its generated (input JSON, output JSON) cases; (None, why) when no test is
    short enough."""
    tests, long = [], 0
    for inputs, output in cases:
        try:
            args, want = json.loads(inputs), json.loads(output)
            test = f"assert _same({ENTRY_POINT}(**{_literal(args)}), {_literal(want)})"
        except (ValueError, RecursionError):
            long += 1  # not JSON after all (checked in the sandbox): left out like an overlong test
            continue
        if len(test) > MAX_TEST_CHARS:
            long += 1
            continue
        tests.append(test)
    if not tests:
        return None, f"{long} tests, each over {MAX_TEST_CHARS} characters"
    signature = _signature(_parse(task.code))
    question = (f"{task.description}\n\n{task.spec}\n\nWrite a Python function `{signature}` that takes these "
                "inputs as keyword arguments and returns the output described above (JSON-serialisable values: "
                "dicts, lists, strings, numbers, booleans, None).")
    return {"task_id": task.task_id, "question": question, "entry_point": ENTRY_POINT, "tests": [SAME, *tests],
            "reference": task.code, "source": f"reasoning-gym CodeI/O ({task.origin})"}, None


def _literal(value) -> str:
    """Python source for a JSON value (repr, except non-finite floats, which have no literal)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _judgeable(problems: list[dict], pool, dropped: list[dict], started: float, log) -> list[dict]:
    """The problems whose reference passes every test through the judge (the path a candidate takes)."""
    from sandbox_workers.pool import unjudgeable_reason

    if not problems:
        return []
    results = pool.score(problems, [None] * len(problems), progress=_progress("judge", started, log))
    kept = []
    for problem, result in zip(problems, results):
        why = unjudgeable_reason(problem, result)
        if why is None:
            kept.append(problem)
        else:
            dropped.append({"task_id": problem["task_id"], "reason": "unjudgeable", "detail": why[:300]})
    return kept


def _progress(phase: str, started: float, log):
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            log(f"codeio: {phase}: {done}/{total} ({now - started:.0f} s)")
    return report


def is_heldout(task_id: str, seed: int, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * (1 << 64)


# ------------------------------------------------------------------------------------------- the command

def codeio_command(out: str | Path, *, source: str | None = None, tasks: int | None = None,
                   tests_per_task: int = 8, seed: int = 0, workers: int = 2, heldout_fraction: float = 0.1,
                   timeout_s: float = 5.0, memory_mb: int = 512) -> int:
    """`diffurl data codeio --out DIR`: DIR/train.jsonl, DIR/heldout.jsonl and DIR/report.json."""
    for name, value, low in (("--tests-per-task", tests_per_task, 1), ("--workers", workers, 1),
                             ("--tasks", tasks if tasks is not None else 1, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if not 0 <= heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}")
    started = time.monotonic()
    all_tasks, malformed, rows = read_tasks(source)
    chosen = all_tasks[:tasks] if tasks is not None else all_tasks
    print(f"codeio: {rows} rows, {len(all_tasks)} distinct tasks, {len(malformed)} malformed rows; converting "
          f"{len(chosen)}", flush=True)

    import ray

    from sandbox_workers.isolation import SandboxUnavailable
    from sandbox_workers.pool import SandboxPool

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=max(2, workers), include_dashboard=False, log_to_driver=False, configure_logging=False,
                 namespace="diffurl-codeio")
    try:
        try:
            pool = SandboxPool(num_workers=workers, test_timeout_s=timeout_s, memory_mb=memory_mb,
                               require_format=False, name_prefix="codeio-sandbox", batch_size=8)
        except SandboxUnavailable as exc:
            raise UserError(f"{str(exc).splitlines()[0]} (run `diffurl sandbox check`)") from None
        try:
            result = convert_tasks(chosen, pool, tests_per_task=tests_per_task, seed=seed,
                                   log=lambda line: print(line, flush=True))
        finally:
            pool.shutdown()
    finally:
        if started_ray:
            ray.shutdown()
    dropped = malformed + result.dropped if tasks is None else result.dropped
    train = [p for p in result.problems if not is_heldout(p["task_id"], seed, heldout_fraction)]
    heldout = [p for p in result.problems if is_heldout(p["task_id"], seed, heldout_fraction)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, problems in (("train", train), ("heldout", heldout)):
        with (out / f"{name}.jsonl").open("w") as f:
            for problem in problems:
                f.write(json.dumps(problem) + "\n")
    elapsed = time.monotonic() - started
    counts = Counter(d["reason"] for d in dropped)
    modules = Counter(m for d in dropped if d["reason"] == "module" for m in d["detail"].split(", "))
    report = {"rows": rows, "distinct_tasks": len(all_tasks), "tasks": len(chosen), "converted": len(result.problems),
              "train": len(train), "heldout": len(heldout), "dropped": len(dropped),
              "dropped_by_reason": {REASONS[k]: v for k, v in counts.most_common()},
              "modules_missing": dict(modules.most_common()), "tests_per_task": tests_per_task, "seed": seed,
              "heldout_fraction": heldout_fraction, "workers": workers, "elapsed_s": round(elapsed, 1),
              "dropped_tasks": dropped}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"codeio: {len(result.problems)} of {len(chosen)} tasks converted ({len(train)} train, {len(heldout)} "
          f"held out) to {out}/train.jsonl and {out}/heldout.jsonl in {elapsed:.0f} s; {len(dropped)} dropped:")
    for reason, count in counts.most_common():
        extra = (" (" + ", ".join(f"{m} {c}" for m, c in modules.most_common(5)) + ")") if reason == "module" else ""
        print(f"  {count}: {REASONS[reason]}{extra}")
    print(f"codeio: every dropped task and why: {out}/report.json")
    return 0
