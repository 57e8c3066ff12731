"""Reading problem and sample files (JSONL, or Parquet through pyarrow)."""

from __future__ import annotations

import json
from pathlib import Path

from sandbox_workers.judge import compile_problem


def _rows(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed row) for a .jsonl/.json-lines or .parquet file; ValueError names file and line."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return [(i + 1, row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def load_problems(path: str | Path) -> list[dict]:
    """Problems in file order. Each row needs `task_id` and either HumanEval fields (`prompt`, `entry_point`,
    `test`, optional `canonical_solution`) or `tests` + `entry_point` (+ optional `reference`); unknown
    fields are kept and ignored. A bad row raises ValueError naming the file, the line and the field."""
    path = Path(path)
    problems, seen = [], set()
    for number, row in _rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: a problem must be a JSON object")
        try:
            compile_problem(row)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        if row["task_id"] in seen:
            raise ValueError(f"{path}:{number}: field 'task_id' repeats {row['task_id']!r}")
        seen.add(row["task_id"])
        problems.append(row)
    if not problems:
        raise ValueError(f"{path}: no problems in the file")
    return problems


def load_samples(path: str | Path, known_task_ids: set[str]) -> list[dict]:
    """Samples (`task_id`, `completion`) in file order; ValueError for a bad row or an unknown task_id."""
    path = Path(path)
    samples = []
    for number, row in _rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: a sample must be a JSON object")
        for name in ("task_id", "completion"):
            if not isinstance(row.get(name), str):
                raise ValueError(f"{path}:{number}: field '{name}' must be a string")
        if row["task_id"] not in known_task_ids:
            raise ValueError(f"{path}:{number}: field 'task_id' {row['task_id']!r} is not in the problems file")
        samples.append(row)
    if not samples:
        raise ValueError(f"{path}: no samples in the file")
    return samples
