"""A config error is reported before anything heavy is imported (issue 24, item 6): `diffurl train` used to
import torch, transformers and Ray first, so a typo took 7-23 s to report."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = """
import json, sys
from orchestrator.cli import main
rc = main(sys.argv[1:])
print(json.dumps([rc, sorted(m for m in ("torch", "transformers", "ray", "deepspeed") if m in sys.modules)]))
"""


@pytest.mark.parametrize("override, message", [
    ("learner.bogus=1", "learner.bogus=1: unknown key"),
    ("rollout.group_size=many", "rollout.group_size=many: expected an integer"),
    ("data.train=/nonexistent/train.jsonl", "data.train=/nonexistent/train.jsonl: not found"),
])
def test_a_config_error_is_one_line_before_torch_transformers_or_ray_is_imported(tmp_path, override, message):
    proc = subprocess.run([sys.executable, "-c", CHECK, "train", "configs/demo.yaml", override,
                           f"run.root_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    rc, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (rc, imported) == (2, []), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffurl: error: ") and message in lines[0], lines
    assert not any(tmp_path.iterdir()), "a refused start leaves no run directory"


def test_a_data_file_without_one_usable_row_is_refused_before_a_run_directory_is_made(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"task_id": "x", "question": "q", "entry_point": "f", "tests": []}\nnot json\n')
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", CHECK, "train", "configs/demo.yaml", f"data.train={data}",
                           f"run.root_dir={runs}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    rc, _ = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no usable problems (2 rows skipped" in lines[0], lines
    assert not runs.exists()
